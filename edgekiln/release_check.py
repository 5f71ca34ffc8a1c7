"""``release --check`` (rebuild from scratch and compare every file) and ``verify`` (re-hash a
release folder and re-check every manifest and archive). What is compared, and what the rule
excludes, is documented in edgekiln/release.py."""

from __future__ import annotations

import fnmatch
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .archive import read_sums, sha256_file, tar_members
from .errors import UsageError
from .matrix import Matrix
from .release import CHECK_EXCLUDE, MANIFEST, MEASURED_FILES, SUMS, ReleaseResult, release

@dataclass
class FileCheck:
    path: str
    status: str  # identical | differing | missing | extra | excluded
    detail: str = ""


def excluded(rel: str) -> str | None:
    """Why ``rel`` is not compared by --check (None: it is)."""
    if rel in MEASURED_FILES:
        return MEASURED_FILES[rel]
    name = rel.rsplit("/", 1)[-1]
    return next((why for pattern, why in CHECK_EXCLUDE.items() if fnmatch.fnmatch(name, pattern)), None)


def check(matrix: Matrix, out: Path, dist: Path, ui, runner_for, jobs: int = 1,
          remote=None) -> tuple[ReleaseResult, list[FileCheck]]:
    """Release (or find) the matrix, rebuild it from scratch in a temporary root, compare files.
    ``remote``: the release is built through the broker, the rebuild here (local runners)."""
    published = release(matrix, out, dist, ui, runner_for, jobs, remote)
    with tempfile.TemporaryDirectory(prefix="edgekiln-check-") as tmp:
        ui.stage(f"rebuilding every entry from scratch in {tmp} (no build cache)")
        again = release(matrix, Path(tmp) / "out", Path(tmp) / "dist", ui, runner_for, jobs)
        return published, compare_releases(published.path, again.path)


def compare_releases(a: Path, b: Path) -> list[FileCheck]:
    """Per file of two release folders: identical, differing, missing or excluded (the rule).

    A manifest that records an excluded file (an engine's hash) is compared with that record
    masked; SHA256SUMS and the archives are then identical when every entry that differs is a
    file found identical (masked) or excluded."""
    files = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()}
    files |= {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()}
    rows: dict[str, FileCheck] = {}
    containers = []
    for rel in sorted(files):
        why = excluded(rel)
        if why:
            rows[rel] = FileCheck(rel, "excluded", why)
        elif not (a / rel).is_file() or not (b / rel).is_file():
            rows[rel] = FileCheck(rel, "missing", "only in the " + ("rebuild" if (b / rel).is_file() else "release"))
        elif rel == SUMS or rel.endswith(".tar.gz"):
            containers.append(rel)
        else:
            rows[rel] = _compare_file(rel, a / rel, b / rel)
    for rel in sorted(containers, key=lambda r: r == SUMS):  # SUMS lists the archives: last
        fine = {r for r, row in rows.items() if row.status in ("identical", "excluded")}
        rows[rel] = _compare_file(rel, a / rel, b / rel, fine)
    return [rows[rel] for rel in sorted(rows)]


def _masked(data: Any) -> Any:
    """JSON with the records of excluded files reduced to their path."""
    if isinstance(data, dict):
        return {k: ([{"path": f.get("path")} if isinstance(f, dict) and excluded(str(f.get("path", ""))) else _masked(f)
                     for f in v] if k == "files" and isinstance(v, list) else _masked(v)) for k, v in data.items()}
    return [_masked(v) for v in data] if isinstance(data, list) else data


def _compare_file(rel: str, x: Path, y: Path, fine: set[str] = frozenset()) -> FileCheck:
    hx, hy = sha256_file(x), sha256_file(y)
    if hx == hy:
        return FileCheck(rel, "identical", f"{x.stat().st_size} bytes, sha256 {hx[:12]}")
    same = False
    if rel.endswith(".json"):
        same = _masked(json.loads(x.read_text())) == _masked(json.loads(y.read_text()))
    elif rel == SUMS or rel.endswith(".tar.gz"):
        if rel == SUMS:
            ex, ey = read_sums(x), read_sums(y)
        else:  # member names start with <name>-<version>/
            ex, ey = ({k.split("/", 1)[-1]: v for k, v in tar_members(f).items()} for f in (x, y))
        same = set(ex) == set(ey) and all(ex[k] == ey[k] or k in fine for k in ex)
    if same:
        return FileCheck(rel, "identical", "identical apart from the records of excluded files")
    return FileCheck(rel, "differing", f"release {x.stat().st_size} bytes sha256 {hx[:12]}, "
                                       f"rebuild {y.stat().st_size} bytes sha256 {hy[:12]}")


