"""CI matrices without a broker (the cibuildwheel way): ``release --shard I/N --store S`` builds a
deterministic slice of the release's entries here and puts each built artifact into the shared
store; ``release --assemble --store S`` then packages the release from the store (verified, as a
broker's results are). Entry k (in the release file's order, from 0) belongs to shard k mod N + 1.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import EdgekilnError, UsageError


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise UsageError(f"--shard {text!r} is not I/N with 1 <= I <= N", "e.g. --shard 1/4 (the first of four)")
    return int(m[1]), int(m[2])


def shard_entries(matrix, index: int, count: int) -> list:
    return [e for k, e in enumerate(matrix.entries) if k % count == index - 1]


def build_shard(matrix, dist: Path, store_url: str, shard: tuple[int, int], ui, runner_for, jobs: int = 1) -> dict:
    """Build this shard's entries (cached in ``dist``) and put each into the store. Returns
    {"shard", "entries": {entry key: "built"|"cached"|"in store"}}; a failed entry raises after
    the others are in the store (its kind's exit code)."""
    from .build import run_build
    from .dist_store import has_build, open_store, put_build
    from .release import prepare_all

    store = open_store(store_url)
    store.check()
    index, count = shard
    mine = {e.key for e in shard_entries(matrix, index, count)}
    done: dict[str, str] = {}
    failures: list[EdgekilnError] = []
    for p in prepare_all(matrix, Path(dist).expanduser().resolve()):
        entries = [e for e in p.entries if e.key in mine]
        todo = {f"{e.target}/{e.precision}" for e in entries
                if not has_build(store, p.record[e.key]["build_key"])}
        done.update({e.key: "in store" for e in entries if f"{e.target}/{e.precision}" not in todo})
        if not todo:
            continue
        ui.stage(f"shard {index}/{count}: {p.request.model_name} → {', '.join(sorted(todo))}")
        try:
            result = run_build(p.request, ui, runner_for, jobs=jobs, only=todo)
        except EdgekilnError as exc:
            failures.append(exc)
            continue
        for art in result.artifacts:
            key = f"{result.model}/{art.target}/{art.precision}"
            if art.status == "failed":
                failures.append(type(result.error)(f"{key}: {'; '.join(art.failures)}", result.error.hint))
                continue
            put_build(store, p.record[key]["build_key"], art.path, f"shard {index}/{count}")
            done[key] = art.status
    if failures:
        first = failures[0]
        raise type(first)(f"shard {index}/{count}: " + "; ".join(f.message for f in failures), first.hint)
    return {"shard": f"{index}/{count}", "store": store.url, "entries": done}


def print_shard(console, done: dict, as_json: bool) -> None:
    if as_json:
        console.print_json(data=done)
        return
    for key, state in done["entries"].items():
        console.print(f"  {key}: {state}", markup=False)
    console.print(f"shard {done['shard']}: {len(done['entries'])} entries in {done['store']}; "
                  "when every shard ran: release --assemble", markup=False)
