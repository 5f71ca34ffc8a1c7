"""ekit_task — task-aware validation: what the model's outputs MEAN, compared artifact vs source.

Plain Python + numpy only (copied next to the converter scripts that import it). A detector's or a
probability map's raw-tensor cosine says little (a detector with every score zeroed keeps a cosine
of 0.99: the box coordinates dominate the norm), so the validate steps also compare what a user
reads from the outputs:

* ``detect_task(outputs, input_hw, metadata, task, head)`` — which task/head the outputs are
  (explicit > Ultralytics metadata > output shapes), with the reason; an unclassifiable model is
  ``raw`` and the reason says which checks were not possible;
* (in ekit_measure) detection: ``decode`` (heads ``yolov5`` ``[N, A, 5+C]`` with objectness, ``yolov8``
  ``[N, 4+C, A]``, ``yolox`` grid-relative ``[N, A, 5+C]`` decoded with strides, ``ssd`` separate
  boxes ``[N, A, 4]`` + scores ``[N, A, C]``, ``e2e`` ``[N, K, 6]`` boxes), score threshold and
  class-aware ``nms``; ``match`` one-to-one at IoU >= 0.5 -> precision / recall / F1 / mean IoU of
  the artifact's boxes against the source's; ``map50`` against ground truth (``ground_truth``
  reads YOLO txt or COCO json and maps the boxes into the model input like the resize did);
* segmentation logits: ``miou`` of the argmax masks; probability maps: ``map_metrics`` — pixel IoU
  after a threshold and region-level F1 (connected components, ``label_regions``);
* ``metrics(task, ref_outputs, outputs, files, gt)`` — THE one call every validate template makes;
  its keys join ``ekit.compare``'s in report.json, ``not_applicable`` says why a metric is absent;
* ``nonfinite_where(outputs, names, files)`` — where NaN/inf values are (output, images).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import detection
from .heads import (DEFAULTS, HEADS, TASKS, _det_params, anchors, describe, detect_task,  # noqa: F401
                    ultralytics_meta)
from .measure import STRIDES, decode, ground_truth, map50, map_metrics, match, miou  # noqa: F401

# det_f1 / det_recall: at the deployment threshold, every box counts (informational since the gate
# moved to detection.KEYS: mAP vs the source's boxes and the ambiguity-band F1, with lower bounds)
DET_KEYS = ("det_precision", "det_recall", "det_f1", "det_mean_iou") + detection.KEYS
MAP_KEYS = ("map_iou", "map_iou_low", "region_f1", "region_f1_low")
TASK_KEYS = {"detect": DET_KEYS, "segment": ("miou", "miou_low"), "map": MAP_KEYS,
             "classify": (), "raw": ()}
ALL_KEYS = DET_KEYS + ("map50", "source_map50", "miou", "miou_low") + MAP_KEYS


# --------------------------------------------------------------------------- the one call

def metrics(task: dict | None, ref_outputs, outputs, gt: list | None = None) -> dict:
    """Task metrics of ``outputs`` (the artifact) against ``ref_outputs`` (the source), same
    samples in the same order; ``gt`` per image for detection mAP@0.5. Every threshold metric of
    the task is a number or None with its reason in ``not_applicable``."""
    task = task or {"task": "raw", "head": None, "reason": "no task was determined", "params": {}}
    kind, p = task["task"], dict(task.get("params") or {})
    res = {"task": kind, "head": task.get("head"), "task_reason": task.get("reason"),
           "task_params": p}
    na = {}
    for key in ALL_KEYS:
        if key not in TASK_KEYS.get(kind, ()):
            na[key] = (f"the model is {kind!r} ({task.get('reason')})" if kind == "raw" else
                       f"the model's task is {kind}, not the task this metric is for")
    bad = [i for i, o in enumerate(outputs) if not np.isfinite(np.asarray(o, dtype=np.float64)).all()]
    if bad and kind != "raw":
        for key in TASK_KEYS.get(kind, ()):
            na[key] = f"NaN/inf values in output(s) {bad} of the artifact"
        res["not_applicable"] = na
        return res
    try:
        if kind == "detect":
            res.update(_detect(p, ref_outputs, outputs, gt, na, groups(task)))
        elif kind == "segment":
            res.update(miou(ref_outputs[0], outputs[0], with_low=True))
        elif kind == "map":
            res.update(map_metrics(ref_outputs[0], outputs[0], float(p["threshold"]),
                                   int(p["min_region_pixels"]), groups=groups(task)))
            for key in ("map_iou", "map_iou_low"):
                if res[key] is None:
                    na[key] = (f"neither source nor artifact has a pixel above "
                               f"{p['threshold']} on these images")
            for key in ("region_f1", "region_f1_low"):
                if res[key] is None:
                    na[key] = (f"the source map has no region above {p['threshold']} "
                               "on these images: give images that contain what it finds")
    except (ValueError, IndexError, KeyError) as e:
        for key in TASK_KEYS.get(kind, ()):
            na[key] = f"the {task.get('head') or kind} outputs could not be decoded: {e}"
    res["not_applicable"] = na
    return res


def groups(task: dict) -> list | None:
    """The photo each image shows (``augmented.groups``, ekit.augment) for the bounds' bootstrap."""
    return (task.get("augmented") or {}).get("groups")


