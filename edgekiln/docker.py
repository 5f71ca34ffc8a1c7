"""The ONE wrapper around a Docker engine (cibuildwheel's ``OCIContainer`` is the model).

``DockerEngine`` drives the ``docker`` command-line client through argument lists (never a shell):
it checks that an engine answers on entry, builds images (lines streamed to a callback), and runs
one container per step, always removed afterwards, even on Ctrl-C. Every command it runs for a
step or a build is also written as an executable ``.sh`` beside that step's log, so a user can
reproduce it by hand (jetson-containers does the same).

Hosts: ``host`` is a ``unix://``, ``ssh://`` or ``tcp://`` address (``docker -H``), a Docker
context name (``docker --context``), or None (the client's own choice: ``DOCKER_HOST``,
``DOCKER_CONTEXT``, the current context). Bind mounts only exist where the engine shares this
machine's file system (a ``unix://`` socket); for any other engine the job is copied into the
container before it starts and its outputs copied back after it stops.

Usage::

    with DockerEngine("ssh://nvidia@orin.local") as engine:
        engine.build(context_dir, "edgekiln/trt:1a2b3c", platform="linux/arm64", on_line=print)
        result = engine.run(RunSpec(image=..., command=("python", "steps/01-x.py"), ...),
                            log=Path("logs/01-x.log"), timeout=600)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import secrets
import shlex
import shutil
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from .errors import EnvironmentFailed, StepFailed
from .docker_copy import copy_in, copy_in_line, copy_out, nested

log = logging.getLogger("edgekiln.docker")

OnLine = Callable[[str], None]

LABEL = "edgekiln"  # every container edgekiln makes carries the label edgekiln=1
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
TAIL_LINES = 60
RUN_FAILED = 125  # `docker run` itself failed (bad option, missing image): not the step's fault

# Where Docker's own machine names map to the platform names images use.
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm/v7", "ppc64le": "ppc64le", "s390x": "s390x"}
# qemu-user binfmt handlers that let this machine run a foreign platform's binaries.
_QEMU = {"linux/arm64": "qemu-aarch64", "linux/arm/v7": "qemu-arm", "linux/amd64": "qemu-x86_64",
         "linux/ppc64le": "qemu-ppc64le", "linux/s390x": "qemu-s390x"}


def host_platform() -> str:
    """This machine's platform in Docker's words (``linux/amd64``)."""
    return "linux/" + _ARCH.get(os.uname().machine, os.uname().machine)


def invoking_user() -> str:
    """``uid:gid`` of the user running edgekiln: artifacts in the job dir are theirs, not root's."""
    return f"{os.getuid()}:{os.getgid()}"


