"""What the studies in bench/ share: where results go, how a results file names the command that
regenerates it, the environment a study runs in, and an edgekiln build through the CLI.

A study is ``bench/<name>.py`` (a name that says what it measures); files starting with ``_`` are
helpers (``_inside_*``: run inside a converter environment by a study). Run one study the one way:

    invoke bench --only <name> [--args "..."]      (invoke bench --list: every study)

A study that must run in a converter environment says so with a module-level ``ENV = "<image>"``;
``invoke bench`` then runs it with that environment's Python (made from images/<image>'s lock).
After a study, ``invoke bench`` stamps every results file it wrote with that command (``stamp``).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
REGENERATE = "Regenerate: "
# the non-MobileNet classifier the int8 studies use (MobileNetV3: HardSwish/SE), in the rapidocr wheel
PPOCR_CLS = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
# the demo MobileNetV2 state dict -> ONNX (run with the torch env: converters/, weights, out path)
MNV2_EXPORT = ("import sys, torch; sys.path.insert(0, sys.argv[1]); from zoo.mobilenet_v2 import mobilenet_v2; "
               "m = mobilenet_v2(); m.load_state_dict(torch.load(sys.argv[2], map_location='cpu')); m.eval(); "
               "torch.onnx.export(m, torch.zeros(1, 3, 224, 224), sys.argv[3], dynamo=False, opset_version=17, "
               "input_names=['input'], output_names=['logits'])")


def studies() -> dict[str, Path]:
    """name -> script of every study (bench/*.py not starting with ``_``)."""
    return {p.stem: p for p in sorted(HERE.glob("*.py")) if not p.name.startswith("_")}


def study_env(script: Path) -> str | None:
    """The converter environment a study runs in (its module-level ``ENV``), read without importing it."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ENV" for t in node.targets):
            return ast.literal_eval(node.value)
    return None


def env_python(image: str) -> str:
    """The Python of the local environment of ``images/<image>`` (made from its lock when missing)."""
    sys.path.insert(0, str(ROOT))
    from edgekiln.runners.local import LocalRunner

    return LocalRunner().prepare(image).ref


def stamp(path: Path, command: str) -> None:
    """Name the command that regenerates a results file: a ``Regenerate: `cmd``` line under a
    Markdown file's title, a ``"command"`` key first in a JSON object."""
    if path.suffix == ".md":
        lines = [l for l in path.read_text().splitlines() if not l.startswith(REGENERATE)]
        at = 1 if lines and lines[0].startswith("# ") else 0
        lines[at:at] = ["", f"{REGENERATE}`{command}`"] if at else [f"{REGENERATE}`{command}`", ""]
        text = "\n".join(lines) + "\n"
        path.write_text(text.replace(f"`{command}`\n\n\n", f"`{command}`\n\n"))
    elif path.suffix == ".json":
        text = path.read_text()
        data = json.loads(text)
        if isinstance(data, dict):  # written back as it was written: its indent, its escaping
            second = text.splitlines()[1] if text.count("\n") > 1 else ""
            indent = len(second) - len(second.lstrip(" ")) or None
            data = {"command": command, **{k: v for k, v in data.items() if k != "command"}}
            path.write_text(json.dumps(data, indent=indent, default=float, ensure_ascii=text.isascii()) + "\n")


def fmt(v, spec: str = ".4f") -> str:
    """A table cell: "-" for a missing number."""
    return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def newest_job(out: Path) -> Path:
    """The job folder of the newest build under ``out`` (builds keep theirs with --keep-job)."""
    return max((Path(out) / ".edgekiln" / "jobs").iterdir(), key=lambda p: p.stat().st_mtime)


def cli_build(target: str, precision: str, model_args, photos, out: Path, extra=(),
              ok=(0, 10)) -> tuple[Path, float, int]:
    """One ``edgekiln build`` through the CLI as a user runs it (local runner, kept job; exit 10 =
    a gate refused it, still measured). -> (job folder, wall seconds, exit code)."""
    cmd = [sys.executable, "-m", "edgekiln", "build", "--target", target, "--precision", precision, "--model",
           *map(str, model_args), "--calib", str(photos[0]), "--val", str(photos[1]), "--out", str(out),
           "--runner", "local", "--keep-job", *map(str, extra)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode not in ok:
        raise SystemExit(f"build failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return newest_job(out), round(time.perf_counter() - t, 1), proc.returncode


_FLAT: dict[str, str] = {}


def flat_helpers(dest: Path | None = None) -> str:
    """A folder holding every converter helper flat, as a job holds them (ekit/, ekit_onnx.py, …;
    edgekiln.helpers): what a study puts on sys.path/PYTHONPATH to import them. Never converters/
    itself: its runtime folders (torch/, onnx/) would shadow those packages."""
    import atexit
    import shutil
    import tempfile

    sys.path.insert(0, str(ROOT))
    from edgekiln.helpers import copy_helpers

    if dest is None:
        if "tmp" not in _FLAT:
            _FLAT["tmp"] = tempfile.mkdtemp(prefix="edgekiln-helpers-")
            atexit.register(shutil.rmtree, _FLAT["tmp"], True)
            copy_helpers(ROOT / "converters", Path(_FLAT["tmp"]))
        return _FLAT["tmp"]
    copy_helpers(ROOT / "converters", Path(dest))
    return str(dest)
