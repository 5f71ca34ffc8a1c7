"""The versioned output tree: ``<out>/<model>/<version>/<target>/<precision>/``.

* A version is ``--version`` or derived from the content of everything that shapes the build
  (model bytes, input spec, calibration and validation images, options, edgekiln's recipes), so it
  is stable for the same inputs.
* Each artifact folder holds the artifact files, ``manifest.json``, ``report.json`` and ``build/``
  (rendered scripts, params, logs, the exact commands). Its build key decides cache hits.
* Publishing is atomic: everything is staged next to the version folder and moved in with
  ``rename``; a published artifact is never overwritten, and ``latest`` points at the newest version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import PublishConflict, UsageError

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(path: Path, label: str = "input") -> str:
    """A file's sha256 (an ONNX model with external data: with its data files), or for a folder
    the hash of its sorted (relative path, file hash) pairs — the files edgekiln.inputs lists, the
    ones the steps read (a link inside the folder is refused)."""
    from .inputs import onnx_external_files, tree_files

    if path.is_file():
        extra = onnx_external_files(path)
        if not extra:
            return sha256_file(path)
        return sha256_json([sha256_file(path)] + [[n, sha256_file(path.parent / n)] for n in extra])
    digest = hashlib.sha256()
    for item in tree_files(path, label):
        digest.update(f"{item.relative_to(path).as_posix()}\0{sha256_file(item)}\n".encode())
    return digest.hexdigest()


def sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class Location:
    out: Path
    model: str
    version: str

    @property
    def model_dir(self) -> Path:
        return self.out / self.model

    @property
    def version_dir(self) -> Path:
        return self.model_dir / self.version

    def artifact_dir(self, target: str, precision: str) -> Path:
        return self.version_dir / target / precision


# a version is one folder name and one word in SHA256SUMS, manifests and reports: no spaces,
# newlines, control characters, markup or leading '-'/'.'
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION.fullmatch(version) or version == "latest":
        raise UsageError(f"--version {version!r} cannot name a folder",
                         "use letters, digits, '.', '_', '+', '-' (starting with a letter or digit), e.g. 1.2.0")
    return version


def location(out: Path, model: str, version: str) -> Location:
    loc = Location(out.resolve(), model, check_version(version))
    if loc.version_dir.resolve().parent.parent != loc.out:  # model names are sanitised; be sure
        raise UsageError(f"model name {model!r} escapes the output root", "rename the model file")
    return loc


def existing(loc: Location, target: str, precision: str) -> dict | None:
    path = loc.artifact_dir(target, precision) / "manifest.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {"build_key": "unreadable"}


def cache_state(loc: Location, target: str, precision: str, build_key: str) -> str:
    """``new``, ``hit`` (same build published) — or raise PublishConflict."""
    manifest = existing(loc, target, precision)
    if manifest is None:
        return "new"
    if manifest.get("build_key") == build_key:
        return "hit"
    raise PublishConflict(
        f"{loc.artifact_dir(target, precision)} is already published from different inputs",
        "published versions are never overwritten: pass a new --version")


JOB_STATES = ("running", "failed", "kept")


def jobs_root(out: Path) -> Path:
    return out.resolve() / ".edgekiln" / "jobs"


def new_job_dir(out: Path) -> Path:
    """A fresh job folder with ``job.json`` saying which process runs it (``edgekiln clean``
    never removes the folder of a build that is still running)."""
    root = jobs_root(out)
    root.mkdir(parents=True, exist_ok=True)
    path = root / uuid.uuid4().hex[:12]
    path.mkdir()
    mark_job(path, "running")
    return path


def mark_job(path: Path, state: str) -> None:
    (path / "job.json").write_text(json.dumps({"state": state, "pid": os.getpid(),
                                               "time": time.time()}) + "\n")


def job_state(path: Path) -> tuple[str, float]:
    """(state, age in seconds) of a job folder; a "running" job whose process is gone failed."""
    try:
        info = json.loads((path / "job.json").read_text())
    except (OSError, ValueError):
        info = {"state": "failed", "pid": None, "time": path.stat().st_mtime}
    state = info.get("state", "failed")
    if state == "running" and not _alive(info.get("pid")):
        state = "failed"  # killed before it could say so
    return state, max(0.0, time.time() - float(info.get("time") or path.stat().st_mtime))


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class JobFolder:
    path: Path
    state: str
    age_days: float
    size_bytes: int


def prune_jobs(out: Path, *, older_than_days: float | None = None, failed: bool = False,
               dry_run: bool = False) -> list[JobFolder]:
    """Remove job folders under ``<out>/.edgekiln/jobs``: those older than ``older_than_days``
    and/or (``failed``) every failed one; never a running build's. Returns what was (or, with
    ``dry_run``, would be) removed. With neither criterion, every job that is not running."""
    root = jobs_root(out)
    for folder in (root.parent, root):
        if folder.is_symlink():
            raise UsageError(f"{folder} is a symbolic link: edgekiln clean removes only job folders it made "
                             "inside the output root", "remove the link, or clean the folder it points at by hand")
    chosen = []
    for path in sorted(p for p in root.glob("*") if _job_folder(p)) if root.is_dir() else []:
        state, age = job_state(path)
        if state == "running":
            continue
        days = age / 86400.0
        old = older_than_days is not None and days >= older_than_days
        if old or (failed and state == "failed") or (older_than_days is None and not failed):
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
            chosen.append(JobFolder(path, state, round(days, 2), size))
    if not dry_run:
        for job in chosen:
            shutil.rmtree(job.path, ignore_errors=True)
    return chosen


JOB_NAME = re.compile(r"[0-9a-f]{12}")


def _job_folder(path: Path) -> bool:
    """A folder ``new_job_dir`` made: a 12-hex-digit name, a real folder (not a link), with job.json."""
    return (bool(JOB_NAME.fullmatch(path.name)) and not path.is_symlink() and path.is_dir()
            and (path / "job.json").is_file() and not (path / "job.json").is_symlink())


def publish(loc: Location, staged: Mapping[tuple[str, str], Path]) -> list[Path]:
    """Move staged artifact folders into the version folder atomically; update ``latest``.

    ``staged`` maps (target, precision) to a folder inside ``loc.model_dir`` (same file system).
    A new version folder appears in one rename; artifacts added to an existing version appear
    one rename each. Returns the published folders.
    """
    loc.model_dir.mkdir(parents=True, exist_ok=True)
    latest = loc.model_dir / "latest"
    if latest.is_dir() and not latest.is_symlink():
        raise UsageError(f"{latest} is a folder, not edgekiln's link to the newest version",
                         "move it away (versions cannot be named latest); nothing was published")
    published = []
    staging = loc.model_dir / f".staging-{uuid.uuid4().hex[:8]}"
    try:
        for (target, precision), folder in staged.items():
            dest = staging / target / precision
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(folder, dest)
        if not loc.version_dir.exists():
            try:
                os.rename(staging, loc.version_dir)
                published = [loc.artifact_dir(t, p) for t, p in staged]
            except OSError:
                pass  # a parallel build published this version first: add artifacts one by one
        if not published:
            for target, precision in staged:  # all or none: a conflict anywhere publishes nothing
                _same_build(staging / target / precision, loc.artifact_dir(target, precision))
            for target, precision in staged:
                dest = loc.artifact_dir(target, precision)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.exists():
                    continue  # the identical build was published meanwhile (checked above)
                try:
                    os.rename(staging / target / precision, dest)
                except OSError:  # published this instant by a parallel build
                    _same_build(staging / target / precision, dest)
                    continue
                published.append(dest)
        point_latest(loc)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return published


def _build_key_of(folder: Path) -> str | None:
    try:
        return json.loads((folder / "manifest.json").read_text()).get("build_key")
    except (OSError, ValueError, AttributeError):
        return None


def _same_build(mine: Path, dest: Path) -> None:
    """A parallel build published ``dest`` after this one checked the cache: it must be the same
    build (same build key), else this one fails (versions are never overwritten, and a caller
    must never get a manifest that is not the published one)."""
    if dest.exists() and _build_key_of(dest) != _build_key_of(mine):
        raise PublishConflict(f"{dest} was published by a parallel build from different inputs while this "
                              "one ran; nothing of this build was published",
                              "published versions are never overwritten: pass a new --version")


def point_latest(loc: Location) -> None:
    link = loc.model_dir / "latest"
    tmp = loc.model_dir / f".latest-{uuid.uuid4().hex[:8]}"
    os.symlink(loc.version, tmp)
    try:
        os.replace(tmp, link)
    except OSError:
        tmp.unlink()
        raise


def file_entries(folder: Path, names: Iterable[str]) -> list[dict[str, Any]]:
    return [{"path": n, "sha256": sha256_file(folder / n), "size": (folder / n).stat().st_size}
            for n in names]
