"""A release: every entry of a matrix file built through the build API, packaged and published.

    <out>/<name>-<version>/
      <model>/<target>/<precision>/   artifact files, manifest.json (its reproducible part), build/
      archives/<name>-<version>-<target>.tar.gz   one per target; <name>-<version>.tar.gz: everything
      release.json                    the release manifest: every build manifest (reproducible part),
                                      the identity (each entry's build key and inputs), the rules below
      measured.json                   what a build measured rather than made (see VOLATILE)
      report.html  report.md          tables and charts (edgekiln.report)
      SHA256SUMS                      every file above (`sha256sum -c SHA256SUMS` works)

Builds go through ``edgekiln.build.run_build`` into the build store (``dist``): an entry built
before is a cache hit. The release folder is staged next to its final place and appears with one
``rename``: an interrupted release leaves none, and the rerun finds its finished builds cached.
A released name+version is never rewritten: the same inputs again are a no-op, other inputs an
error that says what changed.

The rule of what is reproducible (``release --check`` compares every file but these):
* VOLATILE manifest fields — when and how fast a build ran, commands that name its job folder
  (Docker mounts, container names), and where the inputs and environments were on the build
  machine (paths and Docker engines: a release built by workers through a broker equals one
  built here; their sha256 and lock hashes stay) — move from each build manifest into
  ``measured.json``; the build logs (timings) stay in the build store. The artifact folders keep
  the rest, which names no path of the build machine.
* MEASURED_FILES (``measured.json`` and the reports that show latency) are measurements.
* CHECK_EXCLUDE: TensorRT engines are not reproducible by nature (the builder times tactics).

`release --check` and `verify` live in edgekiln/release_check.py.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .archive import write_sums, write_tar_gz
from .build import ArtifactResult, prepare, run_build
from .errors import EdgekilnError, IntegrityError, PublishConflict, ValidationFailed
from .matrix import Entry, Matrix

SUMS = "SHA256SUMS"
MANIFEST = "release.json"
MEASURED = "measured.json"
VOLATILE = ("created", "validation.latency_ms", "steps[].seconds", "steps[].command", "model.file",
            "data.*.path", "steps[].environment.ref", "steps[].environment.host",
            "arm_validation.latency_ms", "arm_validation.native_latency_ms",
            "cpu_validation.latency_ms", "cpu_validation.native_latency_ms")
MEASURED_FILES = {
    MEASURED: "measured: build times, latency and commands (they name the job folder)",
    "report.html": "measured: shows latency",
    "report.md": "measured: shows latency",
}
CHECK_EXCLUDE = {
    "*.engine": "TensorRT engine: the builder times tactics, so engines differ from build to build",
    "*.plan": "TensorRT engine: the builder times tactics, so engines differ from build to build",
}
LEFT_IN_STORE = ("build/logs", "build/commands.sh")  # volatile; the commands are in measured.json
RULES = {"volatile_manifest_fields": list(VOLATILE), "measured_files": MEASURED_FILES,
         "check_exclude": CHECK_EXCLUDE, "left_in_build_store": list(LEFT_IN_STORE)}


@dataclass
class Planned:
    request: Any  # BuildRequest
    entries: tuple[Entry, ...]
    record: dict[str, dict]  # entry key -> identity record


@dataclass
class ReleaseResult:
    path: Path
    status: str  # released | exists
    entries: dict[str, ArtifactResult] = field(default_factory=dict)
    seconds: float = 0.0

    def archives(self) -> list[dict]:
        return [{"path": p.relative_to(self.path).as_posix(), "size": p.stat().st_size}
                for p in sorted((self.path / "archives").glob("*.tar.gz"))]


# ---------------------------------------------------------------- manifests


def split_manifest(manifest: dict) -> tuple[dict, dict]:
    """(reproducible part, volatile part) of a build manifest (see VOLATILE)."""
    stable = copy.deepcopy(manifest)
    volatile = {"created": stable.pop("created", None),
                "latency_ms": stable.get("validation", {}).pop("latency_ms", None),
                "steps": {}}
    volatile["model_file"] = (stable.get("model") or {}).pop("file", None)
    volatile["data_paths"] = {k: v.pop("path", None) for k, v in (stable.get("data") or {}).items()
                              if isinstance(v, dict)}
    for key in ("arm_validation", "cpu_validation"):  # validations elsewhere: their timings
        if isinstance(stable.get(key), dict):
            volatile[key] = {k: stable[key].pop(k, None) for k in ("latency_ms", "native_latency_ms")}
    for step in stable.get("steps", []):
        env = step.get("environment") or {}
        volatile["steps"][step.get("id")] = {"seconds": step.pop("seconds", None),
                                             "command": step.pop("command", None),
                                             "environment_ref": env.pop("ref", None),
                                             # the Docker engine it ran on (a worker's, with --broker)
                                             "environment_host": env.pop("host", None)}
    return stable, volatile


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- identity


def prepare_all(matrix: Matrix, dist: Path) -> list[Planned]:
    """Plan and key every entry (no environments, no conversions)."""
    found = []
    for request, entries in matrix.requests(Path(dist)):
        try:
            prep = prepare(request)
        except EdgekilnError as exc:
            raise type(exc)(f"{matrix.path}: {entries[0].model}: {exc.message}", exc.hint) from None
        limits = {a.key: a.thresholds for a in prep.plan.artifacts}
        record = {e.key: {"build_key": prep.keys[f"{e.target}/{e.precision}"], "build_version": prep.loc.version,
                          "inputs": prep.hashes, "input_spec": request.input.to_json(), "arch": request.arch,
                          "options": dict(request.options), "thresholds": limits[f"{e.target}/{e.precision}"]}
                  for e in entries}
        found.append(Planned(request, entries, record))
    return found


def identity(matrix: Matrix, prepared: list[Planned]) -> dict:
    entries = {}
    for p in prepared:
        entries.update(p.record)
    return {"name": matrix.name, "version": matrix.version, "source_date_epoch": matrix.source_date_epoch(),
            "entries": {e.key: entries[e.key] for e in matrix.entries}}


def what_changed(old: dict, new: dict) -> list[str]:
    """Readable differences between two release identities."""
    changes = []
    if old.get("source_date_epoch") != new["source_date_epoch"]:
        changes.append(f"archive mtime (release.date / SOURCE_DATE_EPOCH) {old.get('source_date_epoch')} "
                       f"→ {new['source_date_epoch']}")
    before, after = old.get("entries", {}), new["entries"]
    changes += [f"entry {k} added" for k in after if k not in before]
    changes += [f"entry {k} removed" for k in before if k not in after]
    for key in (k for k in after if k in before):
        diffs = []
        for field_name, value in after[key].items():
            was = before[key].get(field_name)
            if field_name in ("build_key", "build_version") or was == value:
                continue
            if isinstance(value, dict) and isinstance(was, dict):
                diffs += [f"{field_name}.{k} {_short(was.get(k))} → {_short(value.get(k))}"
                          for k in sorted(set(value) | set(was)) if value.get(k) != was.get(k)]
            else:
                diffs.append(f"{field_name} {_short(was)} → {_short(value)}")
        if not diffs and before[key].get("build_key") != after[key]["build_key"]:
            diffs.append("build key (edgekiln's recipes: target file, converter templates or image lock)")
        if diffs:
            changes.append(f"{key}: {', '.join(diffs)}")
    return changes


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text[:12] + "…" if len(text) == 64 else text[:80]


# ---------------------------------------------------------------- release


def release(matrix: Matrix, out: Path, dist: Path, ui, runner_for: Callable, jobs: int = 1,
            remote=None) -> ReleaseResult:
    """Build every entry (cached), package, publish ``<out>/<name>-<version>`` atomically.
    ``remote`` (edgekiln.dist_driver.Remote): the entries are built by workers through a broker."""
    start = time.monotonic()
    out = Path(out).expanduser().resolve()
    dest = out / matrix.folder
    prepared = prepare_all(matrix, Path(dist).expanduser().resolve())
    ident = identity(matrix, prepared)
    if dest.exists():
        return _existing(dest, matrix, ident, ui)
    results = build_entries(matrix, prepared, ui, runner_for, jobs, remote)
    out.mkdir(parents=True, exist_ok=True)
    stage = out / f".stage-{matrix.folder}-{uuid.uuid4().hex[:8]}"
    try:
        assemble(stage, matrix, results, ident)
        try:
            os.rename(stage, dest)
        except OSError:
            if dest.exists():  # another run released it meanwhile
                return _existing(dest, matrix, ident, ui)
            raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    ui.stage(f"released {dest}")
    return ReleaseResult(dest, "released", results, time.monotonic() - start)


def _existing(dest: Path, matrix: Matrix, ident: dict, ui) -> ReleaseResult:
    try:
        old = json.loads((dest / MANIFEST).read_text())["identity"]
    except (OSError, ValueError, KeyError):
        raise IntegrityError(f"{dest} exists but its {MANIFEST} is missing or unreadable",
                             f"run `edgekiln verify {dest}`; releases are never rewritten") from None
    changes = what_changed(old, ident)
    if changes:
        raise PublishConflict(f"{matrix.folder} is already released from other inputs: {'; '.join(changes)}",
                              "a released version is never rewritten: raise release.version in the release file")
    ui.stage(f"{matrix.folder} is already released from the same inputs: {dest}")
    return ReleaseResult(dest, "exists")


def build_entries(matrix: Matrix, prepared: list[Planned], ui, runner_for, jobs: int,
                  remote=None) -> dict[str, ArtifactResult]:
    """Build every request (its artifacts in parallel with ``jobs``); all must pass. A release is
    all or nothing: an entry refused (below a threshold) or failed stops it, named with its model,
    target, precision and why, with the exit code of its kind (a refusal: ValidationFailed). The
    other entries stay in the build store, cached for the next run."""
    results: dict[str, ArtifactResult] = {}
    failures: list[tuple[str, EdgekilnError]] = []
    # through a broker: every entry's chains are sent at once, the workers build them in parallel
    built = remote.build_many([p.request for p in prepared], ui) if remote is not None else None
    for i, p in enumerate(prepared):
        ui.stage(f"build {p.request.model_name} → {', '.join(p.request.targets)} "
                 f"({', '.join(p.request.precisions)})")
        try:
            result = built[i] if built is not None else run_build(p.request, ui, runner_for, jobs=jobs)
            if isinstance(result, EdgekilnError):
                raise result
        except EdgekilnError as exc:
            failures.append((f"{p.request.model_name} → {', '.join(p.request.targets)}: {exc.message}", exc))
            continue  # go on: name every failing entry (the others are cached next time)
        for art in result.artifacts:
            if art.status == "failed":
                failures.append((f"{result.model} {art.target}/{art.precision} refused: {'; '.join(art.failures)}",
                                 result.error))
            else:
                results[f"{result.model}/{art.target}/{art.precision}"] = art
    if failures:
        first = failures[0][1]
        hint = ("change the entry's thresholds in the release file only if the numbers are acceptable "
                "(the entries that passed are cached in the build store)" if isinstance(first, ValidationFailed)
                else first.hint)
        raise type(first)(f"release {matrix.folder} stopped, nothing released — "
                          + "; ".join(line for line, _ in failures), hint)
    return results


def artifact_files(folder: Path, manifest: dict) -> list[str]:
    """The files of a build folder that go into a release (relative paths, sorted)."""
    names = set()
    for listed in (folder / f["path"] for f in manifest.get("files", [])):  # a bundle may be a folder
        names |= {p.relative_to(folder).as_posix() for p in ([listed] if listed.is_file() else listed.rglob("*"))
                  if p.is_file()}
    build = folder / "build"
    if build.is_dir():
        for path in build.rglob("*"):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and "__pycache__" not in path.parts \
                    and not any(rel == x or rel.startswith(x + "/") for x in LEFT_IN_STORE):
                names.add(rel)
    return sorted(names)


def assemble(stage: Path, matrix: Matrix, results: dict[str, ArtifactResult], ident: dict) -> None:
    from .report import write_reports

    stage.mkdir(parents=True)
    entries, measured, full = [], {}, []
    for e in matrix.entries:
        art = results[e.key]
        stable, volatile = split_manifest(art.manifest)
        for rel in artifact_files(art.path, art.manifest):
            (stage / e.key / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(art.path / rel, stage / e.key / rel)
            if os.access(art.path / rel, os.X_OK):
                os.chmod(stage / e.key / rel, 0o755)
        write_json(stage / e.key / "manifest.json", stable)
        entries.append({"model": e.model, "target": e.target, "precision": e.precision, "path": e.key,
                        "manifest": stable})
        measured[e.key] = volatile
        full.append(art.manifest)
    archives = [("", None)] + [(f"-{t}", t) for t in matrix.targets]
    write_json(stage / MANIFEST, {
        "schema": 1, "kind": "edgekiln-release", "name": matrix.name, "version": matrix.version,
        "date": matrix.date.isoformat(), "source_date_epoch": ident["source_date_epoch"], "edgekiln": __version__,
        "identity": ident, "entries": entries, "rules": RULES,
        "archives": [{"path": f"archives/{matrix.folder}{suffix}.tar.gz", "target": t or "all"}
                     for suffix, t in archives]})
    write_json(stage / MEASURED, {"rule": "volatile fields of each build manifest (see release.json rules)",
                                  "entries": measured})
    (stage / "archives").mkdir()
    for suffix, target in archives:
        keys = [e.key for e in matrix.entries if target in (None, e.target)]
        members = [(f"{matrix.folder}/{k}/{p.relative_to(stage / k).as_posix()}", p)
                   for k in keys for p in (stage / k).rglob("*") if p.is_file()]
        if target is None:
            members.append((f"{matrix.folder}/{MANIFEST}", stage / MANIFEST))
        write_tar_gz(stage / "archives" / f"{matrix.folder}{suffix}.tar.gz", members, ident["source_date_epoch"])
    write_reports(stage, f"{matrix.name} {matrix.version}", full)
    write_sums(stage, [p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()])
