"""Builds across machines: Celery workers and a Redis broker (docs/workers.md).

The driver (``build``/``release --broker``) plans and keys as always, puts the inputs into the
shared store (edgekiln.dist_store) and sends ONE task per artifact chain (source → convert →
validate [→ Arm validation]) whose task id is the artifact's build key; the worker
(``edgekiln worker``) runs that chain with the usual runners (Docker or local), puts the built
artifact into the store (its manifest last) and answers with a small JSON result. The driver
verifies and publishes (edgekiln.dist_driver). A redelivered or duplicated task finds its build
in the store: a cache hit, never a second version.

Messages are JSON only. A task carries the driver's edgekiln version and the hash of its
recipes and image locks (``fleet_hash``); a worker with others refuses it (WorkerMismatch).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .errors import BrokerUnreachable, EdgekilnError, UsageError, WorkerMismatch

TASK = "edgekiln.chain"
# Redis redelivers a task that is unacknowledged this long: above the longest chain (an int8
# TensorRT/RKNN chain of a large model can take an hour). Workers and driver must agree.
VISIBILITY_TIMEOUT = 6 * 3600
log = logging.getLogger("edgekiln.worker")


def broker_url(value: str | None) -> str | None:
    return value or os.environ.get("EDGEKILN_BROKER") or None


def visibility_timeout() -> float:
    raw = os.environ.get("EDGEKILN_VISIBILITY_TIMEOUT")
    try:
        return float(raw) if raw else VISIBILITY_TIMEOUT
    except ValueError:
        raise UsageError(f"EDGEKILN_VISIBILITY_TIMEOUT={raw!r} is not a number of seconds",
                         "e.g. 21600 (above the longest chain)") from None


def masked(url: str) -> str:
    """The broker URL without its password (for lines and logs)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def check_broker(url: str, timeout: float = 5.0) -> None:
    """One line (BrokerUnreachable) when the broker does not answer."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise UsageError(f"--broker {masked(url)!r}: edgekiln's workers use Redis",
                         "e.g. --broker redis://:PASSWORD@build-box:6379/0 (rediss:// with TLS)")
    need_celery()
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise BrokerUnreachable(f"the broker {masked(url)} does not answer: {exc}",
                                "start Redis there (redis-server), or fix --broker / EDGEKILN_BROKER") from None


def need_celery() -> None:
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        raise UsageError("builds through a broker need Celery and redis-py, which are not installed",
                         "pip install 'edgekiln[dist]'") from None


def make_app(url: str):
    """The Celery app of driver and workers (the same settings on both sides)."""
    from celery import Celery

    vt = visibility_timeout()
    app = Celery("edgekiln", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"], result_accept_content=["json"],
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        task_track_started=True, result_expires=7 * 86400, result_extended=False,
        # a live worker sweeps for the tasks of a dead one every min(10 s, vt/10) once they are vt old
        broker_transport_options={"visibility_timeout": vt, "unacked_restore_interval": max(1, min(10, int(vt // 10))),
                                  "unacked_restore_throttle": 1},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=3, worker_hijack_root_logger=True,
        worker_send_task_events=False, task_default_queue="amd64",
    )
    app.task(name=TASK, bind=True)(_chain_task)
    return app


# ---------------------------------------------------------------- identity of a fleet


def fleet_hash() -> str:
    """The hash of everything a build key is made of besides the inputs: every target file,
    converter template and support file, every image recipe and lock."""
    from .resources import data_dir
    from .store import sha256_file, sha256_json

    files = []
    for name in ("targets", "converters", "images"):
        root = data_dir(name)
        files += [[f"{name}/{p.relative_to(root).as_posix()}", sha256_file(p)] for p in sorted(root.rglob("*"))
                  if p.is_file() and "__pycache__" not in p.parts]
    return sha256_json(files)


def request_json(request) -> dict[str, Any]:
    """A BuildRequest as JSON, without its paths (the inputs travel through the store)."""
    data = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)
            if f.name not in ("model", "calib", "val", "out", "input")}
    data["input"] = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(request.input).items()}
    data["targets"] = list(request.targets)
    data["precisions"] = list(request.precisions) if request.precisions is not None else None
    for key in ("options", "thresholds", "task_params"):
        data[key] = dict(data[key] or {})
    return data


def request_from_json(data: dict, model: Path, calib: Path | None, val: Path | None, out: Path, arch: str | None):
    from .request import BuildRequest, InputSpec

    spec = {k: tuple(v) if isinstance(v, list) else v for k, v in data["input"].items()}
    fields = {f.name for f in dataclasses.fields(BuildRequest)}
    rest = {k: v for k, v in data.items() if k in fields and k != "input"}
    rest.update(targets=tuple(data["targets"]),
                precisions=tuple(data["precisions"]) if data["precisions"] is not None else None,
                arch=arch)
    return BuildRequest(model=model, calib=calib, val=val, out=out, input=InputSpec(**spec), **rest)


def queue_for(steps) -> str:
    """The queue of a chain: what its steps need (a GPU, arm64) or else an amd64 machine."""
    if any(s.gpu for s in steps):
        return "gpu"
    if any(s.emulate_cpu and s.platform == "linux/arm64" for s in steps):
        return "arm64"
    return "amd64"


# ---------------------------------------------------------------- the worker


@dataclass
class WorkerSettings:
    name: str
    store: Any  # a dist_store backend
    work: Path  # inputs cache and the worker's own build store
    runner_for: Any  # LazyRunners
    recipes: str  # fleet_hash() at start


SETTINGS: WorkerSettings | None = None


class LogUI:
    """The build's progress as worker log lines (edgekiln's own warnings, never the tools' noise)."""

    def __init__(self, key: str):
        self.tag = key[:12]
        self._start: dict[str, float] = {}

    def stage(self, text: str) -> None:
        log.info("[%s] %s", self.tag, text)

    def step_start(self, key: str, label: str) -> None:
        log.info("[%s] ▶ %s", self.tag, label)

    def step_line(self, key: str, line: str) -> None:
        if line.startswith("warning: "):
            log.warning("[%s] %s", self.tag, line)

    def step_done(self, key: str, seconds: float, text: str | None = None) -> None:
        log.info("[%s] ✓ %s %.1fs", self.tag, text or key, seconds)

    def warn(self, text: str, key: str = "") -> None:
        log.warning("[%s] %s", self.tag, text)

    def close(self) -> None:
        pass


