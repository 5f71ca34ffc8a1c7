"""converters/ekit_task.py and ekit_measure.py on the host: head decoders, NMS, matching, mAP, dense metrics, task
detection, ground truth geometry — with tensors whose right answer is known by construction.
The real models (YOLOv8n, PP-OCRv4 det) run in tests/integration/test_task_validation.py."""

from __future__ import annotations

import json
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest

CONVERTERS = Path(__file__).resolve().parents[2] / "converters"
sys.path.insert(0, str(CONVERTERS))

import ekit  # noqa: E402
from ekit import measure as M  # noqa: E402
from ekit import task as T  # noqa: E402

from edgekiln import request  # noqa: E402
from edgekiln.plan import check_thresholds, evaluate_thresholds  # noqa: E402


def threshold_checks(metrics, limits):
    """threshold -> "passed" | "missed" | "not applicable: <reason>" (the manifest's gates)."""
    return {v["threshold"]: v["reason"] or ("passed" if v["passed"] else "missed")
            for v in evaluate_thresholds(metrics, limits)}


def params(head, nc, **kw):
    p = T._det_params(head, nc, **kw)
    p["input_hw"] = [320, 320]
    return p


# --------------------------------------------------------------------------- heads

def yolov8_tensor(boxes_cxcywh, cls, scores, nc=3, a=2100):
    y = np.zeros((1, 4 + nc, a), dtype=np.float32)
    for k, (b, c, s) in enumerate(zip(boxes_cxcywh, cls, scores)):
        y[0, :4, k] = b
        y[0, 4 + c, k] = s
    return y


def test_yolov8_decode_threshold_and_nms():
    # two overlapping boxes of class 1 (NMS keeps the better), one of class 2 overlapping them
    # (class-aware: kept), one below the score threshold
    y = yolov8_tensor([(100, 100, 40, 40), (102, 101, 40, 40), (101, 100, 40, 40), (200, 200, 10, 10)],
                      [1, 1, 2, 0], [0.9, 0.8, 0.7, 0.1])
    d = M.decode([y], params("yolov8", 3))[0]
    assert d["classes"].tolist() == [1, 2]
    np.testing.assert_allclose(d["boxes"][0], [80, 80, 120, 120])
    np.testing.assert_allclose(d["scores"], [0.9, 0.7], rtol=1e-6)


def test_yolov5_objectness_multiplies_the_class_score():
    y = np.zeros((1, 6300, 5 + 2), dtype=np.float32)
    y[0, 0] = [50, 50, 20, 20, 0.5, 0.9, 0.1]  # 0.45: kept
    y[0, 1] = [150, 150, 20, 20, 0.2, 0.9, 0.0]  # 0.18: below 0.25
    d = M.decode([y], params("yolov5", 2))[0]
    assert len(d["scores"]) == 1 and d["scores"][0] == pytest.approx(0.45)
    np.testing.assert_allclose(d["boxes"][0], [40, 40, 60, 60])


def test_yolox_grid_relative_boxes_decode_with_strides():
    y = np.zeros((1, 2100, 5 + 1), dtype=np.float32)
    # cell (x=3, y=2) of stride 8 (row-major, 40 cells a row): index 2*40+3
    y[0, 83] = [0.5, 0.25, np.log(2.0), np.log(4.0), 0.9, 0.8]
    # first cell of stride 32 (after 1600 + 400 cells)
    y[0, 2000] = [0.0, 0.0, 0.0, 0.0, 0.9, 0.9]
    d = M.decode([y], params("yolox", 1, strides=[8, 16, 32]))[0]
    boxes = sorted(map(tuple, np.round(d["boxes"], 3)))
    cx, cy, w, h = (3 + 0.5) * 8, (2 + 0.25) * 8, 2 * 8, 4 * 8
    assert (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2) in boxes
    assert (-16.0, -16.0, 16.0, 16.0) in boxes


def test_ssd_separate_boxes_and_scores():
    boxes = np.array([[[10, 10, 50, 50], [60, 60, 90, 90]]], dtype=np.float32)
    scores = np.array([[[0.1, 0.8], [0.3, 0.2]]], dtype=np.float32)
    d = M.decode([boxes, scores], params("ssd", 2, boxes_output=0, scores_output=1))[0]
    assert d["classes"].tolist() == [1, 0]
    np.testing.assert_allclose(d["boxes"], boxes[0])


