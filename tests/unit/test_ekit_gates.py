"""The gates that can tell (converters/ekit/stats.py, detection.py; docs/gates.md): detection mAP
and ambiguity-band F1 against the source's own boxes with lower bounds, the classifier's agreement
bound and probability distance, dense maps with bounds, the blank-map cosine rule — on the REAL
YOLOv8n's outputs (ONNX Runtime fp32, and bare ``quantize_static`` int8, on the task photos), and
every gate FAILS on an output made useless on purpose."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from edgekiln.plan import GATES, check_thresholds, evaluate_thresholds
from edgekiln.targets import METRICS
from tests.unit.test_ekit_task import CONVERTERS, threshold_checks

import ekit  # noqa: E402  (CONVERTERS is on sys.path)
from ekit import detection as D  # noqa: E402
from ekit import measure as M  # noqa: E402
from ekit import recover as R  # noqa: E402
from ekit import stats as S  # noqa: E402
from ekit import task as T  # noqa: E402

DET_LIMITS = {"min_det_map50": 0.95, "min_det_map50_low": 0.90, "min_det_band_f1": 0.95,
              "min_det_band_f1_low": 0.90}

YOLO_SCRIPT = r"""
import json, sys, numpy as np, onnx, onnxruntime as ort
sys.path.insert(0, sys.argv[1])
import ekit
from ekit import task as T
from onnxruntime.quantization import CalibrationDataReader, quantize_static
from edgekiln.demo import task_photo_folders, yolov8n_onnx
model = str(yolov8n_onnx()); calib, val = task_photo_folders()
spec = {"shape": [1, 3, 320, 320], "layout": "nchw", "resize": "letterbox", "pad": 114, "scale": 255}
data = ekit.load_set(val, spec)
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
run = lambda s: np.concatenate([s.run(None, {name: x[None]})[0] for x in data["x"]])
cx = ekit.load_set(calib, spec)["x"]
class Reader(CalibrationDataReader):
    def __init__(self): self.it = iter([{name: x[None]} for x in cx])
    def get_next(self): return next(self.it, None)
quantize_static(model, sys.argv[2] + ".int8.onnx", Reader())  # bare ONNX Runtime defaults
meta = {m.key: m.value for m in onnx.load(model).metadata_props}
y = run(sess)
task = T.detect_task([{"name": "output0", "shape": list(y.shape)}], (320, 320), meta)
task["params"]["input_hw"] = [320, 320]
from ekit import augment
import time
t0 = time.time()
sess8 = ort.InferenceSession(sys.argv[2] + ".int8.onnx")
many = lambda s, x: [np.concatenate([s.run(None, {name: v[None]})[0] for v in x])]
aug, ya, info = augment.enough(task, data, [y], lambda x: many(sess, x), spec)
t1 = time.time()
ya8 = many(sess8, aug["x"])[0]
info["seconds_int8_all"] = time.time() - t1
np.savez(sys.argv[2], fp32=y, int8=run(sess8), pixels=data["pixels"], task=json.dumps(task),
         aug_fp32=ya[0], aug_int8=ya8, aug_files=np.asarray(aug["files"]), info=json.dumps(info))
