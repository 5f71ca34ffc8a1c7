"""The task-aware int8 recipes (issue 19) on the real YOLOv8n through the CLI: a detector's head convs
(the last layer of each head branch, ekit_onnx.head_convs) stay float by default, the decode tail
too, and the result says so (which compute nodes are float, the int8 MAC fraction, read off the
artifact); --recover drops quantization regions and never keeps a try worse than plain int8."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.unit.test_ekit_task import CONVERTERS

pytestmark = pytest.mark.integration

onnx = pytest.importorskip("onnx")
sys.path.insert(0, str(CONVERTERS))

HEAD_CONVS = sorted(f"/model.22/cv{k}.{i}/cv{k}.{i}.2/Conv" for k in (2, 3) for i in range(3))


def converted(out: Path, target: str) -> dict:
    return json.loads(next(out.glob(f".edgekiln/jobs/*/work/results/*-{target}-int8-convert.json")).read_text())


def test_yolov8n_onnx_int8_keeps_head_convs_float_and_recovery_is_never_worse(yolo, tmp_path):
    from edgekiln.targets import all_targets
    from ekit import recover as R

    model, (calib, val) = yolo
    proc = run_cli("build", "--target", "onnx", "--precision", "int8", "--model", model, "--calib", calib,
                   "--val", val, "--out", tmp_path, "--runner", "local", "--keep-job", "--recover",
                   env={"EDGEKILN_QEMU_X86_64": ""})  # validated natively: the recipe is the same
    assert proc.returncode in (0, 10), proc.stderr[-2000:]
    res = converted(tmp_path, "onnx")
    q = res["quantization"]
    assert q["task"] == "detect" and sorted(q["head_convs_kept_float"]) == HEAD_CONVS
    # read off the artifact: the six head convs and the DFL conv (decode, part of the tail) are float,
    # every other Conv int8; ~1 % of the MACs
    assert set(q["float_compute_nodes"]) >= set(HEAD_CONVS) | {"/model.22/dfl/conv/Conv"}
    assert 0.97 < q["int8_mac_fraction"] < 0.995
    assert any(n.startswith("6 detection-head conv(s) kept float") for n in res["notes"])
    job = next(tmp_path.glob(".edgekiln/jobs/*"))
    art = onnx.load(str(job / "work" / "onnx" / "int8" / "model.onnx"))
    producer = {o: node.op_type for node in art.graph.node for o in node.output}
    for node in art.graph.node:
        if node.op_type == "Conv":
            assert (producer.get(node.input[1]) == "DequantizeLinear") != (node.name in q["float_compute_nodes"])
    rec = q["recovery"]
    if rec["attempted"]:  # never a try worse than plain int8 by the gate's own score
        limits = dict(all_targets()["onnx"].thresholds["int8"])
        before, after = rec["before"]["metrics"], rec["after"].get("metrics") or rec["before"]["metrics"]
        assert R.score(after, limits) >= R.score(before, limits)
        assert rec["unit"] == "region" and rec["seconds"] <= 3 * rec["plain_int8_seconds"] + 30
        dropped = {r["layer"] for r in rec["float_layers"]}
        quantized = {n.input[0] for n in art.graph.node if n.op_type == "QuantizeLinear"}
        assert not dropped & quantized  # a dropped region has no Q/DQ left in the artifact
        if proc.returncode == 10:
            assert "--recover did not reach the thresholds" in proc.stderr and "best: " in proc.stderr
