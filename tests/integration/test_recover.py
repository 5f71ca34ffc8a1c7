"""int8 accuracy recovery (--recover, converters/ekit_recover.py) for real, through the CLI: the
real MobileNetV2 on the 20 ImageNet photos. Plain ORT int8 (the x86-64-v3 recipe: 7-bit weights,
the same outputs on AVX2 and VNNI kernels) reaches a minimum cosine of 0.9535 on the mirrored photos,
so a gate of 0.96 refuses it; --recover keeps the most sensitive layers float until it passes
(4 layers: 0.962; 1 layer: 0.958). With a budget of one layer it cannot, and is refused
with the best result named. The jetson target (TensorRT Q/DQ, modelopt nodes_to_exclude, measured
in the ONNX Runtime proxy) likewise, down to the device bundle; TFLite: test_rpi_templates.py."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import MOBILENET, run_cli, run_json
from tests.unit.test_ekit_task import CONVERTERS

sys.path.insert(0, str(CONVERTERS))

pytestmark = pytest.mark.integration

onnx = pytest.importorskip("onnx")

TIGHT = ["--threshold", "int8.min_cosine=0.96"]
LAYERS = ["--option", "recover_unit=layer"]  # the whole-layer search (the default unit is the region)


def build(weights, photos, out, *extra, check=None):
    calib, val = photos
    args = ["build", "--target", "onnx", "--precision", "int8", "--model", weights, *MOBILENET,
            "--calib", calib, "--val", val, "--out", out, "--runner", "local", *TIGHT, *extra]
    return run_json(*args) if check is None else run_cli(*args, check=check)


def test_recover_passes_a_gate_plain_int8_misses(weights, photos, tmp_path):
    res = build(weights, photos, tmp_path, "--recover", *LAYERS)
    art = res["artifacts"][0]
    assert art["status"] == "built" and art["metrics"]["cosine"] >= 0.96
    rec = art["recovery"]
    assert rec["attempted"] and rec["passed"]
    assert rec["before"]["misses"] == ["min_cosine 0.96: got 0.9535"]  # plain int8
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
    proc = build(weights, photos, tmp_path, "--recover", *LAYERS, "--option", "recover_max_float_layers=1", check=10)
    assert "min cosine 0.96 missed: got 0.958" in proc.stderr  # the best try: 1 layer float
    assert "--recover did not reach the thresholds in 1 tries" in proc.stderr
    assert "best: 1 layer(s) float" in proc.stderr
    assert not any(tmp_path.glob("*/*/onnx/int8/model.onnx"))


def test_region_recovery_drops_qdq_and_is_never_worse_than_plain(weights, photos, tmp_path):
    """The default unit: quantization regions dropped from the int8 model (no re-calibration). Passing
    or refused, the kept model never scores below plain int8 and its dropped regions have no Q/DQ."""
    from ekit import recover as R

    proc = run_cli("build", "--target", "onnx", "--precision", "int8", "--model", weights, *MOBILENET,
                   "--calib", photos[0], "--val", photos[1], "--out", tmp_path, "--runner", "local",
                   *TIGHT, "--recover", "--keep-job")
    assert proc.returncode in (0, 10), proc.stderr[-2000:]
    res = json.loads(next(tmp_path.glob(".edgekiln/jobs/*/work/results/*-onnx-int8-convert.json")).read_text())
    rec = res["quantization"]["recovery"]
    assert rec["attempted"] and rec["unit"] == "region" and rec["before"]["misses"] == ["min_cosine 0.96: got 0.9535"]
    assert rec["tries"] or rec["budget_spent"] or not rec["top_sensitivities"]
    limits = {"min_cosine": 0.96}
    after = rec["after"].get("metrics") or rec["before"]["metrics"]
    assert R.score(after, limits) >= R.score(rec["before"]["metrics"], limits)
    model = onnx.load(str(next(tmp_path.glob(".edgekiln/jobs/*/work/onnx/int8/model.onnx"))))
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert not {r["layer"] for r in rec["float_layers"]} & quantized
    if proc.returncode == 10:
        assert "--recover did not reach the thresholds" in proc.stderr


def test_recover_flag_on_the_tflite_and_tensorrt_targets(weights, photos, tmp_path):
    """rpi (TFLite), jetson and x86-gpu (TensorRT Q/DQ) declare the option: --recover plans there."""
    proc = run_cli("build", "--target", "rpi,jetson,x86-gpu", "--precision", "int8", "--model", weights, *MOBILENET,
                   "--calib", photos[0], "--recover", "--out", tmp_path, "--dry-run", check=0)
    assert all(f"{t}-int8-convert" in proc.stdout for t in ("rpi", "jetson", "x86-gpu"))


# --------------------------------------------------------------------------- intel (OpenVINO/NNCF)
# The real YOLOv8n detector on the task photos: a gate on det F1 / recall that plain NNCF int8 misses;
# --recover re-quantizes with the most sensitive Convolutions in NNCF's ignored_scope until it passes.
# The time budget is lifted (recover_time_factor=100) so the outcome does not depend on this machine's speed.
# On the source step's 64 reference images as they were measured (whole-image variants only, up to 100
# boxes: 54; the task params below pin that set, docs/gates.md) with the head convs int8, plain NNCF int8
# reaches det F1 0.651, recall 0.50; 4 ops float 0.682, 0.537 (16: 0.698).
# The gate's earlier set (54 boxes, no mosaics): on the 189-box mosaic set the intel default passes with no
# recovery (band F1 0.966, bound 0.905; bench/results/int8_recipes.md), so the recovery tests pin this one
YOLO_54 = ["--task-param", "augment_mosaic=0", "--task-param", "augment_min_boxes=100"]
YOLO_GATE = [*YOLO_54,
             "--threshold", "int8.min_det_f1=0.665", "--threshold", "int8.min_det_recall=0.52",
             # only the F1 gate decides here (the mAP / band gates and their bounds: docs/gates.md)
             "--threshold", "int8.min_det_map50=0", "--threshold", "int8.min_det_map50_low=0",
             "--threshold", "int8.min_det_band_f1=0", "--threshold", "int8.min_det_band_f1_low=0"]


def intel_build(yolo, out, *extra, check=None):
    model, (calib, val) = yolo
    args = ["build", "--target", "intel", "--precision", "int8", "--model", model, "--calib", calib, "--val", val,
            "--out", out, "--runner", "local", "--recover", *extra]
    return run_json(*args) if check is None else run_cli(*args, check=check)


def weight_types(xml: Path) -> dict:
    """{Convolution layer name: element types of the constants its weights come from (4 hops)}."""
    import xml.etree.ElementTree as ET

    root = ET.parse(xml).getroot()
    layers = {la.get("id"): la for la in root.iter("layer")}
    into = {(e.get("to-layer"), e.get("to-port")): e.get("from-layer") for e in root.iter("edge")}

    def consts(lid, hops):
        la = layers[lid]
        if la.get("type") == "Const":
            return {la.find("data").get("element_type")}
        if hops == 0:
            return set()
        ports = [p.get("id") for p in la.iter("port") if (lid, p.get("id")) in into]
        return set().union(*[consts(into[(lid, p)], hops - 1) for p in ports]) if ports else set()

    out = {}
    for lid, la in layers.items():
        if la.get("type") == "Convolution":
            port = [p.get("id") for p in la.find("input").iter("port")][1]
            out[la.get("name")] = consts(into[(lid, port)], 4)
    return out


def test_intel_recover_passes_a_gate_plain_nncf_int8_misses(yolo, tmp_path):
    # NNCF's default overflow fix (first layer only), the recipe this gate was measured with; the x86-64-v3
    # recipe (overflow_fix=enable) leaves plain F1 at 0.67 and no single op float lifts it (tries all worse)
    # the head convs int8 (keep_float=tail, the recipe before issue 19: with them float plain
    # NNCF int8 already passes this gate)
    res = intel_build(yolo, tmp_path, *YOLO_GATE, "--option", "recover_time_factor=100",
                      "--option", "overflow_fix=first_layer_only", "--option", "keep_float=tail",
                      "--option", "recover_unit=layer", "--option", "fast_bias_correction=false")
    art = res["artifacts"][0]
    assert art["status"] == "built" and art["metrics"]["det_f1"] >= 0.665
    rec = art["recovery"]
    assert rec["attempted"] and rec["passed"] and not rec["budget_spent"]
    assert any(m.startswith("min_det_f1 0.665: got 0.6") for m in rec["before"]["misses"])  # plain NNCF int8
    n = len(rec["float_layers"])
    assert 1 <= n <= 16 and art["summary"] == f"int8 ({n} layer{'s' if n > 1 else ''} float)"
    assert [len(t["float_layers"]) for t in rec["tries"]][:2] == [1, 2]  # k = 1, 2, 4, ...: a try is a full quantization
    assert 0.5 < rec["int8_mac_share"] < 1.0 and 1.0e9 < rec["total_macs"] < 1.03e9  # YOLOv8n at 320: 1.01 G
    assert all(r["sensitivity"] > 0 and r["macs"] > 0 for r in rec["float_layers"])
    manifest = json.loads(Path(art["manifest"]).read_text())
    assert manifest["recovery"]["float_layers"] == rec["float_layers"]
    assert set(manifest["recovery"]["ignored_scope"]) >= {r["layer"] for r in rec["float_layers"]}
    assert any("kept float by --recover" in note and "ignored_scope" in note for note in manifest["notes"])
    # the ops named float ARE float in the IR: their weights come from float constants, every other
    # Convolution's from int8 ones
    kinds = weight_types(Path(art["path"]) / "model.xml")
    floats = {r["layer"] for r in rec["float_layers"]}
    assert floats <= set(kinds)
    dfl = {n for n in kinds if "/dfl/" in n}  # the DFL Conv is decode: the tail, float (keep_float)
    assert len(dfl) == 1
    for name, types in kinds.items():
        assert ("i8" in types) != (name in floats | dfl), (name, types)


def test_intel_recover_out_of_time_is_refused_with_the_best_named(yolo, tmp_path):
    # the default gate (mAP50 0.95, band F1 0.95), and a cheaper NNCF (fast bias correction, 10 images): only the refusal matters
    proc = intel_build(yolo, tmp_path, *YOLO_54, "--option", "recover_time_factor=1", "--option", "fast_bias_correction=true",
                       "--option", "subset_size=10", check=10)
    # the default int8 gates (docs/gates.md): with the head convs float mAP50 may pass, the band F1 does not
    assert re.search(r"min det (map50|band f1)( low)? 0\.9\d* missed: got 0\.", proc.stderr), proc.stderr[-600:]
    assert "--recover did not reach the thresholds in 0 tries (time budget spent" in proc.stderr
    assert "best: 0 region(s) float" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.glob("*/*/intel/int8/model.xml"))


def test_intel_region_recovery_drops_fakequantizes_never_below_plain_within_3x(yolo, tmp_path):
    # the default recipe and unit (recover_unit=region): activation FakeQuantizes dropped from the NNCF IR, no
    # re-quantization. YOLOv8n x86-64-v3 (7-bit weights), 54-box set: plain band F1 0.905, 1 region 0.920, 93.1 % of MACs int8
    # (bench/results/int8_recipes.md); the gate's lower bounds still refuse it (exit 10), measured all the same
    model, (calib, val) = yolo
    proc = run_cli("build", "--target", "intel", "--precision", "int8", "--model", model, "--calib", calib,
                   "--val", val, "--out", tmp_path, "--runner", "local", "--recover", "--keep-job", *YOLO_54)
    assert proc.returncode in (0, 10) and "Traceback" not in proc.stderr, proc.stderr[-800:]
    job = max((tmp_path / ".edgekiln" / "jobs").iterdir(), key=lambda p: p.stat().st_mtime)
    q = json.loads(next((job / "work" / "results").glob("*-intel-int8-convert.json")).read_text())["quantization"]
    rec = q["recovery"]
    assert q["fast_bias_correction"] is True  # the detector recipe
    assert rec["attempted"] and rec["unit"] == "region"
    assert rec["proxy_plain"] > 0 and rec["tries"], rec
    assert all(t["int8_mac_share"] >= 0.85 for t in rec["tries"])
    before = rec["before"]["metrics"]
    kept = rec["after"]["metrics"] if rec["float_layers"] else before
    thresholds = json.loads(next((job / "steps").glob("*-intel-int8-convert.json")).read_text())["thresholds"]
    from ekit import recover as ekit_recover

    assert ekit_recover.score(kept, thresholds) >= ekit_recover.score(before, thresholds)  # never below plain int8
    assert kept["det_map50"] >= 0.95
    assert q["seconds"] <= 3.0 * rec["plain_int8_seconds"] + 10  # the 3x (+ the IR's own save)
    assert q["int8_mac_fraction"] >= 0.85
    if rec["float_layers"]:  # the dropped regions' convolutions are counted float, off the IR itself
        assert q["int8_mac_fraction"] < rec["plain_int8_mac_fraction"]
        assert all(r["layer"].endswith("fq_output_0") and r["compute_float"] for r in rec["float_layers"])
        assert set().union(*[r["compute_float"] for r in rec["float_layers"]]) <= set(q["float_compute_ops"])


def test_an_unknown_intel_recover_unit_is_one_line_naming_the_choices(yolo, tmp_path):
    proc = intel_build(yolo, tmp_path, "--option", "recover_unit=atoms", "--option", "subset_size=4", check=2)
    assert "recover_unit='atoms' is not one of region, layer" in proc.stderr
    assert "Traceback" not in proc.stderr and not any(tmp_path.glob("*/*/intel/int8/model.xml"))


def test_an_unknown_recover_rank_is_one_line_naming_the_choices(yolo, tmp_path):
    model, (calib, val) = yolo
    proc = run_cli("build", "--target", "onnx", "--precision", "int8", "--model", model, "--calib", calib,
                   "--val", val, "--out", tmp_path, "--runner", "local", "--recover",
                   "--option", "recover_rank=largest", check=2)
    assert "recover_rank='largest' is not one of per_mac, sensitivity" in proc.stderr
    assert "Traceback" not in proc.stderr and not any(tmp_path.glob("*/*/onnx/int8/model.onnx"))


# --------------------------------------------------------------------------- TensorRT Q/DQ (jetson)

# the plain modelopt int8 (max calibration on 8 photos: cheap tries) reaches a minimum cosine of
# 0.9696 in the ONNX Runtime proxy (graph optimizations off: fake quantization; 0.9712 through ORT's fused
# int8 kernels), so a gate of 0.973 refuses it. The time budget is lifted (recover_time_factor=100): the
# plain int8 on 8 photos is so short that 3x of it decided the outcome by this machine's load (a fresh-clone
# run on an AVX2 host spent it after 2 tries; the run before passed)
TRT = ["--target", "jetson", "--precision", "int8", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
       "--option", "calibration_method=max", "--option", "calibration_limit=8", "--threshold", "int8.min_cosine=0.973",
       "--runner", "local", "--recover", "--option", "recover_unit=layer", "--option", "recover_time_factor=100"]


def test_tensorrt_qdq_recover_excludes_nodes_and_the_bundle_says_so(mobilenet_onnx, photos, tmp_path):
    calib, val = photos
    res = run_json("build", "--model", mobilenet_onnx, *TRT, "--calib", calib, "--val", val, "--out", tmp_path)
    art = res["artifacts"][0]
    rec = art["recovery"]
    n = len(rec["float_layers"])
    assert art["status"] == "deferred: bundle ready" and rec["passed"] and art["metrics"]["cosine"] >= 0.973
    assert rec["before"]["misses"][0].startswith("min_cosine 0.973: got 0.96")
    assert 1 <= n <= 10 and art["summary"] == f"int8 ({n} layer{'s' if n > 1 else ''} float)"
    assert rec["proxy"].startswith("recovery measured with ONNX Runtime CPU on the Q/DQ model")
    assert 0.5 < rec["int8_mac_share"] < 1.0
    folder = Path(art["path"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["recovery"]["float_layers"] == rec["float_layers"]
    bundle = json.loads((folder / "device" / "bundle.json").read_text())
    floats = {r["layer"] for r in rec["float_layers"]}
    assert set(bundle["recovery"]["float_layers"]) == floats and "check_engine" in bundle["recovery"]["measured"]
    # the nodes kept float have no Q/DQ around them: float weights, inputs not from a DequantizeLinear;
    # every other Conv reads DequantizeLinear weights
    model = onnx.load(str(folder / "model.onnx"))
    producer = {o: node.op_type for node in model.graph.node for o in node.output}
    for node in model.graph.node:
        if node.op_type == "Conv":
            dq = [producer.get(i) == "DequantizeLinear" for i in node.input[:2]]
            assert (not any(dq)) if node.name in floats else dq[1], node.name
