"""Where the data folders (targets/, converters/, images/) are.

In a checkout (or an editable install) they sit at the top of the repository; in a wheel they are
packaged as ``edgekiln/_data/<name>``. ``EDGEKILN_HOME`` points at another tree (one with extra
targets of a user's own).
"""

from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_root() -> Path:
    env = os.environ.get("EDGEKILN_HOME")
    if env:
        return Path(env).resolve()
    packaged = _PKG / "_data"
    if (packaged / "targets").is_dir():
        return packaged
    return _PKG.parent


def data_dir(name: str) -> Path:
    """``targets``, ``converters`` or ``images``."""
    return data_root() / name


def cache_dir() -> Path:
    """Environments and images' build contexts are cached here (``EDGEKILN_CACHE`` overrides)."""
    env = os.environ.get("EDGEKILN_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgekiln"
