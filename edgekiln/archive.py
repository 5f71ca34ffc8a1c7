"""Byte-for-byte reproducible ``.tar.gz`` archives and ``SHA256SUMS`` files.

The same files give the same archive bytes on every run:

* entries sorted by path, every parent folder listed before its files;
* every mtime is the same fixed time (``SOURCE_DATE_EPOCH`` or the release date);
* owner uid/gid 0 with no user or group names;
* permissions normalised: folders and executable files 0755, other files 0644;
* GNU tar format (long names without PAX headers that would carry times);
* a gzip header without a file name and with mtime 0, compression level 9.

(zlib's output is stable for a given zlib version and level; a different zlib may compress
differently — the tar stream inside is the same.)
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import Iterable

from .store import CHUNK, sha256_file


def normalized_mode(path: Path) -> int:
    return 0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644


def _info(name: str, mtime: int, mode: int, kind: bytes, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar_gz(dest: Path, members: Iterable[tuple[str, Path]], mtime: int) -> Path:
    """Write ``dest`` from (path in the archive, file on disk) pairs; atomic (temp + rename)."""
    files = dict(members)
    if len(files) == 0:
        raise ValueError(f"{dest.name}: nothing to archive")
    folders = {str(p) for name in files for p in PurePosixPath(name).parents if str(p) != "."}
    tmp = dest.with_name(f".{dest.name}.tmp")
    with open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(folders | set(files)):
            if name in folders:
                tar.addfile(_info(name + "/", mtime, 0o755, tarfile.DIRTYPE))
                continue
            src = files[name]
            with open(src, "rb") as fh:
                tar.addfile(_info(name, mtime, normalized_mode(src), tarfile.REGTYPE,
                                  os.fstat(fh.fileno()).st_size), fh)
    os.replace(tmp, dest)
    return dest


def tar_members(path: Path) -> dict[str, str]:
    """{member path: sha256} of the regular files in an archive (for verify)."""
    found = {}
    with tarfile.open(path, "r:gz") as tar:
        for info in tar:
            if info.isfile():
                digest = hashlib.sha256()
                fh = tar.extractfile(info)
                while chunk := fh.read(CHUNK):
                    digest.update(chunk)
                found[info.name] = digest.hexdigest()
    return found


def write_sums(root: Path, names: Iterable[str], dest_name: str = "SHA256SUMS") -> Path:
    """``<sha256>  <path>`` lines sorted by path: ``sha256sum -c SHA256SUMS`` checks them."""
    lines = [f"{sha256_file(root / n)}  {n}\n" for n in sorted(set(names))]
    dest = root / dest_name
    dest.write_text("".join(lines))
    return dest


def read_sums(path: Path) -> dict[str, str]:
    """{path: sha256} from a SHA256SUMS file (raises ValueError on a malformed line)."""
    sums = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise ValueError(f"{path.name}:{number}: not '<sha256>  <path>'")
        sums[name] = digest
    return sums