"""


@pytest.fixture(scope="module")
def yolo_outputs(tmp_path_factory):
    """The real YOLOv8n (edgekiln.demo) on the 29 mirrored task photos: fp32 and bare int8 outputs."""
    import json

    from edgekiln.runners.local import LocalRunner

    out = tmp_path_factory.mktemp("yolo-out") / "y.npz"
    subprocess.run([LocalRunner().prepare("onnx").ref, "-c", YOLO_SCRIPT, str(CONVERTERS), str(out)],
                   check=True, capture_output=True, timeout=900, cwd=CONVERTERS.parent)
    z = np.load(out)
    return {"fp32": z["fp32"], "int8": z["int8"], "pixels": z["pixels"], "task": json.loads(str(z["task"])),
            "aug_fp32": z["aug_fp32"], "aug_int8": z["aug_int8"], "aug_files": [str(f) for f in z["aug_files"]],
            "info": json.loads(str(z["info"]))}


# --------------------------------------------------------------------------- statistics

def test_wilson_bounds_of_the_issue():
    assert S.wilson_low(8, 8) == pytest.approx(0.676, abs=1e-3)  # "8/8: [0.63, 1]" (Clopper-Pearson)
    assert S.wilson_low(20, 20) == pytest.approx(0.839, abs=1e-3)
    assert S.wilson_low(19, 20) == pytest.approx(0.764, abs=1e-3)
    assert S.wilson_low(100, 100) == pytest.approx(0.963, abs=1e-3)
    assert S.wilson_low(0, 0) is None


def test_bootstrap_is_deterministic_and_wider_with_fewer_images():
    rng = np.random.default_rng(3)
    tp = rng.integers(0, 5, 40).astype(float)
    fn = (rng.random(40) < 0.2).astype(float)
    fp = (rng.random(40) < 0.2).astype(float)
    a, b = S.f1_low(tp, fp, fn), S.f1_low(tp.copy(), fp.copy(), fn.copy())
    assert a == b  # same images, same bound: a gate never flips between two runs
    np.testing.assert_array_equal(S.boot_weights(40), S.boot_weights(40))
    assert S.boot_weights(40).sum(axis=1).tolist() == [40.0] * S.BOOTSTRAP
    f1 = S.f1_counts(tp.sum(), fp.sum(), fn.sum())
    few = S.f1_low(tp[:8], fp[:8], fn[:8])
    assert a < f1 and few < a  # 8 images know less than 40


# --------------------------------------------------------------------------- detection, real YOLOv8n

def test_identical_outputs_score_one_and_the_bound_says_how_many_boxes(yolo_outputs):
    y, task = yolo_outputs["fp32"], yolo_outputs["task"]
    m = T.metrics(task, [y], [y.copy()])
    assert m["det_map50"] == 1.0 and m["det_map"] == 1.0 and m["det_band_f1"] == 1.0
    assert m["det_boxes"] == m["det_boxes_source"] >= 5
    assert m["det_band"] == [0.2, 0.3] and m["det_band_boxes"] + m["det_band_ignored"] >= m["det_boxes"]
    # a handful of boxes cannot claim more than Wilson allows: the low bounds say so
    assert m["det_map50_low"] == pytest.approx(S.wilson_low(m["det_boxes"], m["det_boxes"]))
    assert m["det_band_f1_low"] < 0.90
    assert check_thresholds(m, {"min_det_map50": 0.95, "min_det_band_f1": 0.95}) == []


@pytest.mark.parametrize("damage", ["zero_scores", "shift_boxes", "halve_scores", "swap_classes"])
def test_outputs_made_useless_fail_every_detection_gate(yolo_outputs, damage):
    y, task = yolo_outputs["fp32"], yolo_outputs["task"]
    bad = y.copy()
    if damage == "zero_scores":
        bad[:, 4:] = 0.0
    elif damage == "shift_boxes":
        bad[:, 0] += bad[:, 2]  # every box moved by its own width: IoU 0 with the source's
    elif damage == "halve_scores":
        bad[:, 4:] *= 0.5  # every box drops under the threshold; the ranking holds
    else:
        bad[:, 4:] = np.roll(bad[:, 4:], 1, axis=1)  # every box's class is another
    m = ekit.compare([y], [bad])
    m.update(T.metrics(task, [y], [bad]))
    missed = {v["threshold"] for v in evaluate_thresholds(m, DET_LIMITS) if v["passed"] is False}
    if damage == "halve_scores":  # threshold-free mAP still ranks the boxes right; the band F1 fails
        assert m["det_map50"] == 1.0  # (its low bound misses on 8 boxes: Wilson 0.68)
        assert {"min_det_band_f1", "min_det_band_f1_low"} <= missed and "min_det_map50" not in missed
    else:
        assert missed == set(DET_LIMITS), (damage, {k: m[k] for k in D.KEYS})
    assert bool(R.misses(m, DET_LIMITS)) is True


def test_bare_int8_fails_and_the_informational_f1_stays(yolo_outputs):
    y, y8, task = yolo_outputs["fp32"], yolo_outputs["int8"], yolo_outputs["task"]
    m = T.metrics(task, [y], [y8])
    assert m["det_f1"] is not None and m["det_recall"] is not None  # still reported
    assert m["det_map50"] < 0.95 and m["det_band_f1_low"] < 0.90
    assert "min_det_band_f1_low" in " ".join(R.misses(m, DET_LIMITS))


def test_band_boxes_count_neither_way():
    # source: one stable box (0.9) and one in the band (0.22); the artifact loses the band box and
    # finds a band-matched box at 0.26 for nothing: band F1 1.0, plain F1 not
    ref = [{"boxes": np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float), "scores": np.array([0.9, 0.22]),
            "classes": np.array([0, 0])}]
    out = [{"boxes": np.array([[0, 0, 10, 10]], float), "scores": np.array([0.88]), "classes": np.array([0])}]
    c = D.band_counts(ref, out, 0.2, 0.3)
    assert (c["tp"].sum(), c["fp"].sum(), c["fn"].sum(), c["ignored"].sum()) == (1, 0, 0, 1)
    out2 = [{"boxes": np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float), "scores": np.array([0.88, 0.26]),
             "classes": np.array([0, 0])}]
    c2 = D.band_counts(ref, out2, 0.2, 0.3)
    assert (c2["tp"].sum(), c2["fp"].sum(), c2["fn"].sum()) == (1, 0, 0)


def test_no_source_box_is_not_applicable_with_reason(yolo_outputs):
    y, task = yolo_outputs["fp32"], yolo_outputs["task"]
    empty = y.copy()
    empty[:, 4:] = 0.0
    m = T.metrics(task, [empty], [y])
    checks = threshold_checks(m, DET_LIMITS)
    assert all(v.startswith("not applicable: the source model finds no box") for v in checks.values()), checks
    assert T.metrics(task, [y], [y])["not_applicable"].get("det_map50") is None


# --------------------------------------------------------------------------- classifiers

def logits(n=40, c=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (n, c)) + 6 * np.eye(c)[rng.integers(0, c, n)]


def test_classifier_gates_agreement_bound_and_probability_distance():
    ref = logits()
    limits = {"min_top1_agreement": 0.8, "min_top1_agreement_low": 0.75, "max_prob_tv": 0.1}
    near = ref * 1.02 + 0.3  # a temperature and a shift: the decision and the probabilities hold
    m = ekit.compare([ref], [near])
    assert m["top1_agreement"] == 1.0 and m["top1_agreement_low"] == pytest.approx(S.wilson_low(40, 40))
    assert m["prob_tv"] < 0.05 and check_thresholds(m, limits) == []
    shuffled = np.random.default_rng(1).permuted(ref, axis=1)  # probabilities shuffled
    bad = ekit.compare([ref], [shuffled])
    assert {v["threshold"] for v in evaluate_thresholds(bad, limits) if v["passed"] is False} == set(limits)
    assert R.misses(bad, limits)
    box = ekit.compare([np.ones((2, 5, 4))], [np.ones((2, 5, 4))])  # not [N, classes]
    assert threshold_checks(box, limits)["max_prob_tv"] == \
        "not applicable: the outputs are not [N, classes] scores"


def test_softmax_outputs_are_compared_as_probabilities():
    p = np.exp(logits())
    p /= p.sum(axis=1, keepdims=True)
    assert ekit.compare([p], [p])["prob_tv"] == 0.0
    assert ekit.compare([p], [np.roll(p, 1, axis=1)])["prob_tv"] > 0.5


def test_raw_cosine_only_where_no_task_judges():
    limits = {"min_raw_cosine": 0.9}
    raw = {"task": "raw", "cosine": 0.5}
    assert check_thresholds(raw, limits) and R.misses(raw, limits)
    cls = {"task": "classify", "cosine": 0.5, "top1_agreement": 1.0}
    assert check_thresholds(cls, limits) == [] and R.misses(cls, limits) == []
    assert threshold_checks(cls, limits)["min_raw_cosine"].startswith("not applicable: the model's task is classify")
    # worded like every gate meant for another task: the summary's "not applicable" line leaves it out
    assert "not the task this metric is for" in threshold_checks(cls, limits)["min_raw_cosine"]


# --------------------------------------------------------------------------- maps

def test_map_bounds_and_blank_maps_decided_by_the_source():
    rng = np.random.default_rng(0)
    ref = np.zeros((12, 1, 32, 32), np.float32)
    for i in range(8):  # 8 maps with two regions, 4 blank
        ref[i, 0, 2:8, 2:12] = ref[i, 0, 20:28, 5:30] = 0.9
    out = ref + rng.normal(0, 1e-3, ref.shape).astype(np.float32)
    m = M.map_metrics(ref, out)
    assert m["region_f1"] == 1.0 and m["region_f1_low"] == pytest.approx(S.wilson_low(16, 16))
    assert m["map_iou"] == 1.0 and m["map_iou_low"] == 1.0
    # int8 noise on the blank maps (the source's norm ~0): not a cosine failure any more
    noisy = out.copy()
    noisy[8:] = rng.uniform(0, 0.05, noisy[8:].shape)
    c = ekit.compare([ref], [noisy])
    assert c["cosine"] > 0.99 and c["cosine_blank"] == 4
    lost = M.map_metrics(ref, np.zeros_like(ref))
    assert lost["region_f1"] == 0.0 and lost["region_f1_low"] == 0.0
    assert ekit.compare([ref], [np.zeros_like(ref)])["cosine"] == 0.0  # a lost map still shows


def test_every_new_gate_is_known_everywhere():
    for name in ("min_det_map50", "min_det_map50_low", "min_det_map", "min_det_band_f1",
                 "min_det_band_f1_low", "min_top1_agreement_low", "max_prob_tv", "min_raw_cosine",
                 "min_region_f1_low", "min_map_iou_low", "min_miou_low"):
        assert name in GATES and name in METRICS, name
        assert R.gate(name) == GATES[name][:2], name


# --------------------------------------------------------------------------- augmentation

def test_too_few_boxes_add_deterministic_variants(yolo_outputs):
    info, files = yolo_outputs["info"], yolo_outputs["aug_files"]
    y, ya, task = yolo_outputs["fp32"], yolo_outputs["aug_fp32"], yolo_outputs["task"]
    n = len(y)
    assert info["units_before"] < 100 and info["images"] > 0 and len(files) == n + info["images"] <= 64
    # the mosaics carry several boxes each: 8 boxes -> >= 150 (54 with whole-image zooms only)
    assert info["units"] >= 150 and info["variants"].get("mosaic3x3", 0) >= 20
    assert all(f.startswith("augmented/") for f in files[n:]) and "mosaic3x3" in files[n]
    assert info["groups"][:n] == list(range(n)) and len(info["groups"]) == len(files)
    assert all(info["groups"][j] == files.index(files[j].split("/", 2)[2]) for j in range(n, len(files)))
    np.testing.assert_array_equal(ya[:n], y)  # the original images first, unchanged
    same = T.metrics(dict(task, augmented=info), [ya], [ya.copy()])
    plain = T.metrics(task, [y], [y.copy()])
    assert same["det_boxes"] == info["units"] and same["det_band_f1_low"] > 0.95 > plain["det_band_f1_low"]
    # the bare int8 still fails on the larger set, with a tighter bound
    bad = T.metrics(dict(task, augmented=info), [ya], [yolo_outputs["aug_int8"]])
    assert bad["det_map50"] < 0.95 and bad["det_band_f1_low"] < 0.90


def test_variants_are_deterministic_and_keep_the_size(yolo_outputs):
    from ekit import augment as A

    pix = yolo_outputs["pixels"][0]
    for name, *_ in A.VARIANTS:
        a, b = A.variant(pix, name), A.variant(pix.copy(), name)
        assert a.shape == pix.shape and a.dtype == np.uint8 and np.array_equal(a, b), name
        assert not np.array_equal(a, pix) and not np.array_equal(a, pix[:, ::-1]), name
    counts = np.array([0, 3, 1, 0])
    # mosaics first (image 1: ceil(3 x 36 / 9) = 12 of them, image 2: 4), then whole-image variants
    assert A.candidates(counts, 5) == [(1, "mosaic3x3-0"), (2, "mosaic3x3-0"), (1, "mosaic3x3-1"),
                                       (2, "mosaic3x3-1"), (1, "mosaic3x3-2")]
    assert len(A.candidates(counts, 100)) == 16 + 2 * len(A.VARIANTS)
    assert A.candidates(counts, 3, mosaics=False) == [(1, A.VARIANTS[0][0]), (2, A.VARIANTS[0][0]),
                                                      (1, A.VARIANTS[1][0])]
    assert A.grid(320, 320) == 3 and A.grid(224, 224) == 2 and A.grid(640, 480) == 4


def test_mosaics_show_the_source_boxes_and_are_deterministic(yolo_outputs):
    """A mosaic tile is the crop centred on a source box, at 1.5x its size first: the source finds
    the object again in every tile of the first mosaic of the astronaut (real YOLOv8n outputs)."""
    from ekit import augment as A

    y, task, pix = yolo_outputs["fp32"], yolo_outputs["task"], yolo_outputs["pixels"]
    boxes = A.unit_boxes(task, [y])
    i = int(np.argmax([len(b) for b in boxes]))
    m0, again = A.mosaic(pix[i], boxes[i], 0), A.mosaic(pix[i].copy(), boxes[i], 0)
    assert m0.shape == pix[i].shape and m0.dtype == np.uint8 and np.array_equal(m0, again)
    assert not np.array_equal(m0, A.mosaic(pix[i], boxes[i], 1))
    # tile 0: box 0 at context 1.5, centred -> the tile is that crop, resized
    from PIL import Image

    x1, y1, x2, y2 = boxes[i][0]
    side = max(x2 - x1, y2 - y1) * 1.5
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    crop = Image.fromarray(pix[i]).crop((round(cx - side / 2), round(cy - side / 2),
                                         round(cx + side / 2), round(cy + side / 2)))
    np.testing.assert_array_equal(m0[:107, :107], np.asarray(crop.resize((107, 107), Image.BILINEAR)))
    files = yolo_outputs["aug_files"]
    j = files.index(f"augmented/mosaic3x3-0/{files[i]}")
    found = M.decode([yolo_outputs["aug_fp32"][j:j + 1]], task["params"])[0]["boxes"]
    assert len(found) >= 4  # several objects in one image: what the mosaics are for
    assert A.unit_boxes({"task": "classify"}, [y]) is None


def test_a_map_gets_whole_image_variants_unless_it_asks_for_mosaics():
    """Mosaics are the default for detectors only (PP-OCRv4 det: text cut at tile borders makes
    fragment regions, docs/gates.md); ``augment_mosaic=1`` asks for them on a map."""
    from ekit import augment as A

    maps = np.zeros((4, 1, 64, 64), np.float32)
    maps[1, 0, 20:30, 10:50] = 0.9  # one region in image 1
    task = {"task": "map", "params": {"threshold": 0.3, "min_region_pixels": 10, "input_hw": [64, 64],
                                      "augment_min_boxes": 5}}
    pix = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    spec = {"shape": [1, 3, 64, 64], "layout": "nchw", "resize": "stretch", "scale": 255}
    data = {"x": ekit.preprocess(pix, spec), "pixels": pix, "labels": np.full(4, -1), "files": list("abcd")}
    source = lambda x: [np.repeat(maps[1:2], len(x), axis=0)]  # noqa: E731  (every variant shows the region)
    np.testing.assert_array_equal(A.unit_boxes(task, [maps])[1], [[10, 20, 50, 30]])
    _, _, info = A.enough(task, data, [maps], source, spec)
    assert "mosaic2x2" not in info["variants"] and info["images"] == 4 and info["groups"] == [0, 1, 2, 3] + [1] * 4
    task["params"]["augment_mosaic"] = 1
    _, _, info = A.enough(task, data, [maps], source, spec)
    assert set(info["variants"]) == {"mosaic2x2"} and "4 mosaic2x2" in info["why"]


def test_the_bounds_resample_photos_with_their_variants():
    """Variants of one photo are not independent: the bootstrap draws a photo with all of them."""
    groups = np.repeat(np.arange(10), 5)  # 10 photos, 5 images each
    w = S.boot_weights(50, groups=groups)
    assert w.shape == (200, 50) and np.array_equal(w, S.boot_weights(50, groups=groups))
    assert all(np.all(w[:, g * 5:(g + 1) * 5] == w[:, [g * 5]]) for g in range(10))
    assert np.allclose(w.sum(axis=1), 50)  # 10 photos drawn, 5 images each
    # every error in one photo's variants: the photo bootstrap is wider than the image bootstrap
    tp, fp, fn = np.full(50, 4.0), np.zeros(50), np.zeros(50)
    fn[:5] = 2.0
    by_photo = S.percentile_low(S.f1_boot(tp, fp, fn, w))
    by_image = S.percentile_low(S.f1_boot(tp, fp, fn, S.boot_weights(50)))
    assert by_photo < by_image < S.f1_counts(tp.sum(), fp.sum(), fn.sum())
    np.testing.assert_array_equal(S.boot_weights(5, groups=[0, 1, 2]), S.boot_weights(5))  # wrong length: images


def test_enough_units_updates_task_json_and_the_gate_reads_it(yolo_outputs, tmp_path, monkeypatch):
    """The source step's call: the augmented set is what evaluate() judges, and it says so. ``run``
    replays the real model's outputs of the same variants (computed in the onnx env above)."""
    import json

    y, ya, task = yolo_outputs["fp32"], yolo_outputs["aug_fp32"], dict(yolo_outputs["task"])
    n = len(y)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work" / "source").mkdir(parents=True)
    gt = [None] * n
    gt[0] = {"boxes": [[0, 0, 10, 10]], "classes": [0]}
    (tmp_path / "work" / "source" / "task.json").write_text(json.dumps(dict(task, gt=gt)))
    spec = {"shape": [1, 3, 320, 320], "layout": "nchw", "resize": "letterbox", "pad": 114, "scale": 255}
    data = {"x": ekit.preprocess(yolo_outputs["pixels"], spec), "pixels": yolo_outputs["pixels"],
            "labels": np.full(n, -1), "files": yolo_outputs["aug_files"][:n]}
    data2, ref2 = T.enough_units(task, data, [y], lambda x: [ya[n:n + len(x)]], spec)
    saved = json.loads((tmp_path / "work" / "source" / "task.json").read_text())
    k = saved["augmented"]["images"]
    assert k == len(ya) - n and len(saved["gt"]) == n + k and saved["gt"][n:] == [None] * k
    assert len(saved["augmented"]["groups"]) == n + k and T.groups(saved) == saved["augmented"]["groups"]
    assert data2["files"] == yolo_outputs["aug_files"] and len(data2["x"]) == len(ref2[0]) == n + k
    m = T.evaluate({"y": ref2, "x": data2["x"], "files": data2["files"]}, [ref2[0].copy()])
    assert m["augmented"] == k and "deterministic variant" in m["augmentation"] and m["det_images"] == n + k
    # enough boxes already, or a classifier: nothing added, and the task says so
    cls = {"task": "classify", "head": None, "params": {}}
    same, _ = T.enough_units(cls, data, [np.zeros((n, 5))], None, spec)
    assert same is data and cls["augmented"] == {"images": 0}
