"""Issue 19's int8 recipes on the edge runtimes, for real: YOLOv8n int8 on mnn, rpi (TFLite), rknn
(simulator) and executorch keeps its decode tail and the last conv of each head branch at higher
precision (``keep_float=auto``), and the convert result and the manifest say which; MNN, whose
quantizer cannot keep ops float, says that instead. Published or refused by the detection gate
(docs/gates.md), never silently. A classifier keeps nothing float.
Numbers: bench/results/int8_recipes_edge.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration
FAST = ["--option", "latency_runs=3", "--option", "latency_warmup=1"]
HEAD = {f"cv{b}.{i}.2" for b in (2, 3) for i in range(3)}


def int8(target, model, photos, out, *extra):
    calib, val = photos
    proc = run_cli("build", "--target", target, "--model", model, "--precision", "int8", "--calib", calib,
                   "--val", val, "--out", out, "--runner", "local", "--keep-job", "--json", *FAST, *extra)
    assert proc.returncode in (0, 10), proc.stderr[-3000:]
    job = max((Path(out) / ".edgekiln" / "jobs").iterdir(), key=lambda p: p.stat().st_mtime)
    conv = json.loads(next((job / "work" / "results").glob(f"*-{target}-int8-convert.json")).read_text())
    report = json.loads((job / "work" / target / "int8" / "report.json").read_text())
    return proc, conv, report


@pytest.mark.parametrize("target", ["rpi", "rknn", "executorch"])
def test_yolov8n_int8_keeps_tail_and_head_convs_at_higher_precision(target, yolo, tmp_path):
    """rknn runs with --recover (its plain int8 misses on these photos: band F1 0.92, bound 0.76):
    float16 blocks of the toolkit's own config, never below plain int8 nor the MAC floor."""
    model, photos = yolo
    proc, conv, report = int8(target, model, photos, tmp_path, *(["--recover"] if target == "rknn" else []))
    q = conv["quantization"]
    if target == "rknn":
        rec = q["recovery"]
        assert rec["attempted"] and rec["unit"] == "block" and rec["tries"], rec
        assert rec["after"]["misses"] or rec["passed"]
        if rec["float_layers"]:  # kept: it scored above plain int8, within the floor, each block named
            assert all(r["tensors"][0] == r["layer"] for r in rec["float_layers"])
            assert 0.85 <= rec["int8_mac_share"] < rec["plain_int8_mac_fraction"]
            before, m = rec["before"]["metrics"], report["metrics"]
            assert (m["det_map50"], m["det_band_f1"]) != (before["det_map50"], before["det_band_f1"])
        else:
            assert rec["after"]["summary"] == "no try did better than plain int8"
    assert q["keep_float"] == "auto"
    # the six head convs are named by their ONNX (or onnx2torch module) names on mnn/rknn/executorch; TFLite renames
    # ops (model_5/tf.nn.convolution_61/...): there count them (six + the DFL conv)
    heads = " ".join(q["float_head"]).replace("/", ".")  # onnx2torch's module names use "/" for "."
    if target == "rpi":
        assert len(q["float_head"]) == 7 and q["int8_mac_share"] >= 0.85
    else:
        assert all(h in heads for h in HEAD), q["float_head"]
    if target == "rknn":
        assert q["int8_mac_share"] >= 0.85 and q["float_starts"]
    else:
        assert len(q["float_ops"]) > len(q["float_head"])  # the tail too
    assert any("kept float" in n or "left float" in n or "fp16" in n for n in conv.get("notes", []) + [
        q.get("float_tail_note") or ""])
    m = report["metrics"]
    assert m["det_map50"] is not None and m["det_band_f1"] is not None
    if proc.returncode == 0:
        man = json.loads(Path(json.loads(proc.stdout)["artifacts"][0]["manifest"]).read_text())
        assert any("float" in n or "fp16" in n for n in man["notes"])
        assert m["det_map50"] >= 0.95 and m["det_band_f1_low"] >= 0.90
    else:  # refused: the message names the detection gate
        assert "min det" in json.loads(proc.stdout)["error"]["message"]