@dataclass(frozen=True)
class Mount:
    """One host path seen inside the container; read-only unless said otherwise."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class RunSpec:
    """Everything about one container run except the engine it runs on."""

    image: str
    command: tuple[str, ...]
    step: str = "run"  # names the container (edgekiln-<step>-<random>) and labels it
    mounts: tuple[Mount, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None  # "uid:gid"; None: the invoking user's
    network: str = "none"
    memory: str | None = None  # e.g. "2g"; also caps swap at the same value
    platform: str | None = None
    gpus: str | None = None  # e.g. "all" (needs the NVIDIA container toolkit on that host)
    labels: Mapping[str, str] = field(default_factory=dict)
    name: str | None = None  # container name; None: edgekiln-<step>-<random>
    pids_limit: int | None = 4096  # processes + threads (a fork bomb stops here)
    read_only_root: bool = True  # the image's file system is read-only (bind mounts; copy mode cannot)
    tmpfs: tuple[str, ...] = ("/tmp",)  # writable scratch (HOME=/tmp), in memory


@dataclass(frozen=True)
class RunResult:
    name: str
    returncode: int
    tail: tuple[str, ...]
    seconds: float
    oom_killed: bool = False
    script: Path | None = None


@dataclass(frozen=True)
class EngineInfo:
    endpoint: str  # where the client talks to (unix:///var/run/docker.sock, ssh://…)
    server_version: str
    api_version: str
    platform: str  # the engine's native platform, linux/amd64
    client_version: str


def _sh_quote(argv: Sequence[str]) -> str:
    return shlex.join(str(a) for a in argv)


def _mount_arg(m: Mount) -> str:
    """``--mount`` value; fields with a comma or quote are CSV-quoted (the CLI parses CSV)."""
    fields = ["type=bind", f"source={m.source}", f"target={m.target}"]
    if m.read_only:
        fields.append("readonly")
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def container_name(step: str, suffix: str | None = None) -> str:
    """``edgekiln-<step>-<suffix>`` (a random suffix unless given), safe as a container name."""
    safe = "".join(c if c.isalnum() or c in "_.-" else "-" for c in step).strip("-.") or "step"
    return f"edgekiln-{safe[:40]}-{suffix or secrets.token_hex(4)}"


class DockerEngine:
    """One Docker engine, reached through the docker CLI. Use as a context manager."""

    def __init__(self, host: str | None = None, *, docker: str = "docker",
                 check_timeout: float = 15.0):
        self.host = host or None
        self.docker = docker
        self.check_timeout = check_timeout
        self.info: EngineInfo | None = None
        self._live: set[str] = set()  # containers made and not yet removed
        self._lock = threading.Lock()
        self._platforms: dict[str, tuple[bool, str]] = {}

    # -- plumbing --------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """The engine's address as a user would recognise it."""
        if self.info:
            return self.info.endpoint
        if self.host:
            return self.host
        return os.environ.get("DOCKER_HOST") or (
            f"context {os.environ['DOCKER_CONTEXT']}" if os.environ.get("DOCKER_CONTEXT")
            else DEFAULT_SOCKET)

    def cli(self) -> list[str]:
        """The client command with its host selection: ``docker -H ssh://…`` / ``--context x``."""
        exe = shutil.which(self.docker)
        if not exe:
            raise EnvironmentFailed(
                "the docker command-line client is not installed",
                "install Docker (Debian: apt-get install docker.io; here: .ci/docker-up.sh) "
                "or use --runner local")
        argv = [self.docker]
        if self.host and "://" in self.host:
            argv += ["-H", self.host]
        elif self.host:
            argv += ["--context", self.host]
        return argv

    def _call(self, args: Sequence[str], *, timeout: float | None = 120, input: bytes | None = None,
              check: bool = True, what: str = "docker") -> subprocess.CompletedProcess:
        argv = self.cli() + list(args)
        log.debug("+ %s", _sh_quote(argv))
        try:
            proc = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EnvironmentFailed(f"{what}: the Docker engine at {self.where} did not answer "
                                    f"within {timeout:g} s", "check the engine (docker info)") from None
        if check and proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise EnvironmentFailed(f"{what} failed at {self.where}: "
                                    f"{err[-1] if err else 'exit ' + str(proc.returncode)}",
                                    f"command: {_sh_quote(argv)}")
        return proc

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> "DockerEngine":
        self.check()
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def check(self) -> EngineInfo:
        """Does an engine answer? Raise EnvironmentFailed saying where and what to do."""
        if self.info:
            return self.info
        argv = self.cli() + ["version", "--format", "{{json .}}"]
        log.debug("+ %s", _sh_quote(argv))
        hint = "start dockerd (here: .ci/docker-up.sh) or use --runner local"
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=self.check_timeout)
        except subprocess.TimeoutExpired:
            raise EnvironmentFailed(f"no Docker engine answers at {self.where} "
                                    f"(no reply in {self.check_timeout:g} s)", hint) from None
        out = proc.stdout.decode(errors="replace").strip()
        err = proc.stderr.decode(errors="replace").strip()
        try:
            data = json.loads(out.splitlines()[-1]) if out else {}
        except ValueError:
            data = {}
        server = data.get("Server") or {}
        if proc.returncode != 0 or not server:
            why = err.splitlines()[-1] if err else f"exit {proc.returncode}"
            raise EnvironmentFailed(f"no Docker engine answers at {self.where}: {why}", hint)
        client = data.get("Client") or {}
        arch = _ARCH.get(server.get("Arch", ""), server.get("Arch", "amd64"))
        self.info = EngineInfo(
            endpoint=self._endpoint(),
            server_version=str(server.get("Version", "?")),
            api_version=str(server.get("ApiVersion", "?")),
            platform=f"{server.get('Os', 'linux')}/{arch}",
            client_version=str(client.get("Version", "?")),
        )
        return self.info

    def _endpoint(self) -> str:
        if self.host and "://" in self.host:
            return self.host
        if not self.host and os.environ.get("DOCKER_HOST"):
            return os.environ["DOCKER_HOST"]
        # a context (named, DOCKER_CONTEXT or the current one): ask the client where it points
        argv = [self.docker, "context", "inspect", "--format", "{{.Endpoints.docker.Host}}"]
        if self.host:
            argv.append(self.host)
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=10)
            host = proc.stdout.decode().strip()
            if proc.returncode == 0 and host:
                return host
        except (OSError, subprocess.TimeoutExpired):
            pass
        return DEFAULT_SOCKET

    def mem_total(self) -> int | None:
        """The engine's memory in bytes (``docker info``), once; None when it does not say."""
        if not hasattr(self, "_mem_total"):
            proc = self._call(["info", "--format", "{{json .MemTotal}}"], check=False, what="docker info", timeout=30)
            try:
                self._mem_total = int(proc.stdout.decode().strip()) or None
            except ValueError:
                self._mem_total = None
        return self._mem_total

    @property
    def is_local(self) -> bool:
        """Does the engine see this machine's files (so bind mounts work)?"""
        return self.check().endpoint.startswith(("unix://", "npipe://"))

    def cleanup(self) -> None:
        """Remove every container this engine made that is still there."""
        for name in list(self._live):
            self.remove(name)

    # -- images ----------------------------------------------------------------------------------

    def image_inspect(self, ref: str) -> dict | None:
        return self._inspect(["image", "inspect", "--format", "{{json .}}", ref], "docker image inspect")

    def _inspect(self, args: list[str], what: str) -> dict | None:
        """JSON out of a ``docker … inspect`` (None when the object does not exist)."""
        proc = self._call(args, check=False, what=what)
        if proc.returncode != 0:
            return None
        try:
            return json.loads(proc.stdout.decode())
        except ValueError:
            return None

    def manifest_exists(self, ref: str, timeout: float = 20) -> bool:
        """Does a registry answer for ``ref``? (asked from this machine; False when unreachable)."""
        try:
            proc = subprocess.run(self.cli() + ["manifest", "inspect", ref], capture_output=True,
                                  timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0

    def has_image(self, ref: str) -> bool:
        return self.image_inspect(ref) is not None

    def images(self, reference: str) -> list[str]:
        """``repo:tag`` of the images matching ``reference`` (e.g. ``edgekiln/onnx``)."""
        proc = self._call(["image", "ls", "--filter", f"reference={reference}",
                           "--format", "{{.Repository}}:{{.Tag}}"], what="docker image ls")
        return [r for r in proc.stdout.decode().split() if not r.endswith(":<none>")]

    def remove_image(self, ref: str) -> None:
        self._call(["image", "rm", "--force", ref], check=False, what="docker image rm")

    def can_build_for(self, platform: str) -> tuple[bool, str]:
        """Can this engine build/run ``platform`` images? (native, or buildx + qemu)."""
        native = self.check().platform
        if platform == native:
            return True, "native"
        if platform not in self._platforms:
            self._platforms[platform] = self._foreign(platform, native)
        return self._platforms[platform]

    def _foreign(self, platform: str, native: str) -> tuple[bool, str]:
        from . import emulation

        buildx = subprocess.run(self.cli() + ["buildx", "version"], capture_output=True, timeout=20)
        self._buildx = buildx.returncode == 0
        if platform in emulation.MAGIC and self.is_local:
            # QEMU >= 8 registered with the F flag (edgekiln.emulation): the classic builder
            # builds images whose RUN needs no more than that, and containers run
            ok, why = emulation.status(platform)
            return (True, "qemu: " + why) if ok else (False, why)
        missing = []
        if not self._buildx:
            missing.append("docker buildx (Debian: apt-get install docker-buildx)")
        qemu = _QEMU.get(platform)
        if self.is_local and (not qemu or not Path("/proc/sys/fs/binfmt_misc", qemu).exists()):
            missing.append(f"qemu user emulation for {platform} (Debian: apt-get install "
                           "qemu-user-static binfmt-support)")
        if missing:
            return False, (f"building a {platform} image on this {native} engine needs "
                           + " and ".join(missing)
                           + f"; or build on a {platform} machine with --docker-host ssh://user@host")
        return True, "buildx+qemu"

    def build_argv(self, context: Path, tag: str, *, platform: str | None = None,
                   dockerfile: str = "Dockerfile", network: str | None = "host",
                   labels: Mapping[str, str] | None = None) -> list[str]:
        cross = platform is not None and platform != self.check().platform
        if cross:
            self.can_build_for(platform)  # learns whether buildx is here
        # without buildx the classic builder builds a foreign platform too (RUN under binfmt QEMU)
        cross = cross and getattr(self, "_buildx", True)
        argv = self.cli() + (["buildx", "build", "--load", "--progress", "plain"] if cross
                             else ["build", "--force-rm"])  # no containers left by a failed build
        if platform:
            argv += ["--platform", platform]
        if network:
            argv += ["--network", network]
        for key, value in (labels or {}).items():
            argv += ["--label", f"{key}={value}"]
        argv += ["--tag", tag, "--file", str(Path(context) / dockerfile), str(context)]
        return argv

    def build(self, context: Path, tag: str, *, platform: str | None = None,
              dockerfile: str = "Dockerfile", network: str | None = "host",
              log_path: Path | None = None, on_line: OnLine | None = None,
              timeout: float | None = None) -> None:
        """``docker build`` ``context`` as ``tag``; output streamed; raise EnvironmentFailed."""
        if platform:
            ok, why = self.can_build_for(platform)
            if not ok:
                raise EnvironmentFailed(f"cannot build {tag} for {platform}: {why}",
                                        "see `invoke images` for the platforms of each image")
        argv = self.build_argv(context, tag, platform=platform, dockerfile=dockerfile,
                               network=network)
        if log_path:
            write_script(log_path.with_suffix(".sh"), [argv], f"build {tag}")
        tail, rc, seconds, timed_out = self._stream(argv, log_path, on_line, timeout)
        if timed_out:
            raise EnvironmentFailed(f"building {tag} took longer than {timeout:g} s",
                                    f"see {log_path}" if log_path else None)
        if rc != 0:
            last = next((l for l in reversed(tail) if l.strip()), f"exit {rc}")
            hint = f"see the build log: {log_path}" if log_path else "run the build by hand"
            if "pull access denied" in last or "no such host" in last or "not found" in last:
                hint = ("its base image is not on the engine and cannot be pulled: docker load it, "
                        "or pass --base-image; " + hint)
            raise EnvironmentFailed(f"docker build of {tag} failed (exit {rc}): {last.strip()[:300]}",
                                    hint)

    # -- containers ------------------------------------------------------------------------------

    def _container_args(self, spec: RunSpec, name: str, *, binds: bool) -> list[str]:
        args = ["--name", name, "--label", f"{LABEL}=1", "--label", f"{LABEL}.step={spec.step}"]
        for key, value in spec.labels.items():
            args += ["--label", f"{key}={value}"]
        args += ["--init", "--user", spec.user or invoking_user(), "--network", spec.network,
                 "--security-opt", "no-new-privileges", "--cap-drop", "ALL"]
        if spec.platform:
            args += ["--platform", spec.platform]
        if spec.memory:
            args += ["--memory", spec.memory, "--memory-swap", spec.memory]
        if spec.pids_limit:
            args += ["--pids-limit", str(spec.pids_limit)]
        if spec.read_only_root and binds:  # `docker cp` cannot write into a read-only root (copy mode)
            args += ["--read-only"]
        for path in spec.tmpfs:
            args += ["--tmpfs", f"{path}:rw,exec,nosuid,nodev"]
        if spec.gpus:
            args += ["--gpus", spec.gpus]
        if spec.workdir:
            args += ["--workdir", spec.workdir]
        for key, value in spec.env.items():
            args += ["--env", f"{key}={value}"]
        if binds:
            for m in spec.mounts:
                args += ["--mount", _mount_arg(m)]
        return args + [spec.image, *spec.command]

    def run_argv(self, spec: RunSpec, name: str | None = None) -> list[str]:
        """The exact ``docker run`` (bind mounts) for ``spec``."""
        name = name or spec.name or container_name(spec.step)
        return self.cli() + ["run"] + self._container_args(spec, name, binds=True)

    def create_argv(self, spec: RunSpec, name: str | None = None) -> list[str]:
        """The ``docker create`` of the copy-in/copy-out way (engines on other machines)."""
        name = name or spec.name or container_name(spec.step)
        return self.cli() + ["create"] + self._container_args(spec, name, binds=False)

    def run(self, spec: RunSpec, *, log_path: Path, on_line: OnLine | None = None,
            timeout: float | None = None, copy: bool | None = None,
            exclude_out: Iterable[str] = ()) -> RunResult:
        """Run ``spec`` in a fresh container, stream its output to ``log_path`` (appended) and
        ``on_line``, and remove the container whatever happens.

        ``copy`` (default: the engine is not on this machine) copies every mount into the
        container before it starts and the writable ones back out after it stops, skipping
        the relative paths in ``exclude_out`` (e.g. the host's own ``work/logs``).

        Raises StepFailed on a timeout (the container is killed), EnvironmentFailed when Docker
        itself could not run the container; the step's own exit code is in the result.
        """
        self.check()
        if spec.platform and spec.platform != self.info.platform:
            ok, why = self.can_build_for(spec.platform)
            if not ok:
                raise EnvironmentFailed(f"cannot run a {spec.platform} container: {why}")
        copy = (not self.is_local) if copy is None else copy
        name = spec.name or container_name(spec.step)
        if spec.name:  # a fixed name: a container left by a killed earlier run must not block it
            self.remove(name)
        script = Path(log_path).with_suffix(".sh")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        exclude = tuple(exclude_out)
        if copy:
            create = self.create_argv(spec, name)
            start = self.cli() + ["start", "--attach", name]
            commands: list = [create]
            commands += [copy_in_line(self.cli(), name, m, spec.user or invoking_user(), nested(m, spec.mounts))
                         for m in spec.mounts]
            commands.append(start)
            commands += [self.cli() + ["cp", f"{name}:{m.target}/.", str(m.source)]
                         for m in spec.mounts if not m.read_only]
            commands.append(self.cli() + ["rm", "--force", name])
            why = ("the engine at " + self.where + " does not share this machine's files"
                   if not self.is_local else "copy mode")
            write_script(script, commands, f"step {spec.step} (copy in / run / copy out: {why})")
        else:
            start = self.run_argv(spec, name)
            n = len(self.cli()) + 1  # by hand: --rm (edgekiln itself inspects, then removes)
            write_script(script, [start[:n] + ["--rm"] + start[n:]], f"step {spec.step}")
        t0 = time.monotonic()
        with self._lock:
            self._live.add(name)
        try:
            if copy:
                self._call(create[len(self.cli()):], what="docker create")
                self._copy_in(name, spec)
            tail, rc, _, timed_out = self._stream(start, log_path, on_line, timeout,
                                                  on_abort=lambda: self.kill(name))
            state = self._state(name)
            if copy and state is not None:
                for m in spec.mounts:
                    if not m.read_only:
                        self._copy_out(name, m, exclude, spec.step)
            if timed_out:
                raise StepFailed(f"step {spec.step} timed out after {timeout:g} s; its container "
                                 f"was killed", f"raise the timeout, or see the log: {log_path}")
            if rc == RUN_FAILED and _never_started(state):
                last = next((l for l in reversed(tail) if l.strip()), "")
                raise EnvironmentFailed(f"docker could not run {spec.image} for step {spec.step}: "
                                        f"{last.strip()[:300]}", f"reproduce it with {script}")
            oom = bool(state and state.get("OOMKilled"))
            return RunResult(name, rc, tuple(tail), time.monotonic() - t0, oom, script)
        finally:
            self.remove(name)  # also on KeyboardInterrupt: no container is ever left behind

    def _state(self, name: str) -> dict | None:
        return self._inspect(["container", "inspect", "--format", "{{json .State}}", name],
                             "docker container inspect")

    def kill(self, name: str) -> None:
        self._call(["kill", name], check=False, what="docker kill", timeout=60)

    def remove(self, name: str) -> None:
        self._call(["rm", "--force", "--volumes", name], check=False, what="docker rm", timeout=120)
        with self._lock:
            self._live.discard(name)

    def containers(self, label: str = f"{LABEL}=1") -> list[str]:
        """Names of containers (running or not) that carry ``label``."""
        proc = self._call(["ps", "--all", "--quiet", "--filter", f"label={label}",
                           "--format", "{{.Names}}"], what="docker ps")
        return proc.stdout.decode().split()

    # -- copy in / out (engines on other machines): edgekiln.docker_copy ---------------------------

    def _copy_in(self, name: str, spec: RunSpec) -> None:
        copy_in(self.cli(), self.where, name, spec, spec.user or invoking_user())

    def _copy_out(self, name: str, mount: Mount, exclude: tuple[str, ...], step: str = "run") -> None:
        copy_out(self.cli(), self.where, name, mount, exclude, step)

    # -- streaming -------------------------------------------------------------------------------

    def _stream(self, argv: list[str], log_path: Path | None, on_line: OnLine | None,
                timeout: float | None, *, on_abort: Callable[[], None] | None = None):
        """Run ``argv``; every output line goes to the log and ``on_line``. stdout and stderr
        are read through separate pipes so their lines never interleave mid-line (the
        EDGEKILN-ERROR mark must stay whole). ``on_abort`` stops the work on a timeout or
        Ctrl-C (kills the container). Returns (tail, returncode, seconds, timed_out)."""
        log.debug("+ %s", _sh_quote(argv))
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        out_lock = threading.Lock()
        fh = _open_log(log_path) if log_path else None
        t0 = time.monotonic()
        try:
            if fh:
                fh.write(f"+ {_sh_quote(argv)}\n")
                fh.flush()
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL)

            def pump(stream) -> None:
                for raw in stream:
                    line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                    with out_lock:
                        tail.append(line)
                        if fh:
                            fh.write(line + "\n")
                            fh.flush()
                    if on_line:
                        try:
                            on_line(line)
                        except Exception:  # a display problem must not kill the build
                            log.exception("on_line callback failed")

            readers = [threading.Thread(target=pump, args=(s,), daemon=True)
                       for s in (proc.stdout, proc.stderr)]
            for reader in readers:
                reader.start()

            def stop() -> None:
                if on_abort:
                    on_abort()
                else:
                    proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                stop()
            except BaseException:  # Ctrl-C: stop the container now, not after a grace period
                stop()
                raise
            for reader in readers:
                reader.join(timeout=30)
            return list(tail), proc.returncode, time.monotonic() - t0, timed_out
        finally:
            if fh:
                fh.close()


def _open_log(path: Path):
    """Append to a log, never through a symbolic link (O_NOFOLLOW)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    return os.fdopen(fd, "a", encoding="utf-8")


def _never_started(state: dict | None) -> bool:
    """True when the container was never made or never started (Docker's zero time)."""
    return state is None or str(state.get("StartedAt", "")).startswith("0001-")


def write_script(path: Path, commands: Sequence[Sequence[str] | str], what: str) -> Path:
    """Write ``commands`` (argument lists, or shell lines already quoted) as an executable
    shell script that reproduces them by hand."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["#!/bin/sh", f"# edgekiln: {what}", "# Reproduce it by hand: sh " + shlex.quote(path.name),
             "set -eu"]
    lines += [c if isinstance(c, str) else _sh_quote(c) for c in commands]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path