def _chain_task(self, message: dict) -> dict:
    """The Celery task: one artifact chain. Errors are results (never retried)."""
    try:
        return run_chain(message, SETTINGS)
    except EdgekilnError as exc:
        log.error("[%s] refused/failed: %s", str(message.get("build_key"))[:12], exc.line())
        return {"error": exc.to_json(), "worker": SETTINGS.name if SETTINGS else "?"}


def run_chain(message: dict, settings: WorkerSettings) -> dict:
    from .build import prepare, run_build
    from .dist_store import get_input, has_build, put_build

    key, artifact = message["build_key"], message["artifact"]
    if message.get("edgekiln") != __version__ or message.get("recipes") != settings.recipes:
        raise WorkerMismatch(
            f"worker {settings.name} (edgekiln {__version__}, recipes {settings.recipes[:12]}) refused {artifact} "
            f"of the driver (edgekiln {message.get('edgekiln')}, recipes {str(message.get('recipes'))[:12]})",
            "run the same edgekiln (and the same targets/, converters/, images/) on the driver and every worker")
    t0 = time.time()
    log.info("[%s] edgekiln-chain start %s %s at %.3f", key[:12], message["model_name"], artifact, t0)
    if has_build(settings.store, key):  # a redelivery or a duplicate of a finished chain
        log.info("[%s] edgekiln-chain done %s %s at %.3f (already in the store)", key[:12], message["model_name"],
                 artifact, time.time())
        return {"status": "cached", "artifact_status": message.get("artifact_status", "built"),
                "worker": settings.name, "start": t0, "end": time.time()}
    cache = settings.work / "inputs"
    ins = message["inputs"]
    model = get_input(settings.store, ins["model"]["sha256"], ins["model"]["name"], cache)
    calib = get_input(settings.store, ins["calib"], None, cache) if ins.get("calib") else None
    val = get_input(settings.store, ins["val"], None, cache) if ins.get("val") else None
    arch = message["request"].get("arch")
    if ins.get("arch_file"):
        path = get_input(settings.store, ins["arch_file"]["sha256"], ins["arch_file"]["name"], cache)
        arch = f"{path}:{arch.rpartition(':')[2]}"
    request = request_from_json(message["request"], model, calib, val, settings.work / "dist", arch)
    prep = prepare(request)
    if prep.keys.get(artifact) != key:
        raise WorkerMismatch(f"worker {settings.name} keys {artifact} as {str(prep.keys.get(artifact))[:12]}…, "
                             f"the driver as {key[:12]}…: their recipes differ",
                             "run the same edgekiln (and the same targets/, converters/, images/) everywhere")
    result = run_build(request, LogUI(key), settings.runner_for, all_or_nothing=True, only={artifact})
    art = next(a for a in result.artifacts if f"{a.target}/{a.precision}" == artifact)
    put_build(settings.store, key, art.path, settings.name)
    t1 = time.time()
    log.info("[%s] edgekiln-chain done %s %s at %.3f (%s, %.1fs)", key[:12], message["model_name"], artifact, t1,
             art.status, t1 - t0)
    return {"status": "built", "artifact_status": art.status, "worker": settings.name, "start": t0, "end": t1}


