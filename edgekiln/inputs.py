"""Which files a build reads from its inputs: ONE policy for the version hash, the local runner and
the Docker runner (review finding 8).

* A folder input (calibration, validation, a SavedModel) is every regular file under it, walked
  without following links. A link inside it is refused (DataError): the Docker runner mounts the
  folder, where a link to elsewhere breaks, and a followed link loop multiplied images or hung.
  The folder itself may be reached through a link (its real path is used).
* An ONNX model with external data (``m.onnx`` + ``m.bin``) is the model file plus the files its
  tensors name: all of them are hashed, and mounted beside the model in a container.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePosixPath

from .errors import DataError, InvalidModel

# ONNX's StringStringEntryProto {key: "location", value: <path>} as protobuf writes it: field 1
# (tag 0x0a) "location" (length 8), field 2 (tag 0x12) length-prefixed value
_LOCATION = re.compile(rb"\x0a\x08location\x12([\x01-\x7f])")
CHUNK = 1 << 24


def tree_files(folder: Path, label: str) -> list[Path]:
    """The regular files under ``folder`` (sorted by relative path), never through a link."""
    folder = Path(folder)
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):  # followlinks=False
        dirnames.sort()
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise DataError(f"{label} {folder} holds a symbolic link {path.relative_to(folder)} -> "
                                f"{os.readlink(path)}: edgekiln reads input folders without following links "
                                "(a Docker step could not see its target, and a loop would repeat images)",
                                "copy the files in (cp -rL) or point at the folder the link names")
            if stat.S_ISREG(mode):
                found.append(path)
            elif not stat.S_ISDIR(mode):
                raise DataError(f"{label} {folder} holds {path.relative_to(folder)}, which is not a regular file",
                                "remove it from the folder")
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def onnx_external_files(model: Path) -> list[str]:
    """The external-data files an ONNX model names (relative to its folder), sorted; [] for any
    other file. A name that leaves the model's folder or does not exist is refused (InvalidModel)."""
    model = Path(model)
    if model.suffix.lower() != ".onnx" or not model.is_file():
        return []
    names: set[str] = set()
    tail = b""
    with open(model, "rb") as fh:
        while chunk := fh.read(CHUNK):
            data = tail + chunk
            for m in _LOCATION.finditer(data):
                start, size = m.end(), m.group(1)[0]
                if start + size <= len(data):
                    names.add(data[start:start + size].decode("utf-8", "replace"))
            tail = data[-160:]
    for name in names:
        rel = PurePosixPath(name.replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts or not (model.parent / rel).is_file() \
                or (model.parent / rel).is_symlink():
            raise InvalidModel(f"{model} names external data {name!r}, which is not a plain file beside it",
                               "keep the .onnx and its data files together in one folder (no links)")
    return sorted(names)
