"""What a step leaves in ``work/`` is untrusted: the host reads it only as plain files.

A container step may write only the job's ``work/`` folder (edgekiln.runners.docker). Code that
runs in a step (a model file that is a program, a pickled module, an ``--arch`` file) could plant
a symbolic link there, e.g. ``work/onnx/fp32/model.onnx -> ~/.ssh/id_ed25519``, so that the host
publishes a file of its own as the "model". So after every container step ``check_outputs`` walks
``work/`` without following links and refuses links, devices, fifos and sockets, and the host
copies outputs with ``copy_file``, which never follows a link either.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from .errors import StepFailed


def check_outputs(work: Path, step: str) -> None:
    """Raise StepFailed (one line) when ``work`` holds anything but folders and regular files."""
    work = Path(work)
    if work.is_symlink():
        raise StepFailed(f"step {step}: {work} was replaced by a symbolic link: refused",
                         "a step may only write plain files; nothing was published")
    for dirpath, dirnames, filenames in os.walk(work):  # followlinks=False: a link is listed, not entered
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                what = "a symbolic link"
            elif stat.S_ISDIR(mode) or stat.S_ISREG(mode):
                continue
            else:
                what = "a special file (device, fifo or socket)"
            raise StepFailed(f"step {step} left {what} in its outputs: {path.relative_to(work.parent)} "
                             "— refused (a step may only write plain files and folders)",
                             "nothing was published; if the model file runs code, do not trust it")


def copy_file(src: Path, dst: Path) -> None:
    """Copy a regular file without following a link at ``src`` (ELOOP: refused as StepFailed)."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        if Path(src).is_symlink():
            raise StepFailed(f"{src} is a symbolic link: refused", "a step may only write plain files") from None
        raise
    with os.fdopen(fd, "rb") as fin:
        if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
            raise StepFailed(f"{src} is not a regular file: refused", "a step may only write plain files")
        with open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    shutil.copystat(src, dst, follow_symlinks=False)