def _detect(p, ref_outputs, outputs, gt, na, photos=None):
    rd, od = decode(ref_outputs, p), decode(outputs, p)
    res = match(rd, od, float(p["match_iou"]))
    res.update(detection.gate_metrics(ref_outputs, outputs, p, rd, od, photos))
    na.update(detection.reasons(res, p))
    if res["det_boxes_source"] == 0:
        for key in DET_KEYS:
            na[key] = (f"the source model finds no box with score >= {p['score_threshold']} on "
                       "these images: give images that contain what it detects")
            res[key] = None
    if gt and any(g is not None for g in gt):
        res["map50"] = map50(od, gt, float(p["match_iou"]))
        res["source_map50"] = map50(rd, gt, float(p["match_iou"]))
        na.pop("map50", None)
        na.pop("source_map50", None)
    else:
        na["map50"] = na["source_map50"] = "no ground-truth boxes (YOLO txt or COCO json) beside the images"
    return res


def nonfinite_where(outputs, names, files) -> str | None:
    """``"output 'x': 12 of 2100 values in a.jpg, b.jpg"`` for every output holding NaN/inf."""
    parts = []
    for k, o in enumerate(outputs):
        a = np.asarray(o, dtype=np.float64)
        bad = ~np.isfinite(a)
        if bad.any():
            per = bad.reshape(a.shape[0], -1).any(axis=1)
            where = [files[i] for i in np.where(per)[0][:5]] if files else []
            more = int(per.sum()) - len(where)
            name = names[k] if names and k < len(names) else k
            parts.append(f"output {name!r}: {int(bad.sum())} of {a.size} values"
                         + (f" in {', '.join(where)}" + (f" and {more} more" if more > 0 else "")
                            if where else ""))
    return "; ".join(parts) or None


# --------------------------------------------------------------------------- the steps' calls

def task_file():
    import ekit

    return ekit.work() / "source" / "task.json"


LETTERBOX_WHY = "the default for a detector (as Ultralytics trains them); --resize crop or stretch to change"


def letterbox_detector(p: dict, ref_outputs, names, spec: dict, metadata: dict | None = None) -> bool:
    """Source step, after the first reference run: a model whose outputs are a detector's and
    whose resize was not given (``spec["resize_auto"]``) is fed letterboxed, pad 114 (Ultralytics'
    convention). Switches ``spec`` in place (its ``resize_why`` says why, the feed sentence
    repeats it); True when it did: the reference inputs must then be loaded again."""
    if not spec.pop("resize_auto", False) or spec.get("resize", "crop") != "crop":
        return False
    import ekit

    opts = p.get("options") or {}
    outs = [{"name": n, "shape": list(np.asarray(y).shape)} for n, y in zip(names, ref_outputs)]
    try:
        task = detect_task(outs, ekit.input_hw(spec)[:2], metadata, opts.get("task"), opts.get("head"))
    except ValueError:
        return False  # write_task reports it
    if task["task"] != "detect":
        return False
    spec.update(resize="letterbox", pad=114, resize_why=LETTERBOX_WHY)
    ekit.log(f"task detect ({task['reason']}): inputs letterboxed, {LETTERBOX_WHY}")
    return True