def verify(path: Path) -> tuple[int, list[str]]:
    """(files checked, problems) of a release folder: SHA256SUMS, every manifest, every archive.

    It proves the folder is what its own SHA256SUMS and release.json say (corruption, edits),
    not who made it (anyone can regenerate SHA256SUMS). Links, special files, archive members
    that are not plain files or folders under ``<name>-<version>/``, and paths that are absolute
    or climb with ``..`` are problems; a malformed release.json is one problem, never a crash."""
    path = Path(path)
    if not (path / SUMS).is_file() or not (path / MANIFEST).is_file():
        raise UsageError(f"{path} is not a release folder (no {SUMS} or {MANIFEST})",
                             "give <out>/<name>-<version> as written by `edgekiln release`")
    problems = []
    try:
        sums = read_sums(path / SUMS)
    except (ValueError, OSError) as exc:  # UnicodeDecodeError is a ValueError
        return 0, [f"{SUMS}: unreadable ({exc})"]
    problems += [f"{rel}: not a plain relative path (in {SUMS})" for rel in sums if not _plain(rel)]
    present = set()
    for p in path.rglob("*"):
        rel = p.relative_to(path).as_posix()
        if p.is_symlink():
            problems.append(f"{rel}: a symbolic link (a release holds plain files only)")
        elif p.is_file():
            present.add(rel)
        elif not p.is_dir():
            problems.append(f"{rel}: not a regular file")
    present -= {SUMS}
    for rel in sorted((set(sums) | present) - {r for r in sums if not _plain(r)}):
        if rel not in sums:
            problems.append(f"{rel}: not in {SUMS} (added after the release)")
        elif rel not in present:
            problems.append(f"{rel}: missing")
        elif sha256_file(path / rel) != sums[rel]:
            problems.append(f"{rel}: changed (sha256 {sums[rel][:12]} recorded, {sha256_file(path / rel)[:12]} now)")
    try:
        info = json.loads((path / MANIFEST).read_text())
    except ValueError as exc:
        return len(sums), problems + [f"{MANIFEST}: not JSON ({exc})"]
    shape = _manifest_shape(info)
    if shape:
        return len(sums), problems + [f"{MANIFEST}: {shape}"]
    for entry in info.get("entries", []):
        problems += _verify_entry(path, entry)
    for archive in info.get("archives", []):
        problems += _verify_archive(path, archive["path"], f"{info.get('name')}-{info.get('version')}")
    return len(sums), problems


def _plain(rel: Any) -> bool:
    """A relative path that stays inside the release folder."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        return False
    parts = rel.split("/")
    return not rel.startswith("/") and ".." not in parts and "" not in parts


def _manifest_shape(info: Any) -> str | None:
    """What is wrong with release.json's shape (None: entries and archives are as written)."""
    if not isinstance(info, dict):
        return "not an object"
    for key in ("entries", "archives"):
        items = info.get(key, [])
        if not isinstance(items, list):
            return f"{key} is not a list"
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not _plain(item.get("path")):
                return f"{key}[{i}] has no plain relative path"
            if key == "entries":
                files = item.get("manifest", {}).get("files", []) if isinstance(item.get("manifest"), dict) else None
                if not isinstance(files, list) or not all(isinstance(f, dict) and _plain(f.get("path"))
                                                          and isinstance(f.get("size"), int)
                                                          and isinstance(f.get("sha256"), str) for f in files):
                    return f"{key}[{i}].manifest has no list of files with plain paths, sizes and hashes"
    return None


def _verify_entry(root: Path, entry: dict) -> list[str]:
    folder = root / entry["path"]
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return [f"{entry['path']}/manifest.json: missing or not JSON"]
    if manifest != entry["manifest"]:
        return [f"{entry['path']}/manifest.json: differs from {MANIFEST}"]
    problems = []
    for f in manifest.get("files", []):  # the same as release.json's, whose shape was checked
        target = folder / f["path"]
        if not target.is_file():
            problems.append(f"{entry['path']}/{f['path']}: missing")
        elif target.stat().st_size != f["size"] or sha256_file(target) != f["sha256"]:
            problems.append(f"{entry['path']}/{f['path']}: does not match its manifest (size/sha256)")
    return problems


def _verify_archive(root: Path, rel: str, folder: str) -> list[str]:
    import tarfile
    import zlib

    problems = []
    try:
        with tarfile.open(root / rel, "r:gz") as tar:
            for info in tar:
                inner = info.name[len(folder) + 1:] if info.name.startswith(folder + "/") else None
                if not (info.isfile() or info.isdir()):
                    problems.append(f"{rel}: member {info.name} is a link or special file (an archive holds "
                                    "plain files and folders only)")
                elif (inner is None and info.name != folder) or (inner is not None and not _plain(inner.rstrip("/"))):
                    problems.append(f"{rel}: member {info.name} is outside {folder}/")
        members = tar_members(root / rel)
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
        return [f"{rel}: unreadable archive ({exc})"]
    for name, digest in members.items():
        inner = name[len(folder) + 1:] if name.startswith(folder + "/") else None
        if inner is None or not _plain(inner) or not (root / inner).is_file() or sha256_file(root / inner) != digest:
            problems.append(f"{rel}: member {name} does not match the release folder")
    return problems
