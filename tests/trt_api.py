"""The Python API of a TensorRT version, read offline from its bindings wheel.

``tensorrt-cu12-bindings`` (10.x, 11.x) and ``tensorrt-bindings`` (8.6.1) are real binary wheels on the
package index. Their ``tensorrt.so`` cannot be imported without libnvinfer, but every name pybind11
registers (classes, methods, properties, enum members) is a NUL-terminated string in it, and so are the
docstrings of the enum members. The wheels are downloaded once (``pip download --no-deps
--only-binary=:all:``) into ``~/.cache/edgekiln/trt-wheels`` (``EDGEKILN_TRT_WHEELS`` moves it).

``lint(script, api)`` lists every TensorRT name a rendered script uses that the version lacks:

* ``trt.A.B`` chains: each name must be registered;
* attributes read on the script's TensorRT objects (builder, config, network, parser, profile, engine,
  context, runtime, logger) must be registered;
* ``BuilderFlag.FP16/INT8/BF16/FP8`` are also enum members of DataType, so their name alone proves
  nothing: the flag's own docstring ("Enable FP16 layer selection") must be there too (it is in 8.6
  and 10.x, gone in 11.x together with the flags).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zipfile
from functools import lru_cache
from pathlib import Path

# version -> (requirement, python tag of the wheel, platform tag)
WHEELS = {
    "8.6.1": ("tensorrt-bindings==8.6.1", "3.10", "manylinux_2_17_x86_64"),
    "10.3.0": ("tensorrt-cu12-bindings==10.3.0", "3.10", "manylinux_2_17_x86_64"),
    "10.7.0": ("tensorrt-cu12-bindings==10.7.0", "3.12", "manylinux_2_17_x86_64"),
    "11.4.0.106": ("tensorrt-cu12-bindings==11.4.0.106", "3.12", "manylinux_2_28_x86_64"),
}
TRT_OBJECTS = {"builder", "config", "network", "parser", "profile", "engine", "context", "runtime", "logger"}
FLAG_DOCS = {"FP16": "Enable FP16 layer selection", "INT8": "Enable Int8 layer selection",
             "BF16": "Enable BF16 layer selection", "FP8": "Enable FP8 layer selection"}


def cache() -> Path:
    return Path(os.environ.get("EDGEKILN_TRT_WHEELS") or Path.home() / ".cache" / "edgekiln" / "trt-wheels")


def wheel(version: str) -> Path:
    req, py, plat = WHEELS[version]
    name = req.split("==")[0].replace("-", "_")
    found = sorted(cache().glob(f"{name}-{version}-*.whl"))
    if found:
        return found[0]
    cache().mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           "--disable-pip-version-check", "-q", "--python-version", py, "--platform", plat,
                           "-d", str(cache()), req], capture_output=True, text=True)
    found = sorted(cache().glob(f"{name}-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"could not download {req}: {proc.stderr.strip()[-300:]}")
    return found[0]


@lru_cache(maxsize=None)
def strings(version: str) -> frozenset[str]:
    """Every NUL-terminated printable string in the wheel's tensorrt*.so."""
    with zipfile.ZipFile(wheel(version)) as zf:
        so = next(n for n in zf.namelist() if re.search(r"tensorrt[^/]*\.so$", n))
        data = zf.read(so)
    return frozenset(s.decode() for s in re.findall(rb"[\x20-\x7e]{2,}(?=\x00)", data))


@lru_cache(maxsize=None)
def _blob(version: str) -> str:
    return "\0" + "\0".join(sorted(strings(version))) + "\0"


def has(version: str, name: str) -> bool:
    """Is ``name`` a registered string, or the tail of one? (the linker stores "INT8" as the tail of
    "UINT8\\0" and "Logger" inside "ILogger\\0": tail merging)"""
    return (name + "\0") in _blob(version)


def _chain(node: ast.Attribute) -> tuple[str | None, list[str]]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return (node.id if isinstance(node, ast.Name) else None), parts[::-1]


def used(script: str) -> set[str]:
    """The TensorRT names a script uses, qualified as written (``trt.BuilderFlag.FP16``, ``config.DLA_core``)."""
    out = set()
    for node in ast.walk(ast.parse(script)):
        if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "_parent", None), ast.Attribute):
            root, parts = _chain(node)
            if root == "trt" or root in TRT_OBJECTS:
                out.add(".".join([root] + parts))
    # keep only the longest chains (a.b.c covers a.b)
    return {u for u in out if not any(o != u and o.startswith(u + ".") for o in out)}


def lint(script: str, version: str) -> list[str]:
    docs = strings(version)
    missing = []
    for use in sorted(used(script)):
        root, *parts = use.split(".")
        for part in parts:
            if part == "__version__":
                continue
            if not has(version, part):
                missing.append(f"{use} ({part})")
                break
        else:
            if len(parts) >= 2 and parts[-2] == "BuilderFlag" and parts[-1] in FLAG_DOCS \
                    and FLAG_DOCS[parts[-1]] not in docs:
                missing.append(f"{use} (no BuilderFlag.{parts[-1]} in TensorRT {version})")
    return missing
