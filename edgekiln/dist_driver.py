"""The driver's side of ``--broker`` (edgekiln.dist): send each artifact chain that is neither
published nor in the store as one task (task id = build key), wait, verify, publish.

Planning, keys and publishing stay here, as in a local build; the workers only build. An
artifact already published in ``--out``/``--dist`` is a cache hit; one already in the store is
fetched and published without a task. Ctrl-C revokes the tasks this run sent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass

from .build import ArtifactResult, BuildResult, Prepared, prepare
from .errors import BY_KIND, BrokerUnreachable, EdgekilnError, NoWorker, StepFailed, UsageError
from .store import cache_state, publish

QUEUE_WAIT = 60.0  # seconds to wait for a worker on a queue before saying none serves it


def queue_wait(value=None) -> float:
    raw = value if value is not None else os.environ.get("EDGEKILN_QUEUE_WAIT")
    try:
        wait = float(raw) if raw not in (None, "") else QUEUE_WAIT
    except ValueError:
        wait = -1
    if wait < 0:
        raise UsageError(f"--queue-wait {raw!r} is not a number of seconds >= 0", "e.g. --queue-wait 120")
    return wait


@dataclass
class Chain:
    index: int  # which request
    prep: Prepared
    artifact: object  # plan.Artifact
    key: str
    queue: str
    message: dict


class Remote:
    """One driver session: the broker, the store, and what this run sent."""

    def __init__(self, broker: str | None, store_url: str, wait: float | None = None, poll: float = 0.5):
        """``broker`` None: the store only (``release --assemble``): what is not in it is an error."""
        from .dist import check_broker, make_app
        from .dist_store import open_store

        if broker:
            check_broker(broker)
        self.store = open_store(store_url)
        self.store.check()
        self.app = make_app(broker) if broker else None
        self.wait, self.poll = queue_wait(wait), poll
        self.submitted: list[str] = []
        self.served: dict[str, str] = {}  # build key -> worker
        self.errors: dict[tuple[int, str], EdgekilnError] = {}  # (request, artifact key) -> why it failed

    # ------------------------------------------------------------ the one entry point

    def build_many(self, requests: list, ui) -> list[BuildResult | EdgekilnError]:
        """Build every request's artifacts through the workers. Per request: a BuildResult (its
        ``error`` set when some artifacts failed) or, when none passed, the error."""
        from .dist import queue_for

        start = time.monotonic()
        preps, found, chains, stored = [], [], [], []
        for i, request in enumerate(requests):
            prep = prepare(request)
            request = dataclasses.replace(request, version=prep.loc.version)
            preps.append(prep)
            found.append({})
            for a in prep.plan.artifacts:
                key = prep.keys[a.key]
                if cache_state(prep.loc, a.target, a.precision, key) == "hit":
                    path = prep.loc.artifact_dir(a.target, a.precision)
                    manifest = json.loads((path / "manifest.json").read_text())
                    found[i][a.key] = ArtifactResult(a.target, a.precision, "cached", path, manifest)
                    continue
                from .dist_store import has_build

                if has_build(self.store, key):  # built before by some worker: no task
                    stored.append((i, prep, a, key))
                    continue
                chains.append(Chain(i, prep, a, key, queue_for(prep.plan.steps_for(a)), {"request": request}))
        if chains and self.app is None:
            missing = [f"{requests[c.index].model_name}/{c.artifact.key}" for c in chains]
            raise UsageError(f"{len(missing)} entr{'y is' if len(missing) == 1 else 'ies are'} not in the store "
                             f"{self.store.url}: {', '.join(missing)}",
                             "run every shard first (release --shard I/N --store ...), then --assemble")
        for c in chains:  # the inputs go into the store once (by hash) before any task is sent
            c.message = self._message(c.message["request"], c.prep, c.artifact, c.key)
        for i, prep, a, key in stored:
            found[i][a.key] = self._publish(prep, a, key, "cached", ui)
        if chains:
            self._lost_broker(self._run, chains, found, ui)
        out: list[BuildResult | EdgekilnError] = []
        for i, prep in enumerate(preps):
            arts = [found[i][a.key] for a in prep.plan.artifacts]
            errors = [self.errors[(i, a.key)] for a in prep.plan.artifacts if (i, a.key) in self.errors]
            error = None
            if errors:
                first = errors[0]
                done = [f"{a.target}/{a.precision}" for a in arts if a.status != "failed"]
                message = "; ".join(e.message for e in errors) + (f" (published: {', '.join(done)})" if done
                                                                 else " (nothing published)")
                error = type(first)(message, first.hint)
                if not done:
                    out.append(error)
                    continue
            out.append(BuildResult(requests[i].model_name, prep.loc.version, arts, time.monotonic() - start,
                                   "broker", None, error))
        return out

    def _lost_broker(self, fn, *args):
        """The broker going away mid-run is one line (BrokerUnreachable), not a traceback."""
        import redis
        from kombu.exceptions import OperationalError

        try:
            return fn(*args)
        except (redis.RedisError, OperationalError, ConnectionError) as exc:
            from .dist import masked

            raise BrokerUnreachable(f"the broker {masked(self.app.conf.broker_url)} stopped answering: {exc}",
                                    "the tasks sent stay queued there: run the same command again when it is back "
                                    "(finished chains are in the store)") from None

    # ------------------------------------------------------------ messages

    def _message(self, request, prep: Prepared, artifact, key: str) -> dict:
        from . import __version__
        from .dist import fleet_hash, request_json
        from .dist_store import put_input

        if not hasattr(self, "_recipes"):
            self._recipes = fleet_hash()
        h = prep.hashes
        inputs = {"model": {"sha256": h["model"], "name": request.model.name},
                  "calib": h["calib"], "val": h["val"], "arch_file": None}
        put_input(self.store, request.model, h["model"], named=True)
        for name in ("calib", "val"):
            if h[name]:
                put_input(self.store, getattr(request, name), h[name], named=False)
        if prep.arch_file is not None:
            inputs["arch_file"] = {"sha256": h["arch"], "name": prep.arch_file.name}
            put_input(self.store, prep.arch_file, h["arch"], named=True)
        return {"edgekiln": __version__, "recipes": self._recipes, "build_key": key, "artifact": artifact.key,
                "model_name": request.model_name, "request": request_json(request), "inputs": inputs}

    # ------------------------------------------------------------ send, wait, publish

    def _broker_answers(self) -> None:
        from .dist import check_broker

        check_broker(self.app.conf.broker_url, timeout=3.0)

    def _workers(self) -> dict[str, set[str]]:
        """queue -> the workers that serve it now."""
        self._broker_answers()
        replies = self.app.control.inspect(timeout=1.0).active_queues() or {}
        served: dict[str, set[str]] = {}
        for worker, queues in replies.items():
            for q in queues or []:
                served.setdefault(q.get("name"), set()).add(worker)
        return served

    def _wait_for_queues(self, queues: set[str], ui) -> None:
        deadline = time.monotonic() + self.wait
        while True:
            served = self._workers()
            missing = sorted(q for q in queues if not served.get(q))
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise NoWorker(f"no worker serves queue {', '.join(missing)} (waited {self.wait:g} s)",
                               f"start one: edgekiln worker --broker URL --store STORE --queues {','.join(missing)} "
                               "(or raise --queue-wait / EDGEKILN_QUEUE_WAIT)")
            ui.stage(f"waiting for a worker on queue {', '.join(missing)}")
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))

    def _run(self, chains: list[Chain], found: list[dict], ui) -> None:
        from celery.result import AsyncResult

        from .dist import TASK

        self._wait_for_queues({c.queue for c in chains}, ui)
        keys = [c.key for c in chains]
        for key in keys:  # a result from an earlier run (revoked, failed) is not this one's
            AsyncResult(key, app=self.app).forget()
        self._broker_answers()
        self.app.control.broadcast("edgekiln_unrevoke", arguments={"ids": keys})
        pending = {}
        try:
            for c in chains:
                self.app.send_task(TASK, args=[c.message], task_id=c.key, queue=c.queue)
                self.submitted.append(c.key)
                pending[c.key] = c
            by_queue: dict[str, int] = {}
            for c in chains:
                by_queue[c.queue] = by_queue.get(c.queue, 0) + 1
            ui.stage(f"sent {len(chains)} chain(s) to the workers: "
                     + ", ".join(f"{n} on {q}" for q, n in sorted(by_queue.items())))
            last_check = time.monotonic()
            while pending:
                for key in list(pending):
                    res = AsyncResult(key, app=self.app)
                    if not res.ready():
                        continue
                    c = pending.pop(key)
                    found[c.index][c.artifact.key] = self._done(c, res, ui)
                if pending and time.monotonic() - last_check > max(10.0, self.wait):
                    self._wait_for_queues({c.queue for c in pending.values()}, ui)
                    last_check = time.monotonic()
                time.sleep(self.poll)
        except BaseException:
            if pending:  # Ctrl-C, a kill, no worker left: the workers drop what this run sent
                try:
                    self._broker_answers()  # kombu would retry a broadcast to a dead broker forever
                    self.app.control.revoke(list(pending))  # a running chain ends into the store
                    ui.stage(f"revoked {len(pending)} task(s)")
                except Exception as exc:  # the broker is gone too
                    ui.warn(f"could not revoke {len(pending)} task(s): {exc}")
            raise

    def _done(self, c: Chain, res, ui) -> ArtifactResult:
        a = c.artifact
        value = res.result if res.successful() else None
        error = None
        if not isinstance(value, dict):
            error = StepFailed(f"{a.key}: the worker's task failed: {res.result!r}"[:400],
                               "see the worker's log")
        elif "error" in value:
            info = value["error"]
            cls = BY_KIND.get(info.get("kind"), StepFailed)
            error = cls(f"{a.key}: {info.get('message')}", info.get("hint"))
        if error is not None:
            ui.warn(f"{a.key} failed: {error.message}")
            self.errors[(c.index, a.key)] = error
            return ArtifactResult(a.target, a.precision, "failed", c.prep.loc.artifact_dir(a.target, a.precision),
                                  {}, [error.message])
        self.served[c.key] = value.get("worker", "?")
        ui.stage(f"{a.key} built by {value.get('worker')} ({value.get('status')})")
        return self._publish(c.prep, a, c.key, "built", ui)

    def _publish(self, prep: Prepared, a, key: str, status: str, ui) -> ArtifactResult:
        """Fetch a committed build from the store, verify it, publish it (atomically)."""
        from .dist_store import fetch_build

        loc = prep.loc
        loc.model_dir.mkdir(parents=True, exist_ok=True)
        folder = loc.model_dir / f".stage-remote-{uuid.uuid4().hex[:8]}-{a.target}-{a.precision}"
        try:
            fetch_build(self.store, key, folder)
            manifest = json.loads((folder / "manifest.json").read_text())
            publish(loc, {(a.target, a.precision): folder})
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        art_status = manifest.get("status") if manifest.get("status") == "pending-device" else status
        return ArtifactResult(a.target, a.precision, art_status, loc.artifact_dir(a.target, a.precision), manifest)


def remote_for(broker: str | None, store: str | None, wait=None) -> Remote | None:
    """``--broker``/``EDGEKILN_BROKER`` and ``--store``/``EDGEKILN_STORE``: a Remote, or None (local)."""
    from .dist import broker_url

    url = broker_url(broker)
    if not url:
        if store:
            raise UsageError("--store is for builds through a broker", "add --broker URL, or drop --store")
        return None
    return Remote(url, store or os.environ.get("EDGEKILN_STORE"), wait)
