"""The Docker runner: each step runs in its image's container, built from the same lock as the
local runner's virtualenv.

In the container the job is ``/job`` (read-only: scripts, helpers, job.json, logs; working directory
and PYTHONPATH) with ``/job/work`` the only writable folder, the model is ``/in/model/<file>``,
calibration ``/in/calib``, validation ``/in/val`` (all read-only), the root file system is
read-only (``/tmp`` a tmpfs), the network is ``none``, processes and memory are capped and the
user is the invoking user's uid:gid, so artifacts are theirs. After each step ``work/`` is checked
for links and special files (edgekiln.outputs) before the host reads anything in it. On an
engine on another machine (``ssh://``, ``tcp://``) the same paths are copied in and out instead.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Callable, Mapping

from ..docker import DockerEngine, Mount, RunSpec, container_name
from ..errors import EnvironmentFailed, StepFailed
from ..images import BASE_ENV, Context, ensure_image, get_recipe, render_context
from ..inputs import onnx_external_files
from ..outputs import check_outputs
from .base import Env, Job, OnLine, Runner, step_error

JOB = "/job"
PYTHON = "/opt/venv/bin/python"
QEMU_USER = "/opt/edgekiln/qemu-user"  # where a static QEMU user-mode binary is mounted (read-only)
IN = {"model": "/in/model", "calib": "/in/calib", "val": "/in/val"}
# exit codes of a process killed by a signal that means a crash (128 + signal number; --init passes them on)
CRASHES = {132: "SIGILL", 133: "SIGTRAP", 134: "SIGABRT", 135: "SIGBUS", 136: "SIGFPE", 139: "SIGSEGV"}


class DockerRunner(Runner):
    """Runs steps on one Docker engine.

    host        unix:// ssh:// tcp:// address or a Docker context name; None: the client's choice
    base_image  one base for every image, or image name -> base (tests: the stand-in base)
    platform    default platform of images and containers (None: the engine's own);
                ``prepare(image, platform=...)`` overrides it per target
    memory      container memory limit ("4g"); None: no limit
    user        "uid:gid" the steps run as; None: the invoking user's
    gpus        ``--gpus`` value for every container (TensorRT hosts), None: no GPU
    qemu_cpu    the core QEMU emulates (``QEMU_CPU``, e.g. cortex-a72) in containers of a platform
                this engine runs under emulation; None: QEMU's default
    copy        force the copy-in/copy-out way (None: only for engines on other machines)
    rebuild     rebuild images even when their tag exists
    cache_root, images_root   where contexts are rendered / recipes are read (tests)
    fallback    makes the runner for images that cannot be had here (``--runner auto``: the
                local runner): ``prepare`` then returns that runner's Env (``runner="local"``)
                and ``command``/``run`` hand such Envs to it — except for an image with
                ``local = false`` (images/_bases.toml): that is an EnvironmentFailed
    """

    name = "docker"

    def __init__(self, host: str | None = None, *, base_image: str | Mapping[str, str] | None = None,
                 platform: str | None = None, memory: str | None = None, user: str | None = None,
                 gpus: str | None = None, copy: bool | None = None, rebuild: bool = False,
                 qemu_cpu: str | None = None,
                 build_timeout: float | None = None, engine: DockerEngine | None = None,
                 cache_root: Path | None = None, images_root: Path | None = None,
                 fallback: Callable[[], Runner] | None = None):
        self.engine = engine or DockerEngine(host)
        self.host = self.engine.host
        self.base_image = base_image
        self.platform = platform
        self.memory = memory
        self.user = user
        self.gpus = gpus
        self.qemu_cpu = qemu_cpu  # QEMU_CPU of containers of an emulated platform (Arm validation)
        # (static QEMU user-mode binary on this machine, CPU model): the step's python runs under it
        # inside the container (an x86 CPU class this machine does not have: edgekiln.isa)
        self.qemu_user: tuple[str, str] | None = None
        self.copy = copy
        self.rebuild = rebuild
        self.build_timeout = build_timeout
        self.cache_root = cache_root
        self.images_root = images_root
        self.fallback = fallback
        self._fallback_runner: Runner | None = None
        self.contexts: dict[tuple[str, str], Context] = {}  # (image, platform) -> what was built
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DockerRunner(host={self.engine.where!r})"

    def supports(self, platform: str) -> tuple[bool, str]:
        """Can this engine build and run ``platform`` images? (True, "native"|"buildx+qemu") or
        (False, what to install). Lets the planner run architecture-independent steps of a
        foreign-platform target on the engine's own platform."""
        return self.engine.can_build_for(platform)

    def _where(self, image: str, platform: str | None) -> dict:
        """Base, platform and folders of ``image`` as this runner builds it (prepare and
        planned_env share them, so they agree on the tag)."""
        base = (self.base_image.get(image) if isinstance(self.base_image, Mapping)
                else self.base_image)
        return dict(base=base, platform=platform or self.platform or self.engine.check().platform,
                    root=self.cache_root, images_root=self.images_root)

    def _context(self, image: str, platform: str | None) -> Context:
        """The build context ``prepare(image, platform=platform)`` builds: its tag and digest
        only (nothing is written)."""
        return render_context(image, **self._where(image, platform), write=False)

    def available(self, image: str, platform: str | None = None) -> tuple[bool, str]:
        """Can ``images/<image>`` be had on this engine without surprises? Its tag is there, or
        its base is there, or the base's registry answers (``docker manifest inspect``)."""
        info = self.engine.check()
        ctx = self._context(image, platform)
        if self.engine.has_image(ctx.tag):
            return True, f"{ctx.tag} is built"
        if self.engine.has_image(ctx.base):
            return True, f"its base {ctx.base} is on the engine"
        if self.engine.manifest_exists(ctx.base):
            return True, f"its base {ctx.base} can be pulled"
        return False, (f"image {image}: its base {ctx.base} is neither on the engine at "
                       f"{info.endpoint} nor reachable in a registry (docker load it, or set "
                       f"--base-image / {BASE_ENV})")

    def _falls_back(self, image: str, platform: str | None, on_line: OnLine | None,
                    local_ok: bool = True) -> bool:
        """Does ``--runner auto`` run ``image`` in a local virtualenv (it cannot be had here)?
        An image that cannot have one (``local = false`` in its data, or the step's
        ``local_ok`` False) is an EnvironmentFailed instead, saying why Docker cannot have it."""
        if self.fallback is None:
            return False
        ok, why = self.available(image, platform)
        if ok:
            return False
        if not (local_ok and get_recipe(image, self.images_root).local):
            raise EnvironmentFailed(f"{why}; it cannot have a local virtualenv either",
                                    "load its base on this engine, or use --docker-host with an "
                                    "engine that has it")
        if on_line:
            on_line(f"{why}; using a local virtualenv instead (--runner auto)")
        return True

    # -- Runner ----------------------------------------------------------------------------------

    def prepare(self, image: str, on_line: OnLine | None = None, *,
                platform: str | None = None, local_ok: bool = True) -> Env:
        """Build ``images/<image>`` unless its tag is on the engine already; the Env's ref is
        the tag. ``platform``: the target's (None: the runner's default, else the engine's).
        ``local_ok``: the plan's word (a step's ``local``) whether a local fallback is possible."""
        self.engine.check()
        if self._falls_back(image, platform, on_line, local_ok):
            return self._local().prepare(image, on_line, local_ok=local_ok)
        ctx, _built = ensure_image(self.engine, image, **self._where(image, platform),
                                   on_line=on_line, rebuild=self.rebuild, timeout=self.build_timeout)
        with self._lock:
            self.contexts[(image, ctx.platform)] = ctx
        return self._env(image, ctx)

    def planned_env(self, image: str, platform: str | None = None, on_line: OnLine | None = None,
                    *, local_ok: bool = True) -> Env:
        """The Env ``prepare(image, platform=platform)`` gives, with nothing built or written:
        the tag is the content hash of the context it would render, so ``command(planned_env(
        image), job, script)`` is the exact argument list the run uses (the dry run). An image
        ``--runner auto`` runs locally gets the local runner's planned Env (``runner="local"``;
        ``on_line`` is told why). Like ``prepare`` it asks the engine once (its platform and
        address are part of the command)."""
        self.engine.check()
        if self._falls_back(image, platform, on_line, local_ok):
            return self._local().planned_env(image)
        return self._env(image, self._context(image, platform))

    def _env(self, image: str, ctx: Context) -> Env:
        return Env(image=image, runner=self.name, lock_hash=ctx.lock_hash, ref=ctx.tag,
                   host=self.engine.where, platform=ctx.platform)

    def _local(self) -> Runner:
        with self._lock:
            if self._fallback_runner is None:
                self._fallback_runner = self.fallback()
            runner = self._fallback_runner
        if self.qemu_user and getattr(runner, "qemu", None) != self.qemu_user:
            # a step planned under QEMU user mode (an x86 CPU class this host lacks) stays under it
            # in the local virtualenv: never a native run labelled emulated
            runner = copy.copy(runner)
            runner.qemu = self.qemu_user
        return runner

    def spec(self, env: Env, job: Job, script: str) -> RunSpec:
        """The container of one step (mounts, environment, user, limits)."""
        root = Path(job.root).resolve()
        # the job's scripts, helpers, job.json and logs are read-only to the step; it writes work/ only
        mounts = [Mount(root, JOB, read_only=True), Mount(root / "work", f"{JOB}/work", read_only=False)]
        paths: dict[str, str | None] = {"model": None, "calib": None, "val": None}
        for key, path in job.inputs.items():
            if path is None:
                continue
            if key not in IN:
                raise ValueError(f"unknown job input {key!r} (model, calib, val)")
            host_path = Path(path).resolve()
            target = f"{IN[key]}/{host_path.name}" if key == "model" else IN[key]
            mounts.append(Mount(host_path, target, read_only=True))
            paths[key] = target
            if key == "model":  # an ONNX model's external data sits beside it (edgekiln.inputs)
                mounts += [Mount(host_path.parent / name, f"{IN[key]}/{name}", read_only=True)
                           for name in onnx_external_files(host_path)]
        step = Path(script).stem
        # one name per engine, job and step: command() (the manifest), <step>.sh and the run agree
        key = f"{self.engine.where}|{root}|{script}".encode()
        name = container_name(step, hashlib.sha256(key).hexdigest()[:8])
        env_vars = {
            "EKIT_PATHS": json.dumps(paths, sort_keys=True),
            "PYTHONPATH": JOB,
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": "/tmp",
        }
        if self.qemu_cpu and env.platform != self.engine.check().platform:
            env_vars["QEMU_CPU"] = self.qemu_cpu  # binfmt's QEMU reads it from the process' environment
        command: tuple[str, ...] = (PYTHON, Path(script).as_posix())
        if self.qemu_user:
            mounts.append(Mount(Path(self.qemu_user[0]), QEMU_USER, read_only=True))
            env_vars["QEMU_CPU"] = self.qemu_user[1]
            command = (QEMU_USER, "-0", PYTHON, *command)
        return RunSpec(image=env.ref, command=command, step=step,
                       mounts=tuple(mounts), env=env_vars, workdir=JOB, user=self.user,
                       network="none", memory=self._memory(), platform=env.platform, gpus=self.gpus,
                       labels={"edgekiln.image": env.image}, name=name,
                       # the NVIDIA container toolkit updates the container's ld cache: not on a read-only root
                       read_only_root=not self.gpus)

    def _memory(self) -> str | None:
        """The container memory cap: ``memory``, else EDGEKILN_DOCKER_MEMORY ("none": no cap), else
        3/4 of the engine's memory (so a runaway step is killed, not the machine)."""
        chosen = self.memory or os.environ.get("EDGEKILN_DOCKER_MEMORY")
        if chosen:
            return None if chosen.lower() == "none" else chosen
        total = self.engine.mem_total()
        return f"{total * 3 // 4 // 2 ** 20}m" if total else None

    def _copy(self) -> bool:
        return (not self.engine.is_local) if self.copy is None else self.copy

    def command(self, env: Env, job: Job, script: str) -> list[str]:
        """The exact ``docker run`` of the step (bind mounts); for an engine on another machine
        the ``docker create`` whose container the job is copied into (the whole sequence is in
        ``<step>.sh`` beside the step's log). The container name is fixed per engine, job and
        step, so this is the command ``run`` runs."""
        if env.runner != self.name:
            return self._local().command(env, job, script)
        spec = self.spec(env, job, script)
        return self.engine.create_argv(spec) if self._copy() else self.engine.run_argv(spec)

    def run(self, env: Env, job: Job, script: str, log: Path, on_line: OnLine | None = None,
            timeout: float | None = None) -> None:
        if env.runner != self.name:
            return self._local().run(env, job, script, log, on_line, timeout)
        spec = self.spec(env, job, script)
        # copy mode brings the writable work/ back (plain files only); logs live outside it
        result = self.engine.run(spec, log_path=Path(log), on_line=on_line, timeout=timeout,
                                 copy=self._copy())
        check_outputs(Path(job.root) / "work", spec.step)  # no link or device the host could follow
        if result.returncode == 0:
            return
        if result.oom_killed:
            raise StepFailed(f"step {spec.step} ran out of memory (container limit "
                             f"{self.memory or 'none'}); it was killed",
                             f"raise --memory, or see the log: {log}")
        if "QEMU_CPU" in spec.env and result.returncode in CRASHES:  # the step died of a signal, emulated
            last = next((l for l in reversed(result.tail) if l.strip()), "")
            raise StepFailed(f"step {spec.step} crashed under emulation ({CRASHES[result.returncode]}, exit "
                             f"{result.returncode}) on {spec.platform} with QEMU_CPU={spec.env['QEMU_CPU']}"
                             + (f": {last.strip()[:200]}" if last.strip() else ""),
                             "check QEMU (python -m edgekiln.emulation status: QEMU < 8 crashes ONNX Runtime "
                             f"and LiteRT), try another --emulate-cpu, or validate on an arm64 machine; log: {log}")
        if result.returncode == 137:
            raise StepFailed(f"step {spec.step} was killed (SIGKILL, exit 137) — from outside "
                             "the step or by the kernel", f"see the log: {log}")
        raise step_error(spec.step, result.returncode, Path(log), list(result.tail))
