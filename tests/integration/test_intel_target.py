"""The Intel target through the CLI: real MobileNetV2 weights → OpenVINO IR fp32/fp16/int8 with
NNCF on real photos, validated on held-out (mirrored) photos; the device recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import MOBILENET, run_json

pytestmark = pytest.mark.integration



def test_intel_fp32_fp16_int8(weights, photos, tmp_path):
    calib, val = photos
    result = run_json("build", "--target", "intel", "--model", weights, *MOBILENET, "--name", "mnv2",
                      "--precision", "fp32,fp16,int8", "--calib", calib, "--val", val,
                      "--option", "device=NPU", "--max-drop", "5", "--out", tmp_path, "--runner", "local")
    arts = {a["precision"]: a for a in result["artifacts"]}
    assert set(arts) == {"fp32", "fp16", "int8"}
    assert arts["fp32"]["metrics"]["top1_agreement"] == 1.0 and arts["fp32"]["metrics"]["cosine"] > 0.9999
    assert arts["fp16"]["metrics"]["top1_agreement"] >= 0.95
    assert arts["int8"]["metrics"]["top1_agreement"] >= 0.85
    assert arts["int8"]["metrics"]["accuracy"] >= arts["fp32"]["metrics"]["accuracy"] - 0.05
    assert arts["fp16"]["size_bytes"] < 0.55 * arts["fp32"]["size_bytes"]
    assert arts["int8"]["size_bytes"] < 0.32 * arts["fp32"]["size_bytes"]
    for precision, art in arts.items():
        folder = Path(art["path"])
        assert (folder / "model.xml").is_file() and (folder / "model.bin").is_file()
        manifest = json.loads((folder / "manifest.json").read_text())
        convert = next(s for s in manifest["steps"] if s["kind"] == "convert")
        assert json.loads((folder / convert["params"]).read_text())["options"]["device"] == "NPU"
        report = json.loads((folder / "report.json").read_text())
        assert report["inference_precision"]  # the numbers say which precision they were taken at
        if precision != "int8":
            assert "f32" in json.dumps(report["inference_precision"]).lower()
        # --max-drop is int8.max_accuracy_drop: the int8 gate (and NNCF's accuracy control aims at it)
        assert manifest["validation"]["thresholds"].get("max_accuracy_drop") == (5.0 if precision == "int8" else None)