def test_e2e_rows_are_boxes_already():
    y = np.array([[[1, 2, 30, 40, 0.9, 3], [5, 5, 9, 9, 0.1, 0]]], dtype=np.float32)
    d = M.decode([y], params("e2e", None))[0]
    assert d["classes"].tolist() == [3] and d["boxes"].tolist() == [[1, 2, 30, 40]]


# --------------------------------------------------------------------------- matching and mAP

def det(boxes, classes, scores=None):
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return {"boxes": b, "classes": np.asarray(classes, dtype=np.int64),
            "scores": np.asarray(scores if scores is not None else [1.0] * len(b))}


def test_match_one_to_one_same_class():
    ref = [det([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])]
    out = [det([[0, 0, 10, 11], [0, 0, 10, 10], [20, 20, 30, 30]], [0, 0, 2])]  # dup; wrong class
    m = M.match(ref, out)
    assert m["det_matched"] == 1
    assert m["det_precision"] == pytest.approx(1 / 3) and m["det_recall"] == pytest.approx(0.5)
    assert m["det_f1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    assert m["det_mean_iou"] == pytest.approx(1.0)
    assert m["det_boxes_per_image"] == [3] and m["det_boxes_per_image_source"] == [2]


def test_match_no_source_boxes_gives_no_recall():
    m = M.match([det([], [])], [det([], [])])
    assert m["det_recall"] is None and m["det_f1"] is None


def test_map50_perfect_and_half():
    gt = [{"boxes": [[0, 0, 10, 10]], "classes": [0]}, {"boxes": [[0, 0, 10, 10]], "classes": [0]}]
    assert M.map50([det([[0, 0, 10, 10]], [0]), det([[0, 0, 10, 10]], [0])], gt) == pytest.approx(1.0)
    # one image found, the other image's box missed entirely: recall 0.5 at precision 1
    assert M.map50([det([[0, 0, 10, 10]], [0]), det([], [])], gt) == pytest.approx(0.5)
    assert M.map50([det([], [])], [None]) is None


# --------------------------------------------------------------------------- dense outputs

def bfs_count(mask):
    seen, n = np.zeros_like(mask, dtype=bool), 0
    h, w = mask.shape
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not seen[y, x]:
                n += 1
                q = deque([(y, x)])
                seen[y, x] = True
                while q:
                    a, b = q.popleft()
                    for da in (-1, 0, 1):
                        for db in (-1, 0, 1):
                            c, d = a + da, b + db
                            if 0 <= c < h and 0 <= d < w and mask[c, d] and not seen[c, d]:
                                seen[c, d] = True
                                q.append((c, d))
    return n


@pytest.mark.parametrize("seed", range(5))
def test_label_regions_matches_a_flood_fill(seed):
    mask = np.random.default_rng(seed).random((40, 50)) > 0.6
    labels, n = M.label_regions(mask)
    assert n == bfs_count(mask)
    assert ((labels > 0) == mask).all()


def test_diagonal_pixels_are_one_region():
    assert M.label_regions(np.eye(6, dtype=bool))[1] == 1


def test_map_metrics_scaled_map_loses_every_region():
    ref = np.zeros((2, 1, 32, 32))
    ref[0, 0, 2:8, 2:12] = 0.9
    ref[0, 0, 20:30, 5:9] = 0.8
    ref[1, 0, 10:20, 10:20] = 0.95
    same = M.map_metrics(ref, ref)
    assert same["map_iou"] == 1.0 and same["region_f1"] == 1.0 and same["regions_source"] == 3
    scaled = M.map_metrics(ref, ref * 0.25)
    assert scaled["map_iou"] == 0.0 and scaled["region_f1"] == 0.0


def test_miou_of_argmax_masks():
    ref = np.zeros((1, 2, 4, 4))
    ref[0, 1, :2] = 1.0  # top half class 1
    out = ref.copy()
    out[0, 1, 1] = 0.0  # one row lost
    assert M.miou(ref, ref) == 1.0
    # class 1: 4/8, class 0: 8/12
    assert M.miou(ref, out) == pytest.approx((4 / 8 + 8 / 12) / 2)


# --------------------------------------------------------------------------- task detection

META = {"task": "detect", "imgsz": "[320, 320]", "stride": "32", "author": "Ultralytics",
        "names": "{0: 'a', 1: 'b', 2: 'c'}"}


def out(*shapes):
    return [{"name": f"o{i}", "shape": list(s)} for i, s in enumerate(shapes)]


def test_ultralytics_metadata_decides_yolov8():
    t = T.detect_task(out([1, 7, 2100]), (320, 320), META)
    assert (t["task"], t["head"]) == ("detect", "yolov8")
    assert "Ultralytics metadata" in t["reason"] and "3 names" in t["reason"]
    assert t["params"]["classes"] == 3


@pytest.mark.parametrize("shapes,task,head", [
    (([1, 1000],), "classify", None),
    (([1, 84, 2100],), "detect", "yolov8"),
    (([1, 6300, 85],), "detect", "yolov5"),
    (([1, 2100, 85],), "detect", "yolox"),
    (([1, 300, 6],), "detect", "e2e"),
    (([1, 2100, 4], [1, 2100, 91]), "detect", "ssd"),
    (([1, 1, 320, 320],), "map", None),
    (([1, 21, 80, 80],), "segment", None),
    (([1, 5, 9],), "raw", None),
])
def test_shapes_decide_the_task(shapes, task, head):
    t = T.detect_task(out(*shapes), (320, 320))
    assert (t["task"], t["head"]) == (task, head), t["reason"]
    assert t["reason"]


def test_given_task_wins_and_bad_names_are_errors():
    assert T.detect_task(out([1, 1, 320, 320]), (320, 320), task="raw")["task"] == "raw"
    assert T.detect_task(out([1, 84, 2100]), (320, 320), head="yolov5")["head"] == "yolov5"
    with pytest.raises(ValueError):
        T.detect_task(out([1, 84, 2100]), (320, 320), head="yolo9000")


def test_raw_model_says_which_checks_were_not_possible():
    t = T.detect_task(out([1, 5, 9]), (320, 320))
    m = T.metrics(t, [np.ones((1, 5, 9))], [np.ones((1, 5, 9))])
    assert m["task"] == "raw" and "pass --task" in m["not_applicable"]["det_f1"]
    checks = threshold_checks(m, {"min_det_f1": 0.95, "min_map_iou": 0.8, "min_cosine": 0.9})
    assert checks["min_det_f1"].startswith("not applicable: the model is 'raw'")
    assert checks["min_cosine"] == "not applicable: no comparable output"  # no cosine key here


# --------------------------------------------------------------------------- the gates

def detect_task():
    t = T.detect_task(out([1, 7, 2100]), (320, 320), META)
    t["params"]["input_hw"] = [320, 320]
    return t


def test_zeroed_scores_fail_the_detection_gate_but_keep_the_cosine():
    y = yolov8_tensor([(100, 100, 40, 40), (200, 150, 60, 30)], [0, 2], [0.9, 0.6])
    y[0, :4, 2:] = np.random.default_rng(0).uniform(0, 320, (4, 2098))  # every anchor has a box
    zero = y.copy()
    zero[:, 4:] = 0.0
    m = ekit.compare([y], [zero])
    m.update(T.metrics(detect_task(), [y], [zero]))
    assert m["cosine"] > 0.99  # the old gate passes
    assert m["det_f1"] == 0.0 and m["det_boxes_artifact"] == 0 and m["det_boxes_source"] == 2
    assert m["det_boxes"] == 2  # the source boxes the gate rests on
    failures = check_thresholds(m, {"min_cosine": 0.9, "min_det_f1": 0.95, "min_det_map50": 0.95})
    assert failures == ["min det f1 0.95 missed: got 0", "min det map50 0.95 missed: got 0"]


def test_source_without_boxes_is_not_applicable_with_reason():
    y = yolov8_tensor([], [], [])
    m = T.metrics(detect_task(), [y], [y])
    assert m["det_f1"] is None
    assert "finds no box" in threshold_checks(m, {"min_det_f1": 0.95})["min_det_f1"]


def test_nonfinite_outputs_fail_and_say_where():
    y = np.ones((3, 4), dtype=np.float32)
    bad = y.copy()
    bad[1, 2] = np.nan
    m = ekit.compare([y], [bad])
    m.update(T.metrics(None, [y], [bad]))
    m["nonfinite_where"] = T.nonfinite_where([bad], ["logits"], ["a.jpg", "b.jpg", "c.jpg"])
    assert m["nonfinite_where"] == "output 'logits': 1 of 12 values in b.jpg"
    assert check_thresholds(m, {})[0] == "NaN/inf outputs (output 'logits': 1 of 12 values in b.jpg)"


# --------------------------------------------------------------------------- ground truth

def test_yolo_txt_boxes_follow_the_letterbox(tmp_path):
    (tmp_path / "a.txt").write_text("1 0.5 0.5 0.5 0.25\n")
    gt, kind = M.ground_truth(tmp_path, ["a.jpg"], [(640, 320)], (320, 320), "letterbox")
    assert kind == "yolo txt"
    # 640x320 -> scale 0.5 -> 320x160, pasted at y offset 80; box 320x80 px -> 160x40 centred at (160, 160)
    np.testing.assert_allclose(gt[0]["boxes"], [[80, 140, 240, 180]])
    assert gt[0]["classes"] == [1]


def test_coco_json_boxes_and_unlabelled_images(tmp_path):
    coco = {"images": [{"id": 7, "file_name": "x/a.jpg"}, {"id": 8, "file_name": "b.jpg"}],
            "annotations": [{"image_id": 7, "category_id": 18, "bbox": [10, 20, 30, 40]}],
            "categories": [{"id": 1}, {"id": 18}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    gt, kind = M.ground_truth(tmp_path, ["a.jpg", "b.jpg", "c.jpg"], [(100, 100)] * 3, (100, 100),
                              "stretch")
    assert kind == "coco json"
    assert gt[0] == {"boxes": [[10, 20, 40, 60]], "classes": [1]}
    assert gt[1] == {"boxes": [], "classes": []} and gt[2] is None


# --------------------------------------------------------------------------- request and preprocessing

def test_letterbox_preprocessing_pads_with_114():
    from PIL import Image

    img = Image.new("RGB", (200, 100), (10, 20, 30))
    out_img = np.asarray(ekit._resize(img, (100, 100), "letterbox"))
    assert out_img.shape == (100, 100, 3)
    assert (out_img[0, 0] == 114).all() and (out_img[99, 99] == 114).all()
    assert tuple(out_img[50, 50]) == (10, 20, 30)
    assert (out_img[25:75, :] != 114).any(axis=-1).all()  # rows 25..74 hold the picture
    text = ekit.describe_preprocessing({"shape": [1, 3, 320, 320], "resize": "letterbox", "pad": 0})
    assert "Letterbox" in text and "(0, 0, 0)" in text


def test_request_task_and_pad_parsing():
    assert request.parse_task(None, "yolov8", {"score_threshold": "0.3"}) == \
        ("detect", "yolov8", {"score_threshold": 0.3})
    assert request.TASKS == T.TASKS and request.HEADS == T.HEADS
    for bad in (("detect2", None, {}), ("map", "yolov8", {}), (None, None, {"score_threshold": 2}),
                (None, None, {"nope": 1})):
        with pytest.raises(request.UsageError):
            request.parse_task(*bad)
    assert request.input_spec(resize="letterbox").pad == 114
    assert request.input_spec(resize="letterbox", pad="0").to_json()["pad"] == 0
    assert "pad" not in request.input_spec().to_json()  # classification specs unchanged
    with pytest.raises(request.UsageError):
        request.input_spec(resize="crop", pad=114)
    with pytest.raises(request.UsageError):
        request.input_spec(resize="letterbox", pad=300)


def test_noisy_latency_is_flagged_with_min_and_spread(capsys):
    import time

    calls = iter(range(1000))
    lat = ekit.latency(lambda: time.sleep(0.03 if next(calls) % 2 else 0.001), runs=10, warmup=0)
    assert lat["noisy"] and lat["spread"] > 0.5 and lat["min"] < 10 < lat["p90"]
    assert "noisy latency" in capsys.readouterr().out


# --------------------------------------------------------------------------- int8 helpers (ekit_onnx)

def _graph(opset):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((6, 3, 1, 1), dtype=np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Split", ["c"], ["box", "cls"], axis=1, name="split",
                              **({"split": [4, 2]} if opset < 13 else {})),
             helper.make_node("Sigmoid", ["cls"], ["s"], name="sig"),
             helper.make_node("Concat", ["box", "s"], ["y"], axis=1, name="cat")]
    if opset >= 13:
        split = numpy_helper.from_array(np.array([4, 2], dtype=np.int64), "split_sizes")
        nodes[1] = helper.make_node("Split", ["c", "split_sizes"], ["box", "cls"], axis=1, name="split")
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 4, 4])],
                              [w] + ([split] if opset >= 13 else []))
    return onnx, helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_head_nodes_are_the_tail_after_the_last_conv():
    import ekit_onnx

    _, model = _graph(13)
    assert sorted(ekit_onnx.head_nodes(model)) == ["cat", "sig", "split"]


