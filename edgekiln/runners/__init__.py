"""Runners execute rendered steps: ``docker`` (the step's image) or ``local`` (a virtualenv
made from the same lock). ``choose_runner`` picks one and says why."""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping

from ..errors import EnvironmentFailed, UsageError
from .base import Env, Job, Runner, step_error

KINDS = ("auto", "docker", "local")

__all__ = ["Env", "Job", "Runner", "step_error", "choose_runner", "runners_for_targets", "KINDS",
           "LazyRunners", "runner_factory"]


def _local(options: Mapping[str, Any]) -> Runner:
    from .local import LocalRunner  # the lead's module; imported only when it is wanted

    return LocalRunner(**options)


def choose_runner(kind: str = "auto", host: str | None = None, *,
                  docker_options: Mapping[str, Any] | None = None,
                  local_options: Mapping[str, Any] | None = None,
                  probe_timeout: float = 3.0) -> tuple[Runner, str]:
    """The runner for ``--runner kind`` and the reason, said in one line.

    auto: Docker when an engine answers at ``host`` (None: DOCKER_HOST / the current context /
    the default socket) within ``probe_timeout`` seconds, else local; and an image that cannot
    be had on that engine (not built, base neither there nor pullable) runs locally instead,
    said through ``prepare``'s ``on_line``. docker: the engine must
    answer (EnvironmentFailed otherwise). ``docker_options`` go to DockerRunner (base_image,
    platform, memory, user, gpus, copy, rebuild, ...), ``local_options`` to LocalRunner.
    """
    if kind not in KINDS:
        raise UsageError(f"unknown runner {kind!r}", f"use one of {', '.join(KINDS)}")
    if kind == "local":
        if host:
            raise UsageError("--docker-host needs the Docker runner", "drop --runner local")
        return _local(local_options or {}), "--runner local: steps run in local virtualenvs"
    from ..docker import DockerEngine
    from .docker import DockerRunner

    engine = DockerEngine(host, check_timeout=probe_timeout if kind == "auto" else 15.0)
    try:
        info = engine.check()
    except EnvironmentFailed as exc:
        if kind == "docker" or host:
            raise
        return (_local(local_options or {}),
                f"--runner auto: {exc.message}; steps run in local virtualenvs instead")
    options = dict(docker_options or {})
    if kind == "auto":  # images that cannot be had here run in local virtualenvs instead
        options.setdefault("fallback", lambda: _local(local_options or {}))
    runner = DockerRunner(engine=engine, **options)
    why = "--runner docker" if kind == "docker" else "--runner auto: a Docker engine answers"
    return runner, f"{why}: Docker {info.server_version} at {info.endpoint} ({info.platform})"


def runners_for_targets(kind: str = "auto", docker_host: str | None = None, *,
                        docker_options: Mapping[str, Any] | None = None,
                        local_options: Mapping[str, Any] | None = None,
                        strict_platform: bool = False,
                        on_note: Callable[[str], None] | None = None):
    """``(runner_for(step=None) -> Runner, reason)`` for a multi-target build. ``step`` is a
    plan Step (or anything with ``target``, ``platform`` and ``gpu``); None: the default runner.

    Every step runs on one engine: ``--docker-host`` (Docker's own remote engine: ssh://, tcp://,
    a context), else the default one. More machines: `edgekiln worker` and ``--broker``
    (edgekiln.dist), never a scheduler of edgekiln's own.
    A step whose platform the engine can build (natively or with buildx + qemu) gets images for
    that platform; otherwise it runs on the engine's own platform (the conversions are
    architecture-independent) and ``on_note`` is told why — unless ``strict_platform``: then
    EnvironmentFailed says what to install. With ``auto`` the default engine's runner sends
    images that cannot be had to the local runner (see choose_runner); with the local runner
    every step gets it. The step carries everything needed: runners never look targets up.
    """
    runner, reason = choose_runner(kind, docker_host, docker_options=docker_options,
                                   local_options=local_options)
    if runner.name != "docker":
        def local_for(step=None) -> Runner:
            if getattr(step, "qemu", None):  # an x86 CPU class this machine lacks: under QEMU user mode
                return _variant(runner, qemu=_qemu_user(step))
            if getattr(step, "emulate_cpu", None):  # an x86 virtualenv is not Arm
                raise EnvironmentFailed(f"validation on {step.platform} needs the Docker runner ({reason})",
                                        "start a Docker engine (.ci/docker-up.sh), or drop --platform")
            return runner
        return local_for, reason
    noted: set = set()

    def runner_for(step=None) -> Runner:
        name = getattr(step, "target", None)
        base = runner
        if step is None or name is None:
            return base
        wants = {}
        if getattr(step, "qemu", None):  # an x86 CPU class this machine lacks: QEMU inside the container
            if not base.engine.is_local:
                raise EnvironmentFailed(f"target {name}: validation on an emulated CPU class needs an engine on "
                                        f"this machine (QEMU is mounted from here), not {base.engine.where}",
                                        "use --runner local, or declare the remote machine's class: --option cpu=…")
            qemu = _qemu_user(step)
            from ..isa import QEMU_FIX, host
            if not host().qemu.static:
                raise EnvironmentFailed(f"{qemu[0]} is not statically linked: it cannot run inside a container",
                                        f"use --runner local, or {QEMU_FIX}")
            return _variant(base, qemu_user=qemu)
        if getattr(step, "gpu", False):
            wants["gpus"] = "all"  # TensorRT: the host needs the NVIDIA container toolkit
        platform, cpu = getattr(step, "platform", None), getattr(step, "emulate_cpu", None)
        if platform:
            ok, why = base.supports(platform)
            emulated = ok and why != "native"
            if ok and cpu:  # an Arm validation: the artifact runs on the platform, emulated or not
                wants["platform"] = platform
                wants["qemu_cpu"] = cpu if emulated else None
            elif cpu:
                raise EnvironmentFailed(f"target {name}: cannot validate on {platform}: {why}")
            elif emulated and not strict_platform:
                # conversion does not depend on the CPU: under emulation it would only be 50-100x slower
                if on_note and name not in noted:
                    noted.add(name)
                    on_note(f"{name}: converts on {base.engine.check().platform} (architecture independent; "
                            f"{platform} would be emulated)")
            elif ok:
                wants["platform"] = platform
            elif strict_platform:
                raise EnvironmentFailed(f"target {name}: {why}")
            elif on_note and name not in noted:
                noted.add(name)
                on_note(f"{name}: {why}; its steps run on {base.engine.check().platform}")
        return _variant(base, **wants)

    return runner_for, reason