def default_queues(runner) -> list[str]:
    """What this machine can serve: its own architecture; arm64 too where the Docker runner can
    emulate it (QEMU user mode, .ci/arm64-up.sh). GPU and Jetson queues only when asked for."""
    from . import emulation

    native = "arm64" if platform.machine() in ("aarch64", "arm64") else "amd64"
    queues = [native]
    if native == "amd64" and getattr(runner, "name", "") == "docker" and emulation.status("linux/arm64")[0]:
        queues.append("arm64")
    return queues


def serve(broker: str, store_url: str, *, queues: str | None, runner: str, docker_host: str | None,
          base_image: str | None, concurrency: int, name: str | None, work: str | None,
          on_line=print) -> None:
    """``edgekiln worker``: check the broker and the store, then serve the queues until stopped."""
    from .dist_store import open_store
    from .resources import cache_dir
    from .runners import LazyRunners, runner_factory

    global SETTINGS
    check_broker(broker)
    store = open_store(store_url)
    store.check()
    name = name or f"edgekiln-{os.getpid()}@{socket.gethostname()}"
    runner_for = LazyRunners(lambda: runner_factory(runner, docker_host, base_image=base_image,
                                                    on_note=lambda t: log.warning(t)), lambda t: log.info(t))
    if queues:
        chosen = [q.strip() for q in queues.split(",") if q.strip()]
    else:
        chosen = default_queues(runner_for())
    if not chosen:
        raise UsageError(f"--queues {queues!r} names no queue", "e.g. --queues amd64,arm64")
    folder = Path(work).expanduser().resolve() if work else cache_dir() / "worker" / name.replace("@", "-")
    folder.mkdir(parents=True, exist_ok=True)
    SETTINGS = WorkerSettings(name, store, folder, runner_for, fleet_hash())
    app = make_app(broker)
    app.conf.broker_connection_max_retries = None  # a worker waits out a broker restart, however long
    _register_control()
    on_line(f"edgekiln worker {name}: queues {','.join(chosen)}; broker {masked(broker)}; store {store.url}; "
            f"work {folder}; edgekiln {__version__}, recipes {SETTINGS.recipes[:12]}")
    app.worker_main(["worker", "-Q", ",".join(chosen), "-c", str(concurrency), "-P", "threads", "-n", name,
                     "--loglevel", "INFO", "--without-gossip", "--without-mingle"])


_registered = threading.Lock()


def _register_control() -> None:
    """``edgekiln_unrevoke``: a driver that submits a chain again (after Ctrl-C revoked it) takes
    its build key off the workers' revoked list, else they would drop the new task."""
    from celery.worker import state
    from celery.worker.control import control_command

    with _registered:
        if getattr(_register_control, "done", False):
            return

        @control_command(args=[("ids", list)], signature="<ids>")
        def edgekiln_unrevoke(panel, ids=()):
            for task_id in ids:
                state.revoked.discard(task_id)
            return {"ok": len(ids)}

        _register_control.done = True
