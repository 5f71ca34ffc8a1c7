"""The converters' plain-Python helpers, and which of them a step needs.

Beside its templates, converters/ holds helper modules: the shared package ``ekit/`` (steps and
I/O, images, data, comparison, task metrics, recovery), each runtime's helpers in that runtime's
folder (``onnx/ekit_onnx.py``, ``openvino/ekit_ov.py``, …) and ``zoo/`` (built-in architectures).
A job (and so a published artifact's ``build/``) gets them FLAT beside the scripts — ``ekit/``,
``ekit_onnx.py``, … — so ``import ekit_onnx`` works with the job folder on PYTHONPATH (a folder
named like a runtime there would shadow the runtime's own package), and only the ones its steps
import: the rendered scripts' imports are followed through the helpers (every import
statement, also those inside functions), plus the files the step's params name (``--arch
zoo/mobilenet_v2.py:…``) and the data files beside a runtime's helper (``trt/*.json``).

Nothing here names a runtime: a new runtime's helper in its own folder is found by the same rules.
"""

from __future__ import annotations

import re
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

SKIP = ("README.md",)


def index(root: Path) -> dict[str, Path]:
    """Every top-level importable helper: name -> its ``.py`` file, or its package folder."""
    root = Path(root)
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts:
            continue
        if path.name == "__init__.py":
            if len(rel.parts) == 2:  # converters/<package>/__init__.py
                found[rel.parts[0]] = path.parent
            continue
        if len(rel.parts) > 1 and (root / rel.parts[0] / "__init__.py").is_file():
            continue  # a module of a package
        found[path.stem] = path
    return found


@lru_cache(maxsize=256)
def _imported_file(path: str, mtime_ns: int, package: str | None) -> frozenset[str]:
    return frozenset(imported(Path(path).read_text(), package))


_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#;]+)|import[ \t]+([^\n#;]+))",
                     re.M)


def imported(text: str, package: str | None = None) -> set[str]:
    """The dotted names a Python source imports (``import a.b`` -> a.b; ``from a import b`` -> a,
    a.b), every import statement at the start of a line, also inside functions (a line in a string
    that looks like one counts too: a helper too many is copied, never one too few); relative
    imports are resolved against ``package``."""
    names: set[str] = set()
    for m in _IMPORT.finditer(text):
        if m.group(3):
            names |= {part.split()[0] for part in m.group(3).split(",") if part.strip()}
            continue
        base, what = m.group(1), m.group(2).strip("() \n")
        level = len(base) - len(base.lstrip("."))
        base = base[level:]
        if level:
            if not package:
                continue
            parent = package.split(".")[:len(package.split(".")) - level + 1]
            base = ".".join(parent + ([base] if base else []))
        if base:
            names.add(base)
            names |= {f"{base}.{w.split()[0]}" for w in what.replace("\n", " ").split(",")
                      if w.strip() and w.split()[0] != "*"}
    return names


def _place(root: Path, path: Path, top: Path) -> str:
    """Where a helper file goes in the job: a package keeps its folder, a runtime's module and
    its data files go flat."""
    if top.is_dir():
        return path.relative_to(top.parent).as_posix()
    return path.name


def _referenced(root: Path, params: Iterable[Any]) -> list[Path]:
    """Helper files a step's params name by path (``zoo/mobilenet_v2.py:mobilenet_v2``)."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, str) and "/" in value and len(value) < 300:
            path = root / value.split(":")[0]
            try:
                if path.is_file() and path.resolve().is_relative_to(root.resolve()) and path.suffix != ".jinja":
                    found.append(path)
            except (OSError, ValueError):
                pass

    for p in params:
        walk(p)
    return found


def needed(root: Path, scripts: Iterable[str], params: Iterable[Any] = ()) -> dict[str, Path]:
    """The helper files the scripts (rendered step sources) import, transitively, and those their
    params name: {place in the job (posix): source file}."""
    root = Path(root)
    helpers = index(root)
    tops = {path: top for top in helpers.values() for path in ([top] if top.is_file() else top.rglob("*.py"))}
    out: dict[str, Path] = {}
    todo: list[tuple[str | Path, str | None]] = [(text, None) for text in scripts]

    def add(path: Path, top: Path) -> None:
        place = _place(root, path, top)
        if place in out:
            return
        out[place] = path
        if path.suffix == ".py":
            package = None
            if top.is_dir():
                rel = path.relative_to(top.parent).with_suffix("").parts
                package = ".".join(rel[:-1] if path.name != "__init__.py" else rel[:-1])
            todo.append((path, package))
        if top.is_file() and path == top:  # a runtime's module brings the data files beside it
            for data in sorted(top.parent.iterdir()):
                if data.is_file() and data.suffix not in (".py", ".jinja", ".pyc") and data.name not in SKIP:
                    out.setdefault(data.name, data)

    for path in _referenced(root, params):
        top = tops.get(path) or (helpers.get(path.relative_to(root).parts[0]) if len(path.relative_to(root).parts) > 1 else None)
        if top is not None and top.is_dir():
            add(top / "__init__.py", top)
        add(path, top if top is not None else path)
    while todo:
        source, package = todo.pop()
        names = (_imported_file(str(source), source.stat().st_mtime_ns, package) if isinstance(source, Path)
                 else imported(source, package))
        for name in sorted(names):
            parts = name.split(".")
            top = helpers.get(parts[0])
            if top is None:
                continue
            if top.is_file():
                add(top, top)
                continue
            add(top / "__init__.py", top)
            sub = top.joinpath(*parts[1:]) if len(parts) > 1 else None
            if sub is not None and sub.with_suffix(".py").is_file():
                add(sub.with_suffix(".py"), top)
            elif sub is not None and (sub / "__init__.py").is_file():
                add(sub / "__init__.py", top)
    return out


def copy_helpers(root: Path, dest: Path, scripts: Iterable[str] | None = None, params: Iterable[Any] = ()) -> list[str]:
    """Copy the helpers the scripts need (``scripts`` None: every helper) into ``dest``, byte for
    byte; -> their places (sorted)."""
    root = Path(root)
    if scripts is None:
        files: dict[str, Path] = {}
        for top in index(root).values():
            for path in ([top] if top.is_file() else sorted(top.rglob("*"))):
                if path.is_file() and "__pycache__" not in path.parts and path.name not in SKIP:
                    files[_place(root, path, top)] = path
            if top.is_file():
                files.update({d.name: d for d in top.parent.iterdir()
                              if d.is_file() and d.suffix not in (".py", ".jinja", ".pyc") and d.name not in SKIP})
    else:
        files = needed(root, scripts, params)
    for place, path in sorted(files.items()):
        target = Path(dest) / place
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return sorted(files)


def search_path(root: Path) -> list[str]:
    """Folders to put on sys.path to import every helper as a job does (tests, bench): converters/
    itself (the packages) and each folder holding a runtime's helper."""
    root = Path(root)
    return [str(root)] + sorted({str(p.parent) for p in index(root).values() if p.is_file() and p.parent != root})