def _qemu_user(step) -> tuple[str, str]:
    """(QEMU binary, CPU model) for a step planned to run under QEMU user mode (edgekiln.isa)."""
    from ..isa import QEMU_FIX, host

    qemu = host().qemu
    if qemu is None or not qemu.ok():
        raise EnvironmentFailed(f"step {step.id} runs under QEMU user mode, and none >= 7.2 is here", QEMU_FIX)
    return qemu.path, step.emulate_cpu


def _variant(runner: Runner, **attrs) -> Runner:
    """The same Docker runner (sharing its engine) with other defaults (platform, gpus)."""
    if all(getattr(runner, k, None) == v for k, v in attrs.items()):
        return runner
    import copy

    twin = copy.copy(runner)
    for key, value in attrs.items():
        setattr(twin, key, value)
    return twin


def runner_factory(kind: str, docker_host: str | None, *, base_image: str | None = None,
                   platform: str | None = None, on_note: Callable[[str], None] | None = None):
    """``(runner_for(step) -> Runner, reason)`` for ``--runner``/``--docker-host``/``--base-image``/
    ``--platform``: local, or Docker on one engine (``--docker-host``, else the default one)."""
    docker_options = {}
    if base_image:  # one reference for every image, or image=ref pairs, comma-separated
        docker_options["base_image"] = parse_base_images(base_image)
    if platform:
        docker_options["platform"] = platform
    return runners_for_targets(kind, docker_host, docker_options=docker_options,
                               strict_platform=bool(platform), on_note=on_note)


def parse_base_images(text: str):
    """``--base-image REF`` (every image) or ``image=REF,image=REF``."""
    if "=" not in text:
        return text
    pairs = [part.partition("=") for part in text.split(",")]
    bad = [name + sep + ref for name, sep, ref in pairs if not (sep and name.strip() and ref.strip())]
    if bad:
        from ..errors import UsageError

        raise UsageError(f"--base-image {text!r}: {bad[0]!r} is not image=reference",
                         "give one reference, or pairs like tflite=X,arm-validate=Y")
    return {name.strip(): ref.strip() for name, _, ref in pairs}


class LazyRunners:
    """runner_for(step), made on first use: a cache hit never probes Docker or environments.
    ``on_reason`` hears, once, which runner was chosen and why."""

    def __init__(self, make: Callable[[], tuple[Callable, str]], on_reason: Callable[[str], None]):
        self._make, self._on_reason, self._runner_for = make, on_reason, None
        self._lock = threading.Lock()

    def __call__(self, step=None) -> Runner:
        with self._lock:
            if self._runner_for is None:
                self._runner_for, reason = self._make()
                self._on_reason(reason)
        return self._runner_for(step)
