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

import ast
import json
import math
from pathlib import Path

import numpy as np

from .measure import STRIDES, decode, ground_truth, map50, map_metrics, match, miou

TASKS = ("classify", "detect", "segment", "map", "raw")
HEADS = ("yolov5", "yolov8", "yolox", "ssd", "e2e")
DEFAULTS = {"score_threshold": 0.25, "nms_iou": 0.45, "match_iou": 0.5, "max_det": 300,
            "map_threshold": 0.3, "min_region_pixels": 10}
DET_KEYS = ("det_precision", "det_recall", "det_f1", "det_mean_iou")
TASK_KEYS = {"detect": DET_KEYS, "segment": ("miou",), "map": ("map_iou", "region_f1"),
             "classify": (), "raw": ()}
ALL_KEYS = DET_KEYS + ("map50", "source_map50", "miou", "map_iou", "region_f1")


# --------------------------------------------------------------------------- what the model is

def _dims(shape):
    return [int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else None for d in shape]


def anchors(h: int, w: int, strides=STRIDES) -> int:
    """Grid cells over the strides (Ultralytics/YOLOX: one prediction per cell)."""
    return sum(math.ceil(h / s) * math.ceil(w / s) for s in strides)


def ultralytics_meta(props: dict) -> dict:
    """Ultralytics ONNX metadata (``task``, ``imgsz``, ``stride``, ``names``) -> plain values;
    ``{}`` when the model has none."""
    if not props or "task" not in props:
        return {}
    out = {"task": str(props["task"]), "author": props.get("author")}
    for key in ("imgsz", "names", "stride"):
        if key in props:
            try:
                out[key] = ast.literal_eval(str(props[key]))
            except (ValueError, SyntaxError):
                out[key] = props[key]
    if isinstance(out.get("names"), dict):
        out["nc"] = len(out["names"])
    return out


def detect_task(outputs: list[dict], input_hw, metadata: dict | None = None,
                task: str | None = None, head: str | None = None) -> dict:
    """Which task and (detection) head the model's outputs are, and why.

    ``outputs``: ``[{"name", "shape"}]`` with the shapes of real outputs (the reference run);
    ``input_hw``: (H, W) of the model input; ``metadata``: the ONNX metadata_props dict.
    -> ``{"task", "head", "reason", "params": {...}}``.
    """
    h, w = int(input_hw[0]), int(input_hw[1])
    meta = ultralytics_meta(metadata or {})
    shapes = [_dims(o["shape"]) for o in outputs]
    given = []
    if task:
        given.append(f"--task {task}")
    if head:
        given.append(f"--head {head}")
        task = task or "detect"
    if task and task not in TASKS:
        raise ValueError(f"unknown task {task!r} ({'|'.join(TASKS)})")
    if head and head not in HEADS:
        raise ValueError(f"unknown head {head!r} ({'|'.join(HEADS)})")
    if task in ("classify", "raw", "segment", "map"):
        return {"task": task, "head": None, "reason": f"given ({', '.join(given)})",
                "params": _task_params(task, {})}
    if task == "detect" and head:
        params = _head_params(head, shapes, h, w, meta)
        return {"task": "detect", "head": head, "reason": f"given ({', '.join(given)})",
                "params": params}
    if meta.get("task") in ("detect", "segment", "pose", "obb") and shapes:
        s = shapes[0]
        nc = meta.get("nc")
        a = anchors(h, w)
        if len(s) == 3 and s[2] == a and nc and s[1] >= 4 + nc:
            extra = s[1] - 4 - nc
            why = (f"Ultralytics metadata task={meta['task']}, {nc} names, output "
                   f"{outputs[0]['name']!r} {s} = [N, 4+{nc}{'+' + str(extra) if extra else ''}, "
                   f"{a} anchors at strides {list(STRIDES)}]")
            if meta["task"] != "detect":
                why += f"; only its boxes are checked (the {meta['task']} extras are not)"
            return {"task": "detect", "head": "yolov8", "reason": why,
                    "params": _det_params("yolov8", nc)}
    guess = _guess(shapes, outputs, h, w, meta)
    if guess:
        if task == "detect" and guess["task"] != "detect":
            return _raw(f"--task detect was given but no detection head matches the outputs "
                        f"{shapes}; pass --head")
        return guess
    if task == "detect":
        return _raw(f"--task detect was given but no detection head matches the outputs "
                    f"{shapes}; pass --head (one of {', '.join(HEADS)})")
    return _raw(f"no task matches the outputs {shapes} (input {h}x{w}); "
                "pass --task/--head to check boxes, masks or maps")