def test_opset_12_is_upgraded_for_per_channel():
    import ekit_onnx

    onnx, model = _graph(12)
    upgraded, note = ekit_onnx.ensure_opset(model, 13)
    assert note == "opset upgraded 12 -> 13 (per-channel int8 needs opset 13)"
    assert max(o.version for o in upgraded.opset_import if o.domain in ("", "ai.onnx")) == 13
    assert ekit_onnx.ensure_opset(upgraded, 13)[1] is None


def test_cosine_of_empty_map_samples_is_agreement_not_zero():
    ref = np.zeros((3, 1, 8, 8), dtype=np.float32)
    ref[0, 0, 2:5, 2:5] = 0.9  # one photo with text, two without (exact zeros / 1e-7 noise)
    out = ref.copy()
    out[1] += 1e-7
    assert ekit.compare([ref], [out])["cosine"] == pytest.approx(1.0)
    lost = ref.copy()
    lost[0] = 0.0  # the artifact lost the only region: that still shows
    assert ekit.compare([ref], [lost])["cosine"] == 0.0


def test_make_request_takes_task_head_and_letterbox(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x08\x07onnx-ish")
    r = request.make_request(model=str(model), head="yolox", task_param=["score_threshold=0.4"],
                             resize="letterbox", pad="0")
    assert (r.task, r.head, dict(r.task_params), r.input.pad) == ("detect", "yolox", {"score_threshold": 0.4}, 0)
    with pytest.raises(request.UsageError):
        request.make_request(model=str(model), task="map", head="ssd")
    # the gate's own params (docs/gates.md) are task params too, checked the same way
    r = request.make_request(model=str(model), task="detect", task_param=[
        "band=0.1", "augment_min_boxes=150", "augment_max_images=48", "augment_mosaic=0"])
    assert dict(r.task_params) == {"band": 0.1, "augment_min_boxes": 150, "augment_max_images": 48,
                                   "augment_mosaic": 0}
    for bad in ("band=1.5", "augment_min_boxes=-1", "augment_mosaic=yes"):
        with pytest.raises(request.UsageError):
            request.make_request(model=str(model), task="detect", task_param=[bad])


# --------------------------------------------------------------------------- the resize of a detector

def auto_spec(**kw):
    return request.input_spec(shape="1,3,320,320", **kw).to_json()


def test_a_detector_without_a_resize_is_fed_letterboxed_and_the_feed_says_why():
    spec = auto_spec()
    assert spec["resize"] == "crop" and spec["resize_auto"] is True
    ys = [np.zeros((1, 84, 2100), np.float32)]  # a YOLOv8 head at 320x320
    assert T.letterbox_detector({}, ys, ["output0"], spec) is True
    assert (spec["resize"], spec["pad"]) == ("letterbox", 114) and "resize_auto" not in spec
    assert "default for a detector" in ekit.describe_preprocessing(spec)


@pytest.mark.parametrize("kw,ys", [
    ({}, [np.zeros((1, 1000), np.float32)]),  # a classifier stays cropped
    ({"resize": "crop"}, [np.zeros((1, 84, 2100), np.float32)]),  # a resize given is kept
    ({"resize": "stretch"}, [np.zeros((1, 84, 2100), np.float32)]),
])
def test_other_models_and_given_resizes_keep_their_resize(kw, ys):
    spec = auto_spec(**kw)
    before = spec.get("resize")
    assert T.letterbox_detector({}, ys, ["output0"], spec) is False
    assert spec["resize"] == before and "resize_auto" not in spec and "resize_why" not in spec
    assert "default for a detector" not in ekit.describe_preprocessing(spec)


def test_resize_auto_never_reaches_a_later_step():
    requested = auto_spec()
    assert "resize_auto" not in ekit.resolved_spec(requested, {"input_spec": {"resize": "crop"}})
    assert "resize_auto" not in request.input_spec(resize="crop").to_json()


def test_quant_op_types_and_keep_float_options_of_onnx_and_intel():
    import ekit_onnx

    assert ekit_onnx.quant_op_types("auto", "map") == "compute"
    assert ekit_onnx.quant_op_types("AUTO", "detect") == "all" and ekit_onnx.quant_op_types("auto", None) == "all"
    assert ekit_onnx.quant_op_types("all", "map") == "all" and ekit_onnx.quant_op_types("compute", None) == "compute"
    assert ekit_onnx.keep_float("auto", "detect") == (True, True) and ekit_onnx.keep_float("auto", "classify") == (True, False)
    assert ekit_onnx.keep_float("none", "detect") == (False, False) and ekit_onnx.keep_float("tail", "detect") == (True, False)
    for parse, bad in ((ekit_onnx.quant_op_types, "convs"), (ekit_onnx.keep_float, "true")):
        with pytest.raises(SystemExit):
            parse(bad, "map")
