"""The executorch (XNNPACK .pte) and rknn (Rockchip NPU, validated in rknn-toolkit2's x86
simulator) targets, for real: the demo MobileNetV2 (a state dict + --arch: the PyTorch route) and
the YOLOv8n detector (nudenet's 320n.onnx: the ONNX route) on real photos, each through the CLI,
validated with the runtime's own inference against the source model; bad input; the gates."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MOBILENET, run_cli, run_json

pytestmark = pytest.mark.integration



def build(target, model, photos, out, precision, *extra, check=0):
    calib, val = photos
    args = ["build", "--target", target, "--model", model, "--precision", precision, "--calib", calib,
            "--val", val, "--out", out, "--runner", "local", "--keep-job", *extra]
    return run_json(*args) if check == 0 else run_cli(*args, check=check)


def manifests(result):
    return {a["precision"]: json.loads(Path(a["manifest"]).read_text()) for a in result["artifacts"]}


# --------------------------------------------------------------------------- rknn

@pytest.fixture(scope="module")
def rknn_mobilenet(weights, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("rknn-mnv2")
    return out, build("rknn", weights, photos, out, "int8,fp16", *MOBILENET, "--option", "soc=rk3566")


def test_rknn_mobilenet_int8_and_fp16_in_the_simulator(rknn_mobilenet):
    _, result = rknn_mobilenet
    man = manifests(result)
    assert man["fp16"]["validation"]["metrics"]["cosine"] > 0.999
    assert man["fp16"]["validation"]["metrics"]["top1_agreement"] >= 0.95
    assert man["int8"]["validation"]["metrics"]["top1_agreement"] >= 0.8
    assert man["int8"]["validation"]["passed"] and man["fp16"]["validation"]["passed"]
    for m in man.values():
        report = m["validation"]
        assert "simulator" in report["runtime"]["name"] and report["runtime"]["soc"] == "rk3566"
        assert "NOT an NPU figure" in report["latency_ms"]["where"]
        assert any("not on the NPU" in n for n in m["notes"])
        assert "x86 simulator instead" in m["not_executed"][0]
        assert m["feed"]["dtype"] == "uint8" and m["feed"]["layout"] == "nhwc"
        assert m["feed"]["shape"] == [1, 224, 224, 3]
        assert "inside the model" in m["feed"]["preprocessing"]


def test_rknn_yolov8n_int8_has_detection_numbers(yolo, tmp_path_factory):
    model, photos = yolo
    out = tmp_path_factory.mktemp("rknn-yolo")
    proc = build("rknn", model, photos, out, "int8", check=None)
    assert proc.returncode in (0, 10), proc.stderr[-3000:]
    job = sorted((out / ".edgekiln" / "jobs").iterdir())[-1]
    report = json.loads((job / "work" / "rknn" / "int8" / "report.json").read_text())
    m = report["metrics"]
    assert (m["task"], m["head"]) == ("detect", "yolov8") and m["det_boxes_source"] >= 5
    assert m["cosine"] > 0.99
    # the decode tail and the six head convs in fp16 (keep_float=auto; bench/results/int8_recipes_edge.md)
    assert m["det_map50"] is not None and m["det_band_f1"] is not None
    conv = json.loads(next((job / "work" / "results").glob("*-rknn-int8-convert.json")).read_text())
    assert len(conv["quantization"]["float_head"]) == 6 and conv["quantization"]["int8_mac_share"] >= 0.85
    if proc.returncode == 10:  # refused by its gates: the message names the metric
        assert "det" in proc.stderr


def test_rknn_bad_soc_is_one_line(yolo, tmp_path):
    model, photos = yolo
    proc = build("rknn", model, photos, tmp_path / "o", "fp16", "--option", "soc=rk9999", check=2)
    assert "soc='rk9999'" in proc.stderr and "rk3588" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "o").glob("*/*/rknn"))  # nothing published


def test_rknn_gate_refuses_useless_simulator_outputs(rknn_mobilenet):
    """The validate step computes the metrics the gates read: outputs made useless (zeroed and
    shuffled) fail min_cosine and min_top1_agreement."""
    from edgekiln.plan import check_thresholds
    from edgekiln.runners.local import LocalRunner
    from edgekiln.targets import all_targets

    out, _ = rknn_mobilenet
    job = sorted((out / ".edgekiln" / "jobs").iterdir())[-1]
    sim = job / "work" / "rknn" / "fp16" / "sim_outputs.npz"
    with np.load(sim) as z:
        data = dict(z)
    data["y0"] = np.roll(data["y0"], 7, axis=1) * 0.1
    np.savez(sim, **data)
    script = next((job / "steps").glob("*-rknn-fp16-validate.py"))
    env = dict(os.environ, PYTHONPATH=".", EKIT_PATHS=json.dumps({"model": None, "calib": None, "val": None}))
    proc = subprocess.run([LocalRunner().prepare("rknn").ref, f"steps/{script.name}"], cwd=job, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((job / "work" / "rknn" / "fp16" / "report.json").read_text())["metrics"]
    missed = " ".join(check_thresholds(metrics, all_targets()["rknn"].thresholds_for("fp16")))
    assert "min cosine" in missed and "min top1 agreement" in missed


# --------------------------------------------------------------------------- executorch

def test_executorch_mobilenet_int8_from_the_pytorch_module(weights, photos, tmp_path):
    result = build("executorch", weights, photos, tmp_path / "o", "int8", *MOBILENET)
    man = manifests(result)["int8"]
    m = man["validation"]["metrics"]
    assert man["validation"]["passed"] and m["top1_agreement"] >= 0.8 and m["cosine"] > 0.9
    assert man["validation"]["runtime"]["name"] == "executorch"
    assert man["feed"]["dtype"] == "float32" and man["feed"]["shape"] == [1, 3, 224, 224]
    assert (Path(result["artifacts"][0]["manifest"]).parent / "model.pte").stat().st_size < 5e6  # int8


def test_executorch_yolov8n_fp32_through_onnx2torch(yolo, tmp_path):
    model, photos = yolo
    result = build("executorch", model, photos, tmp_path / "o", "fp32")
    man = manifests(result)["fp32"]
    m = man["validation"]["metrics"]
    assert (m["task"], m["head"]) == ("detect", "yolov8")
    assert m["det_f1"] == 1.0 and m["cosine"] > 0.9999 and man["validation"]["passed"]


def test_executorch_refuses_a_precision_it_does_not_build(weights, photos, tmp_path):
    proc = build("executorch", weights, photos, tmp_path / "o", "fp16", *MOBILENET, check=5)
    assert "does not offer precision 'fp16'" in proc.stderr and "Traceback" not in proc.stderr