def describe(task: dict) -> str:
    """How to read the outputs exactly as validated (the manifest's ``task.decoding``)."""
    p, head = task.get("params") or {}, task.get("head")
    if task.get("task") == "detect":
        layout = {"yolov8": "[N, 4+C, A]: rows 0-3 box centre x, y, width, height in input pixels, "
                            "then C class scores; score = max class score",
                  "yolov5": "[N, A, 5+C]: box centre x, y, width, height in input pixels, "
                            "objectness, C class scores; score = objectness x max class score",
                  "yolox": "[N, A, 5+C] grid-relative: x, y = (value + cell) x stride, w, h = "
                           f"exp(value) x stride for strides {p.get('strides')} (row-major cells), "
                           "objectness, C class scores; score = objectness x max class score",
                  "ssd": "boxes [N, A, 4] as x1, y1, x2, y2 and scores [N, A, C]; score = max "
                         "class score",
                  "e2e": "[N, K, 6]: x1, y1, x2, y2, score, class (NMS already inside)"}[head]
        text = (f"{head} head, output {layout}; keep boxes with score >= {p.get('score_threshold')}"
                + ("" if head == "e2e" else f", class-aware NMS at IoU {p.get('nms_iou')}, at most "
                   f"{p.get('max_det')} boxes"))
        return text + "; boxes are in model-input pixels (undo the resize/letterbox to map them back)."
    if task.get("task") == "map":
        return (f"probability map [N, 1, H, W]: pixels > {p.get('threshold')} are foreground; "
                f"regions = 8-connected components of at least {p.get('min_region_pixels')} pixels.")
    if task.get("task") == "segment":
        return "segmentation logits [N, C, H, W]: the class of a pixel is the argmax over C."
    if task.get("task") == "classify":
        return "class scores [N, C]: the class is the argmax."
    return "raw outputs: edgekiln compared the tensors only (cosine, max/mean abs difference)."


def _raw(reason):
    return {"task": "raw", "head": None, "reason": reason, "params": {}}


def _task_params(task, extra):
    if task == "map":
        return {"threshold": DEFAULTS["map_threshold"],
                "min_region_pixels": DEFAULTS["min_region_pixels"], **extra}
    return dict(extra)


def _det_params(head, nc, **extra):
    return {"head": head, "classes": nc, "score_threshold": DEFAULTS["score_threshold"],
            "nms_iou": DEFAULTS["nms_iou"], "match_iou": DEFAULTS["match_iou"],
            "max_det": DEFAULTS["max_det"], "box_format": "xyxy" if head in ("ssd", "e2e") else "cxcywh",
            **extra}


def _head_params(head, shapes, h, w, meta):
    s = shapes[0] if shapes else []
    if head == "yolov8":
        nc = meta.get("nc") or (s[1] - 4 if len(s) == 3 and s[1] else None)
        return _det_params(head, nc)
    if head in ("yolov5", "yolox"):
        nc = s[2] - 5 if len(s) == 3 and s[2] else None
        extra = {"strides": list(STRIDES)} if head == "yolox" else {}
        return _det_params(head, nc, **extra)
    if head == "ssd":
        nc = shapes[1][2] if len(shapes) > 1 and len(shapes[1]) == 3 else None
        return _det_params(head, nc)
    return _det_params(head, None)


