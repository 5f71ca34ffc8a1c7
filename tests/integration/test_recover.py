"""int8 accuracy recovery (--recover, converters/ekit_recover.py) for real, through the CLI: the
real MobileNetV2 on the 20 ImageNet photos. Plain ORT int8 agrees with fp32 on 19/20 mirrored
photos, so a gate of 20/20 (min_top1_agreement=1.0) refuses it; --recover keeps the most
sensitive layers float until it passes. With a budget of one layer it cannot, and is refused
with the best result named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli, run_json

pytestmark = pytest.mark.integration

onnx = pytest.importorskip("onnx")

MOBILENET = ["--arch", "mobilenet_v2", "--input-shape", "1,3,224,224",
             "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]
TIGHT = ["--threshold", "int8.min_top1_agreement=1.0"]


def build(weights, photos, out, *extra, check=None):
    calib, val = photos
    args = ["build", "--target", "onnx", "--precision", "int8", "--model", weights, *MOBILENET,
            "--calib", calib, "--val", val, "--out", out, "--runner", "local", *TIGHT, *extra]
    return run_json(*args) if check is None else run_cli(*args, check=check)


def test_recover_passes_a_gate_plain_int8_misses(weights, photos, tmp_path):
    res = build(weights, photos, tmp_path, "--recover")
    art = res["artifacts"][0]
    assert art["status"] == "built" and art["metrics"]["top1_agreement"] == 1.0
    rec = art["recovery"]
    assert rec["attempted"] and rec["passed"]
    assert rec["before"]["misses"] == ["min_top1_agreement 1: got 0.95"]  # plain int8: 19/20
    n = len(rec["float_layers"])
    assert 1 <= n <= 10 and art["summary"] == f"int8 ({n} layer{'s' if n > 1 else ''} float)"
    assert 290e6 < rec["total_macs"] < 310e6  # MobileNetV2 at 224: 300.8 M multiply-accumulates
    assert 0.5 < rec["int8_mac_share"] < 1.0
    assert all(r["sensitivity"] > 0 and r["macs"] > 0 for r in rec["float_layers"])
    manifest = json.loads(Path(art["manifest"]).read_text())
    assert manifest["recovery"]["float_layers"] == rec["float_layers"]
    assert any("kept float by --recover" in note for note in manifest["notes"])
    # the layers named float ARE float in the artifact: their weights are plain initializers,
    # every other Conv reads a DequantizeLinear
    model = onnx.load(str(Path(art["path"]) / "model.onnx"))
    producer = {o: node.op_type for node in model.graph.node for o in node.output}
    floats = {r["layer"] for r in rec["float_layers"]}
    for node in model.graph.node:
        if node.op_type == "Conv":
            assert (producer.get(node.input[1]) == "DequantizeLinear") != (node.name in floats), node.name


def test_recover_within_budget_or_refused_with_the_best_named(weights, photos, tmp_path):
    proc = build(weights, photos, tmp_path, "--recover", "--option", "recover_max_float_layers=1", check=10)
    assert "min top1 agreement 1 missed: got 0.95" in proc.stderr
    assert "--recover did not reach the thresholds in 1 tries" in proc.stderr
    assert "best: 0 layer(s) float, no try did better than plain int8" in proc.stderr  # a tie keeps it all int8
    assert not any(tmp_path.glob("*/*/onnx/int8/model.onnx"))


def test_recover_flag_needs_a_target_that_declares_it(weights, photos, tmp_path):
    calib, val = photos
    proc = run_cli("build", "--target", "rpi", "--model", weights, *MOBILENET, "--recover",
                   "--out", tmp_path, "--dry-run", check=2)
    assert "target rpi has no option(s) recover" in proc.stderr
    assert "recover" in proc.stderr and "Traceback" not in proc.stderr
