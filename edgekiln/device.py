"""Finish a TensorRT bundle on a device reached over ssh, from the workstation, in one command.

``--device ssh://[user@]host[:port]`` (``edgekiln build`` and ``edgekiln finish``): the bundle's listed
files go to a fresh temporary folder on the device (tar over ssh), its three steps run there one by one
(preflight, build_engine, check_engine: so a failure names its step), and only the files each step
adds come back (model.engine, engine.json, check.json, preflight.json, device/timing.cache; a tar
read member by member: regular files with exactly those names, nothing else). The workstation then
records and swaps exactly as ``edgekiln finish`` on the device does (edgekiln.deferred.finish).

``--device docker+ssh://user@host`` (or ``docker+tcp://``, ``docker+unix://``): the device's Docker engine
through the Docker CLI's own transport (DockerDevice): the device image is built there, each step runs
in a fresh container as root, the bundle goes in and the step's files come out with ``docker cp``.

How the steps run on an ssh device (the URL's query):
  (none)             its ``python3`` in isolated mode (JetPack's python3 imports TensorRT; numpy needed);
  ?python=PATH       that Python instead;
  ?docker            ``sh device/build_engine.sh <step>``: the device image (NVIDIA's base) under Docker
                     with the NVIDIA runtime, the same container build_engine.sh runs by hand.
``EDGEKILN_SSH`` adds ssh options (e.g. ``-F ~/.ssh/edgekiln_config`` or ``-i KEY``). Nothing but the
ssh client and ``tar``/``sh``/``mktemp`` on the device is used: no agent, no server of edgekiln's own.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tarfile
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .errors import EdgekilnError, EnvironmentFailed, UsageError
from .deferred import PENDING, stream


class SshDevice:
    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname or parts.path not in ("", "/") \
                or parts.hostname.startswith("-") or (parts.username or "").startswith("-"):  # never an ssh option
            raise UsageError(f"--device {url!r} is not ssh://[user@]host[:port]",
                             "e.g. --device ssh://nvidia@orin or ssh://nvidia@orin?docker")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - {"python", "docker"}
        if unknown:
            raise UsageError(f"--device {url!r}: unknown setting(s) {', '.join(sorted(unknown))}",
                             "the device URL takes ?python=PATH or ?docker")
        self.docker = "docker" in query
        self.python = (query.get("python") or ["python3"])[0] or "python3"
        self.where = f"device {parts.scheme}://{parts.netloc}"
        target = f"{parts.username}@{parts.hostname}" if parts.username else parts.hostname
        self.ssh = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
                    *(["-p", str(parts.port)] if parts.port else []),
                    *shlex.split(os.environ.get("EDGEKILN_SSH", "")), target]
        self.dir: str | None = None

    def _remote(self, words: list[str], cd: bool = True) -> list[str]:
        """ssh runs its command through the remote shell: every word is quoted."""
        cmd = shlex.join(words)
        return self.ssh + ["--", f"cd {shlex.quote(self.dir)} && {cmd}" if cd else cmd]

    def _check(self, proc: subprocess.CompletedProcess, what: str) -> None:
        if proc.returncode != 0:
            tail = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
            raise EnvironmentFailed(f"{self.where}: {what} failed (exit {proc.returncode})"
                                    + (f": {tail[-1]}" if tail else ""),
                                    "check that `ssh` reaches the device without a password (EDGEKILN_SSH adds "
                                    "options); the bundle stays pending")

    def ship(self, stage: Path, files: list[str]) -> None:
        proc = subprocess.run(self._remote(["mktemp", "-d", "/tmp/edgekiln-bundle.XXXXXXXX"], cd=False),
                              capture_output=True, stdin=subprocess.DEVNULL)
        self._check(proc, "making a folder on the device (ssh … mktemp -d)")
        self.dir = proc.stdout.decode().strip()
        send = subprocess.Popen(self._remote(["tar", "-xf", "-"]), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        errors: list[bytes] = []
        reader = threading.Thread(target=lambda: errors.append(send.stderr.read()), daemon=True)
        reader.start()
        try:
            with tarfile.open(fileobj=send.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for rel in files:
                    tar.add(stage / rel, arcname=rel, recursive=False)
        except BrokenPipeError:
            pass
        finally:
            send.stdin.close()
        code = send.wait()
        reader.join()
        self._check(subprocess.CompletedProcess(send.args, code, b"", b"".join(errors)),
                    f"copying the bundle to {self.dir} (tar over ssh)")

    def run(self, stage: Path, step: str, script: str, log: Path) -> tuple[int, list[str]]:
        words = ["sh", "device/build_engine.sh", step] if self.docker else [self.python, "-I", script]
        code, lines = stream(self._remote(words), log, stdin=subprocess.DEVNULL)
        if code == 255:  # ssh's own failure (the device unreachable), not the step's
            raise EnvironmentFailed(f"{self.where}: ssh failed while running {step}: "
                                    f"{lines[-1] if lines else 'no output'}",
                                    "check that `ssh` reaches the device; the bundle stays pending")
        return code, lines

    def fetch(self, stage: Path, files) -> None:
        """Bring back exactly ``files`` (regular files, those names only) into ``stage``."""
        proc = subprocess.Popen(self._remote(["tar", "-cf", "-", *files]), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _read_tar(proc, stage, {f: f for f in files}, self.where)

    def close(self) -> None:
        if self.dir:
            subprocess.run(self._remote(["rm", "-rf", "--", self.dir], cd=False), capture_output=True,
                           stdin=subprocess.DEVNULL)
            self.dir = None


class DockerDevice:
    """A Docker engine with the NVIDIA runtime, reached with the Docker CLI (``docker -H HOST``: its own
    ssh://, tcp:// or unix:// transport). Each step runs in a fresh container of the device image
    (built there from device/image/, or EDGEKILN_TRT_IMAGE) as root, the bundle copied in with
    ``docker cp`` (no bind mount of workstation files, no uid/group mapping) and the step's files
    copied out the same way."""

    SCHEMES = ("ssh", "tcp", "unix")

    def __init__(self, url: str):
        host = url.removeprefix("docker+")
        if urlsplit(host).scheme not in self.SCHEMES or host in ("ssh://", "tcp://", "unix://"):
            raise UsageError(f"--device {url!r} is not docker+ssh://, docker+tcp:// or docker+unix://",
                             "e.g. --device docker+ssh://nvidia@orin")
        self.docker = ["docker", "-H", host]
        self.where = f"device {url}"
        self.containers: list[str] = []
        self.current: str | None = None

    def _run(self, args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(self.docker + args, capture_output=True, text=True, stdin=subprocess.DEVNULL)

    def gpu_flags(self) -> list[str]:
        if self.kind == "jetson":  # the host's L4T release for preflight; a missing file refuses the mount
            return ["--runtime", "nvidia", "-e", "L4T_VERSION=",
                    "--mount", "type=bind,src=/etc/nv_tegra_release,dst=/etc/nv_tegra_release,readonly"]
        return ["--gpus", "all"]

    def ship(self, stage: Path, files: list[str]) -> None:
        from .errors import DeviceRefused

        bundle = json.loads((stage / "device" / "bundle.json").read_text())
        self.kind = bundle["made_for"]["kind"]
        info = self._run(["info", "--format", "{{json .Runtimes}}"])
        if info.returncode != 0:
            raise EnvironmentFailed(f"{self.where}: the Docker engine does not answer: "
                                    f"{(info.stderr.strip().splitlines() or ['no output'])[-1]}",
                                    "check `docker -H HOST info`; the bundle stays pending")
        runtimes = sorted(json.loads(info.stdout or "{}"))
        if self.kind == "jetson" and "nvidia" not in runtimes:
            raise DeviceRefused(f"{self.where}: that Docker engine has no NVIDIA container runtime (runtimes: "
                                f"{', '.join(runtimes)}): not a Jetson with JetPack's nvidia-container-runtime",
                                "point --device at the Jetson's Docker engine; the bundle stays pending")
        sha = (stage / "device" / "image" / "recipe.sha256").read_text().strip()
        self.image = os.environ.get("EDGEKILN_TRT_IMAGE") or f"edgekiln/trt-bundle:{sha[:12]}"
        if self._run(["image", "inspect", self.image]).returncode != 0:
            code, lines = stream(self.docker + ["build", "-t", self.image, str(stage / "device" / "image")],
                                 stage / "device" / "logs" / "image.log", stdin=subprocess.DEVNULL)
            if code != 0:
                raise EnvironmentFailed(f"{self.where}: device step image (docker build of device/image) failed "
                                        f"(exit {code}): {lines[-1] if lines else 'no output'}",
                                        "the bundle stays pending")

    def run(self, stage: Path, step: str, script: str, log: Path) -> tuple[int, list[str]]:
        from .errors import DeviceRefused

        def no_gpu(why: str) -> bool:
            return "could not select device driver" in why or "nv_tegra_release" in why

        def refuse(why: str):
            raise DeviceRefused(f"{self.where}: that Docker engine cannot give a container the NVIDIA GPU ({why})",
                                "point --device at the device's Docker engine; the bundle stays pending")

        made = self._run(["create", "--network", "none", "-w", "/bundle", *self.gpu_flags(), self.image,
                          "python3", "-I", script])
        if made.returncode != 0:
            why = (made.stderr.strip().splitlines() or ["no output"])[-1]
            if no_gpu(why):
                refuse(why)
            raise EnvironmentFailed(f"{self.where}: docker create for {step} failed: {why}", "the bundle stays pending")
        self.current = made.stdout.strip()
        self.containers.append(self.current)
        copy = self._run(["cp", f"{stage}/.", f"{self.current}:/bundle"])
        if copy.returncode != 0:
            raise EnvironmentFailed(f"{self.where}: docker cp of the bundle failed: {copy.stderr.strip()}",
                                    "the bundle stays pending")
        code, lines = stream(self.docker + ["start", "-a", self.current], log, stdin=subprocess.DEVNULL)
        if code != 0 and lines and no_gpu(lines[-1]):  # --gpus all is resolved when the container starts
            refuse(lines[-1])
        return code, lines

    def fetch(self, stage: Path, files) -> None:
        """``docker cp CONTAINER:/bundle/F -``: a tar of one regular file named like F, nothing else."""
        for rel in files:
            proc = subprocess.Popen(self.docker + ["cp", f"{self.current}:/bundle/{rel}", "-"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _read_tar(proc, stage, {Path(rel).name: rel}, self.where)

    def close(self) -> None:
        for cid in self.containers:
            self._run(["rm", "-f", cid])
        self.containers = []


def _read_tar(proc: subprocess.Popen, stage: Path, names: dict[str, str], where: str) -> None:
    """Write the members of ``proc``'s tar into ``stage``: each must be a regular file whose name is a
    key of ``names`` (written to the value); anything else is refused."""
    got = set()
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.name not in names or not member.isreg():
                    raise EnvironmentFailed(f"{where}: the device sent {member.name!r}, which is not one of the "
                                            f"files the step makes ({', '.join(sorted(names.values()))})",
                                            "the bundle stays pending")
                dest = stage / names[member.name]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.unlink(missing_ok=True)
                dest.write_bytes(tar.extractfile(member).read())
                got.add(member.name)
    except tarfile.TarError as exc:
        proc.kill()
        raise EnvironmentFailed(f"{where}: bringing back {', '.join(names.values())} failed: {exc}",
                                "the bundle stays pending") from None
    finally:
        err = proc.stderr.read().decode(errors="replace").strip()
        code = proc.wait()
    if code != 0 or got != set(names):
        missing = ", ".join(names[n] for n in sorted(set(names) - got))
        raise EnvironmentFailed(f"{where}: the device did not send {missing or 'its files'}"
                                + (f": {err.splitlines()[-1]}" if err else ""), "the bundle stays pending")


def device_for(url: str | None):
    if not url:
        return None
    if url.startswith("ssh://"):
        return SshDevice(url)
    if url.startswith("docker+"):
        return DockerDevice(url)
    raise UsageError(f"--device {url!r} is not ssh://[user@]host[:port] or docker+ssh|tcp|unix://...",
                     "e.g. --device ssh://nvidia@orin, or docker+ssh://nvidia@orin for its Docker engine")


def finish_results(result, url: str, say) -> None:
    """``edgekiln build --device URL``: finish every pending TensorRT artifact of ``result`` on the
    device; each success replaces the artifact's status and manifest; the first failure becomes
    ``result.error`` (the bundle stays published as pending, the error names the device step)."""
    from .deferred import finish

    device_for(url)  # a malformed URL is refused before anything runs
    if not any(art.manifest.get("status") == PENDING for art in result.artifacts):
        say(f"--device {url}: no deferred TensorRT bundle to finish")
    for art in result.artifacts:
        if art.manifest.get("status") != PENDING:
            continue
        say(f"finishing {art.target}/{art.precision} on {url} (preflight, engine, check)")
        try:
            art.manifest = finish(art.path, device=device_for(url))
        except EdgekilnError as exc:  # DeviceRefused, EnvironmentFailed, ValidationFailed, ...
            result.error = result.error or exc
            say(f"not finished: {art.target}/{art.precision} stays a deferred bundle at {art.path}")
            continue
        art.status = f"built (finished on {url})"