def write_task(p: dict, ref_outputs, names, spec: dict, metadata: dict | None = None,
               folder=None, files=None) -> dict:
    """Source step: decide the task (``p["options"]`` task/head/task_params win, then metadata,
    then shapes), read ground-truth boxes beside the reference images, write
    ``work/source/task.json``. -> the task dict (also returned for the step's result)."""
    import ekit

    opts = p.get("options") or {}
    hw = ekit.input_hw(spec)[:2]
    outs = [{"name": n, "shape": list(np.asarray(y).shape)} for n, y in zip(names, ref_outputs)]
    try:
        task = detect_task(outs, hw, metadata, opts.get("task"), opts.get("head"))
    except ValueError as e:
        ekit.fail("usage", str(e))
    task["params"].update(opts.get("task_params") or {})
    task["params"]["input_hw"] = list(hw)
    gt, gt_from = None, None
    if task["task"] == "detect" and folder and files and not str(files[0]).startswith("synthetic-"):
        from PIL import Image

        sizes = []
        for f in files:
            with Image.open(Path(folder) / f) as im:
                sizes.append(im.size)
        gt, gt_from = ground_truth(folder, files, sizes, hw, spec.get("resize", "crop"))
        if not gt_from:
            gt = None
    task["ground_truth"] = gt_from
    task["decoding"] = describe(task)
    ekit.write_json(task_file(), dict(task, gt=gt))
    ekit.log(f"task: {task['task']}" + (f" ({task['head']} head)" if task.get("head") else "")
             + f" — {task['reason']}" + (f"; ground truth from {gt_from}" if gt_from else ""))
    return task


def enough_units(task: dict, data: dict, ref_outputs, run, spec: dict, fixed_batch=None):
    """Source step, after ``write_task``: too few source boxes (regions) on the validation images
    -> deterministic variants added (ekit.augment) and work/source/task.json updated (their
    ground truth None, ``augmented`` says what was added). -> (data, ref_outputs): what
    ``write_reference`` must write."""
    import ekit

    from . import augment

    data, ref_outputs, info = augment.enough(task, data, ref_outputs, run, spec, fixed_batch)
    path = task_file()
    saved = json.loads(path.read_text()) if path.is_file() else dict(task)
    if info:
        if saved.get("gt") is not None:
            saved["gt"] = list(saved["gt"]) + [None] * info["images"]
        ekit.log(f"augmented: {info['why']}")
    saved["augmented"] = info or {"images": 0}
    task["augmented"] = saved["augmented"]
    ekit.write_json(path, saved)
    return data, ref_outputs


def evaluate(ref: dict, outputs, names=None) -> dict:
    """Validate steps: THE one call. Task metrics of the artifact's ``outputs`` against the
    reference file's ``ref["y"]`` (task from work/source/task.json, else from the shapes), plus
    ``nonfinite_where``. Its keys join ``ekit.compare``'s."""
    path = task_file()
    if path.is_file():
        task = json.loads(path.read_text())
    else:
        shapes = [{"name": str(i), "shape": list(np.asarray(y).shape)} for i, y in enumerate(ref["y"])]
        x = np.asarray(ref["x"])
        hw = x.shape[2:4] if x.shape[1] in (1, 3) else x.shape[1:3]
        task = detect_task(shapes, hw)
        task["reason"] += " (decided from the reference shapes: the source step wrote no task.json)"
        task["params"]["input_hw"] = list(hw)
    res = metrics(task, ref["y"], outputs, task.get("gt"))
    aug = task.get("augmented") or {}
    res["augmented"] = int(aug.get("images") or 0)
    res["augmentation"] = aug.get("why")
    res["nonfinite_where"] = nonfinite_where(outputs, names, ref.get("files"))
    return res


def summary(m: dict) -> str:
    """One log line of the task metrics."""
    keys = TASK_KEYS.get(m.get("task"), ())
    vals = ", ".join(f"{k} {m[k]:.4f}" if isinstance(m.get(k), float) else f"{k} {m.get(k)}"
                     for k in keys + (("map50", "source_map50") if m.get("map50") is not None else ()))
    text = f"task {m.get('task')}" + (f"/{m['head']}" if m.get("head") else "")
    if m.get("task") == "detect" and m.get("det_boxes_source") is not None:
        band = m.get("det_band") or ["?", "?"]
        vals += (f", boxes {m.get('det_boxes_artifact')} (source {m['det_boxes_source']}, "
                 f"{m.get('det_band_ignored')} in the band [{band[0]}, {band[1]}))")
    if m.get("augmented"):
        vals += f"; {m['augmented']} augmented image(s) added ({m.get('augmentation')})"
    if m.get("task") == "raw":
        vals = "no task check possible: " + str(m.get("task_reason"))
    return f"{text}: {vals}"