def test_yolov8n_on_mnn_says_what_mnn_keeps_float_and_keeps_the_best_calibrator(yolo, tmp_path):
    """MNN 3.6.1's quantizer keeps nothing float (EMA never reads skip_quant_op_names; KL keeps only
    the listed convs' weights float): asked for keep_float=auto, the convert result says which of
    the two happened and never names the head float under EMA/MINMAX. auto builds KL, EMA and
    MINMAX (EMA given the set as one batch, through the batchable copy of the net) and keeps the
    best-scored one."""
    model, photos = yolo
    proc, conv, report = int8("mnn", model, photos, tmp_path, "--option", "keep_float=auto")
    q = conv["quantization"]
    tried = q["calibrators_tried"]
    assert set(tried) == {"KL", "EMA", "MINMAX"} and not any("failed" in v for v in tried.values()), tried
    scores = {k: v["score"] for k, v in tried.items()}
    assert scores[q["feature_quantize_method"]] == max(scores.values())
    if q["feature_quantize_method"] == "KL":
        assert all(h in " ".join(q["float_head"]) for h in HEAD) and "weights" in q["keep_float_note"]
    else:
        assert q["float_ops"] == q["float_head"] == [] and "ignores skip_quant_op_names" in q["keep_float_note"]
    assert q["keep_float_note"] in conv["notes"]
    m = report["metrics"]
    assert m["det_map50"] is not None and m["det_band_f1"] is not None
    if proc.returncode == 0:
        assert m["det_map50"] >= 0.95 and m["det_band_f1_low"] >= 0.90
    else:
        assert "min det" in json.loads(proc.stdout)["error"]["message"]


def test_a_classifier_keeps_nothing_float_and_mnn_chooses_its_calibrator(mobilenet_onnx, photos, tmp_path):
    proc, conv, report = int8("mnn", mobilenet_onnx, photos, tmp_path, "--input-shape", "1,3,224,224",
                              "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225")
    q = conv["quantization"]
    # MNN turns the Gemm into a 1x1 conv + reshape: only that reshape and its shape arithmetic follow it
    assert q["float_head"] == [] and not any("Pool" in n or "Flatten" in n for n in q["float_ops"])
    assert q["calibrator_choice"] == "auto" and set(q["calibrators_tried"]) == {"KL", "EMA", "MINMAX"}
    scores = {k: v["score"] for k, v in q["calibrators_tried"].items()}
    assert scores[q["feature_quantize_method"]] == max(scores.values())
    assert report["metrics"]["top1_agreement"] >= 0.85


def test_a_text_map_keeps_its_element_wise_ops_float_on_rpi_and_every_conv_int8(tmp_path):
    """PP-OCRv4 det (task map) on rpi: keep_float=auto keeps the tail and the element-wise ops between
    the convs float (HardSwish, SE, the FPN's Resize/Add/Concat), every conv int8; judged by regions
    (bench/results/int8_textdet.md: region F1 0.949 vs 0.921 with the tail alone)."""
    import shutil

    from edgekiln.demo import task_photo_folders, text_detector_onnx

    model = tmp_path / "ppocr_det.onnx"
    shutil.copy(text_detector_onnx(), model)
    model.with_name(model.name + ".edgekiln.toml").write_text(
        'shape = [1, 3, 320, 320]\nresize = "stretch"\ncolor = "bgr"\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\n')
    proc, conv, report = int8("rpi", model, task_photo_folders(), tmp_path / "out")
    q = conv["quantization"]
    assert q["keep_float"] == "auto" and q["float_head"] == [] and q["int8_mac_share"] == 1.0  # no conv float
    kinds = " ".join(q["float_ops"]).lower()
    assert len(q["float_ops"]) > 50 and "add" in kinds and "sigmoid" in kinds
    assert any("element-wise op(s) of the map model" in n for n in conv["notes"])
    m = report["metrics"]
    assert m["task"] == "map" and m["region_f1"] is not None and m["region_f1_low"] is not None
    if proc.returncode == 0:
        assert m["region_f1"] >= 0.90 and m["map_iou"] >= 0.80
    else:
        assert "min region f1" in proc.stderr or "min map iou" in proc.stderr, proc.stderr[-2000:]