def _guess(shapes, outputs, h, w, meta):
    a = anchors(h, w)
    if len(shapes) == 2 and all(len(s) == 3 for s in shapes):
        (b, bs), (c, cs) = ((0, shapes[0]), (1, shapes[1]))
        if bs[2] != 4 and cs[2] == 4:
            (b, bs), (c, cs) = (c, cs), (b, bs)
        if bs[2] == 4 and cs[1] == bs[1] and cs[2] and cs[2] >= 1:
            return {"task": "detect", "head": "ssd",
                    "reason": f"two outputs: boxes {outputs[b]['name']!r} {bs} = [N, A, 4] and "
                              f"scores {outputs[c]['name']!r} {cs} = [N, A, C] (SSD/RetinaNet-style, "
                              "boxes read as decoded x1,y1,x2,y2)",
                    "params": _det_params("ssd", cs[2], boxes_output=b, scores_output=c)}
    if len(shapes) < 1:
        return None
    s = shapes[0]
    name = outputs[0]["name"]
    rest = [d for d in s[1:] if d != 1]
    if len(shapes) == 1 and len(rest) == 1 and rest[0] and rest[0] >= 2:
        return {"task": "classify", "head": None,
                "reason": f"one output {name!r} {s} = [N, {rest[0]} classes]", "params": {}}
    if len(s) == 3 and s[1] and s[2]:
        if s[1] == 3 * a and s[2] > 5:
            return {"task": "detect", "head": "yolov5",
                    "reason": f"output {name!r} {s} = [N, 3 anchors x {a} cells at strides "
                              f"{list(STRIDES)}, 5+{s[2] - 5}] (YOLOv5/v7: box, objectness, classes)",
                    "params": _det_params("yolov5", s[2] - 5)}
        if s[1] == a and s[2] > 5:
            return {"task": "detect", "head": "yolox",
                    "reason": f"output {name!r} {s} = [N, {a} cells at strides {list(STRIDES)}, "
                              f"5+{s[2] - 5}] (YOLOX: grid-relative boxes, decoded with the strides)",
                    "params": _det_params("yolox", s[2] - 5, strides=list(STRIDES))}
        if s[2] == a and s[1] > 4:
            return {"task": "detect", "head": "yolov8",
                    "reason": f"output {name!r} {s} = [N, 4+{s[1] - 4}, {a} anchors at strides "
                              f"{list(STRIDES)}] (YOLOv8/v11: boxes, class scores, no objectness)",
                    "params": _det_params("yolov8", s[1] - 4)}
        if s[2] in (6, 7) and s[1] <= 1000 and s[1] != a:
            return {"task": "detect", "head": "e2e",
                    "reason": f"output {name!r} {s} = [N, {s[1]} boxes, x1 y1 x2 y2 score class] "
                              "(end-to-end, NMS inside the model)",
                    "params": _det_params("e2e", None)}
    if len(s) == 4 and len(shapes) == 1 and s[2] and s[3]:
        c, oh, ow = s[1], s[2], s[3]
        if oh * w == ow * h and h % oh == 0 and oh >= h // 8:
            if c == 1:
                return {"task": "map", "head": None,
                        "reason": f"one output {name!r} {s} = [N, 1, H, W], {oh}x{ow} for an "
                                  f"{h}x{w} input: a probability map",
                        "params": _task_params("map", {})}
            if c and c >= 2:
                return {"task": "segment", "head": None,
                        "reason": f"one output {name!r} {s} = [N, {c} classes, H, W], {oh}x{ow} "
                                  f"for an {h}x{w} input: segmentation logits",
                        "params": {}}
    return None


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
            res.update(_detect(p, ref_outputs, outputs, gt, na))
        elif kind == "segment":
            res["miou"] = miou(ref_outputs[0], outputs[0])
        elif kind == "map":
            res.update(map_metrics(ref_outputs[0], outputs[0], float(p["threshold"]),
                                   int(p["min_region_pixels"])))
            if res["map_iou"] is None:
                na["map_iou"] = (f"neither source nor artifact has a pixel above "
                                 f"{p['threshold']} on these images")
            if res["region_f1"] is None:
                na["region_f1"] = (f"the source map has no region above {p['threshold']} "
                                   "on these images: give images that contain what it finds")
    except (ValueError, IndexError, KeyError) as e:
        for key in TASK_KEYS.get(kind, ()):
            na[key] = f"the {task.get('head') or kind} outputs could not be decoded: {e}"
    res["not_applicable"] = na
    return res


def _detect(p, ref_outputs, outputs, gt, na):
    rd, od = decode(ref_outputs, p), decode(outputs, p)
    res = match(rd, od, float(p["match_iou"]))
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
    res["nonfinite_where"] = nonfinite_where(outputs, names, ref.get("files"))
    return res


def summary(m: dict) -> str:
    """One log line of the task metrics."""
    keys = TASK_KEYS.get(m.get("task"), ())
    vals = ", ".join(f"{k} {m[k]:.4f}" if isinstance(m.get(k), float) else f"{k} {m.get(k)}"
                     for k in keys + (("map50", "source_map50") if m.get("map50") is not None else ()))
    text = f"task {m.get('task')}" + (f"/{m['head']}" if m.get("head") else "")
    if m.get("task") == "detect" and m.get("det_boxes_source") is not None:
        vals += f", boxes {m['det_boxes']} (source {m['det_boxes_source']})"
    if m.get("task") == "raw":
        vals = "no task check possible: " + str(m.get("task_reason"))
    return f"{text}: {vals}"
