"""ekit_task — task-aware validation: what the model's outputs MEAN, compared artifact vs source.

Plain Python + numpy only (copied next to every converter script, like ekit.py). A detector's or a
probability map's raw-tensor cosine says little (a detector with every score zeroed keeps a cosine
of 0.99: the box coordinates dominate the norm), so the validate steps also compare what a user
reads from the outputs:

* ``detect_task(outputs, input_hw, metadata, task, head)`` — which task/head the outputs are
  (explicit > Ultralytics metadata > output shapes), with the reason; an unclassifiable model is
  ``raw`` and the reason says which checks were not possible;
* detection: ``decode`` (heads ``yolov5`` ``[N, A, 5+C]`` with objectness, ``yolov8``
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

TASKS = ("classify", "detect", "segment", "map", "raw")
HEADS = ("yolov5", "yolov8", "yolox", "ssd", "e2e")
STRIDES = (8, 16, 32)
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


# --------------------------------------------------------------------------- detection

def _xyxy(b):
    cx, cy, bw, bh = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [n,4] with every box in ``b`` [m,4] (x1,y1,x2,y2)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def nms(boxes, scores, classes, iou: float = 0.45, max_det: int = 300) -> np.ndarray:
    """Greedy class-aware NMS; -> indices kept, best score first."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    classes = np.asarray(classes)
    keep = []
    while order.size and len(keep) < max_det:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        if not rest.size:
            break
        same = classes[rest] == classes[i]
        ious = iou_matrix(boxes[i:i + 1], boxes[rest])[0]
        order = rest[~(same & (ious > iou))]
    return np.asarray(keep, dtype=np.int64)


def _one_image(outs: list[np.ndarray], i: int, p: dict):
    """-> (boxes x1y1x2y2 [k,4], scores [k], classes [k]) of image ``i`` before NMS."""
    head, nc = p["head"], p.get("classes")
    y = np.asarray(outs[0][i], dtype=np.float64)
    if head == "yolov8":
        y = y if y.shape[0] < y.shape[1] else y.T  # [4+C, A]; a transposed export too
        nc = nc or y.shape[0] - 4
        boxes, cls = _xyxy(y[:4].T), y[4:4 + nc].T
        scores = cls.max(axis=1)
        classes = cls.argmax(axis=1)
    elif head in ("yolov5", "yolox"):
        nc = nc or y.shape[1] - 5
        if head == "yolox":
            y = _yolox_decode(y, p)
        cls = y[:, 5:5 + nc]
        classes = cls.argmax(axis=1)
        scores = y[:, 4] * cls.max(axis=1)
        boxes = _xyxy(y[:, :4])
    elif head == "ssd":
        b = np.asarray(outs[p.get("boxes_output", 0)][i], dtype=np.float64).reshape(-1, 4)
        s = np.asarray(outs[p.get("scores_output", 1)][i], dtype=np.float64)
        s = s.reshape(b.shape[0], -1)
        first = int(p.get("first_class", 0))  # 1 when class 0 is the background
        s = s[:, first:]
        boxes, scores, classes = b, s.max(axis=1), s.argmax(axis=1) + first
    elif head == "e2e":
        y = y.reshape(-1, y.shape[-1])
        boxes, scores, classes = y[:, :4], y[:, 4], y[:, 5].astype(np.int64)
    else:
        raise ValueError(f"unknown head {head!r}")
    return boxes, scores, classes


def _yolox_decode(y, p):
    """YOLOX export with decode_in_inference=False: xy are cell offsets, wh log-sizes."""
    h, w = p["input_hw"]
    grids, strides = [], []
    for s in p.get("strides") or STRIDES:
        gh, gw = math.ceil(h / s), math.ceil(w / s)
        yv, xv = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grids.append(np.stack([xv, yv], axis=-1).reshape(-1, 2))
        strides.append(np.full((gh * gw, 1), s))
    g, st = np.concatenate(grids), np.concatenate(strides)
    if g.shape[0] != y.shape[0]:
        raise ValueError(f"YOLOX head: {y.shape[0]} predictions but the strides give {g.shape[0]}")
    y = y.copy()
    y[:, :2] = (y[:, :2] + g) * st
    y[:, 2:4] = np.exp(np.clip(y[:, 2:4], -50, 50)) * st
    return y


def decode(outs: list[np.ndarray], p: dict) -> list[dict]:
    """Every image's detections after the score threshold and NMS:
    ``[{"boxes": [k,4] x1y1x2y2 in input pixels, "scores": [k], "classes": [k]}]``."""
    n = int(np.asarray(outs[0]).shape[0])
    result = []
    for i in range(n):
        boxes, scores, classes = _one_image(outs, i, p)
        ok = np.isfinite(scores) & (scores >= float(p["score_threshold"])) & \
            np.isfinite(boxes).all(axis=1)
        boxes, scores, classes = boxes[ok], scores[ok], classes[ok]
        if p["head"] != "e2e" and boxes.shape[0]:
            top = np.argsort(-scores, kind="stable")[:30000]
            boxes, scores, classes = boxes[top], scores[top], classes[top]
            keep = nms(boxes, scores, classes, float(p["nms_iou"]), int(p["max_det"]))
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        result.append({"boxes": boxes, "scores": scores, "classes": classes.astype(np.int64)})
    return result


def match(ref: list[dict], out: list[dict], iou: float = 0.5) -> dict:
    """One-to-one greedy matching (same class, IoU >= ``iou``, highest IoU first) of the
    artifact's detections ``out`` against the source's ``ref``: the source is the truth."""
    tp, ious, n_ref, n_out = 0, [], [], []
    for r, o in zip(ref, out):
        n_ref.append(len(r["scores"]))
        n_out.append(len(o["scores"]))
        if not len(r["scores"]) or not len(o["scores"]):
            continue
        m = iou_matrix(r["boxes"], o["boxes"])
        m[r["classes"][:, None] != o["classes"][None, :]] = 0.0
        pairs = np.argwhere(m >= iou)
        pairs = pairs[np.argsort(-m[pairs[:, 0], pairs[:, 1]], kind="stable")]
        used_r, used_o = set(), set()
        for a, b in pairs:
            if a in used_r or b in used_o:
                continue
            used_r.add(a)
            used_o.add(b)
            ious.append(m[a, b])
        tp += len(used_r)
    total_ref, total_out = sum(n_ref), sum(n_out)
    precision = tp / total_out if total_out else (1.0 if not total_ref else 0.0)
    recall = tp / total_ref if total_ref else None
    f1 = (2 * precision * recall / (precision + recall) if precision + recall else 0.0) \
        if recall is not None else None
    return {"det_precision": precision, "det_recall": recall, "det_f1": f1,
            "det_mean_iou": float(np.mean(ious)) if ious else None, "det_matched": tp,
            "det_boxes_source": total_ref, "det_boxes": total_out,
            "det_boxes_per_image_source": n_ref, "det_boxes_per_image": n_out}


def map50(dets: list[dict], gt: list[dict | None], iou: float = 0.5) -> float | None:
    """mAP@0.5 (all-point interpolated AP, mean over the classes with ground truth) of ``dets``
    against ``gt`` (``{"boxes", "classes"}`` per image, None = image not labelled)."""
    classes = sorted({int(c) for g in gt if g for c in g["classes"]})
    if not classes:
        return None
    aps = []
    for c in classes:
        records, n_gt = [], 0
        for d, g in zip(dets, gt):
            if g is None:
                continue
            gb = np.asarray(g["boxes"], dtype=np.float64).reshape(-1, 4)[np.asarray(g["classes"]) == c]
            n_gt += len(gb)
            sel = d["classes"] == c
            db, ds = d["boxes"][sel], d["scores"][sel]
            order = np.argsort(-ds, kind="stable")
            m = iou_matrix(db[order], gb) if len(gb) else np.zeros((len(order), 0))
            taken = np.zeros(len(gb), dtype=bool)
            for k, j in enumerate(order):
                hit = False
                if m.shape[1]:
                    cand = np.where(~taken, m[k], -1.0)
                    best = int(cand.argmax())
                    if cand[best] >= iou:
                        taken[best] = hit = True
                records.append((float(ds[j]), hit))
        if not n_gt:
            continue
        records.sort(key=lambda t: -t[0])
        hits = np.asarray([h for _, h in records], dtype=np.float64)
        tpc, fpc = np.cumsum(hits), np.cumsum(1 - hits)
        rec = tpc / n_gt if len(hits) else np.zeros(0)
        prec = tpc / np.maximum(tpc + fpc, 1e-12) if len(hits) else np.zeros(0)
        mrec = np.concatenate([[0.0], rec, [1.0]])
        mpre = np.concatenate([[1.0], prec, [0.0]])
        mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
        idx = np.where(mrec[1:] != mrec[:-1])[0]
        aps.append(float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1])))
    return float(np.mean(aps)) if aps else None


# --------------------------------------------------------------------------- ground truth

def _geometry(orig_wh, model_hw, resize):
    """(sx, sy, dx, dy): input-pixel = original-pixel * s + d, for the resize modes of ekit."""
    import ekit

    nw, nh, left, top = ekit.resize_geometry(orig_wh, model_hw, resize)
    return nw / orig_wh[0], nh / orig_wh[1], left, top


def ground_truth(folder, files: list[str], sizes: list[tuple[int, int]], model_hw, resize: str):
    """Boxes per file in model-input pixels (x1,y1,x2,y2) from YOLO txt (``<stem>.txt`` beside
    the image or under a ``labels/`` folder: ``class cx cy w h`` normalised) or a COCO json in
    the folder (``bbox`` x,y,w,h in pixels; classes numbered in sorted category-id order).
    -> (list of ``{"boxes", "classes"}`` or None per file, "yolo txt" | "coco json" | None)."""
    root = Path(folder)
    coco = _coco(root)
    found, kind = [], None
    for rel, (w, h) in zip(files, sizes):
        boxes = classes = None
        if coco is not None:
            entry = coco.get(Path(rel).name)
            if entry is not None:
                boxes, classes, kind = entry[0], entry[1], "coco json"
        else:
            for cand in (root / Path(rel).with_suffix(".txt"),
                         root / "labels" / (Path(rel).stem + ".txt")):
                if cand.is_file():
                    rows = [ln.split() for ln in cand.read_text().splitlines() if ln.strip()]
                    a = np.asarray([[float(v) for v in r[:5]] for r in rows]).reshape(-1, 5)
                    classes = a[:, 0].astype(np.int64)
                    b = a[:, 1:] * [w, h, w, h]
                    boxes, kind = _xyxy(b), "yolo txt"
                    break
        if boxes is None:
            found.append(None)
            continue
        sx, sy, dx, dy = _geometry((w, h), model_hw, resize)
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * [sx, sy, sx, sy] + [dx, dy, dx, dy]
        found.append({"boxes": b.tolist(), "classes": [int(c) for c in classes]})
    return found, kind


def _coco(root: Path):
    for f in sorted(root.glob("*.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not (isinstance(d, dict) and "images" in d and "annotations" in d):
            continue
        cats = sorted({int(a["category_id"]) for a in d["annotations"]} |
                      {int(c["id"]) for c in d.get("categories", [])})
        index = {c: i for i, c in enumerate(cats)}
        names = {im["id"]: Path(im["file_name"]).name for im in d["images"]}
        table = {n: ([], []) for n in names.values()}
        for a in d["annotations"]:
            x, y, bw, bh = a["bbox"]
            table[names[a["image_id"]]][0].append([x, y, x + bw, y + bh])
            table[names[a["image_id"]]][1].append(index[int(a["category_id"])])
        return table
    return None


# --------------------------------------------------------------------------- dense outputs

def miou(ref, out) -> float:
    """Mean IoU of the argmax masks of segmentation logits ``[N, C, H, W]`` (classes present in
    either mask; intersections and unions summed over the images)."""
    r = np.asarray(ref).argmax(axis=1)
    o = np.asarray(out).argmax(axis=1)
    ious = []
    for c in np.union1d(np.unique(r), np.unique(o)):
        inter = np.logical_and(r == c, o == c).sum()
        union = np.logical_or(r == c, o == c).sum()
        if union:
            ious.append(inter / union)
    return float(np.mean(ious)) if ious else 1.0


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a 2-D boolean mask (runs per row joined by union-find; scipy is
    not in every image). -> (labels int32 [H, W], 0 = background, count)."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    parent: list[int] = []

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    runs_by_row = []
    for y in range(h):
        row = np.concatenate([[False], mask[y], [False]]).astype(np.int8)
        d = np.diff(row)
        starts, ends = np.where(d == 1)[0], np.where(d == -1)[0]  # [start, end)
        runs = []
        prev = runs_by_row[-1] if runs_by_row else []
        k = 0
        for s, e in zip(starts, ends):
            rid = len(parent)
            parent.append(rid)
            while k < len(prev) and prev[k][1] < s:  # prev run ends before s-1 (8-connectivity)
                k += 1
            j = k
            while j < len(prev) and prev[j][0] <= e:
                a, b = find(rid), find(prev[j][2])
                if a != b:
                    parent[max(a, b)] = min(a, b)
                j += 1
            runs.append((s, e, rid))
        runs_by_row.append(runs)
    roots, labels = {}, np.zeros((h, w), dtype=np.int32)
    for y, runs in enumerate(runs_by_row):
        for s, e, rid in runs:
            r = find(rid)
            labels[y, s:e] = roots.setdefault(r, len(roots) + 1)
    return labels, len(roots)


def _regions(mask, min_pixels):
    labels, n = label_regions(mask)
    if not n:
        return []
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    return [labels == k for k in range(1, n + 1) if counts[k] >= min_pixels]


def map_metrics(ref, out, threshold: float = 0.3, min_pixels: int = 10, iou: float = 0.5) -> dict:
    """Probability maps ``[N, 1, H, W]`` (or ``[N, H, W]``): pixel IoU of the masks above
    ``threshold`` (summed over images) and region F1 (8-connected regions of at least
    ``min_pixels``, matched one-to-one at IoU >= ``iou``, the source's regions as truth)."""
    r = np.asarray(ref, dtype=np.float64)
    o = np.asarray(out, dtype=np.float64)
    r = r.reshape(r.shape[0], r.shape[-2], r.shape[-1])
    o = o.reshape(r.shape)
    rm, om = r > threshold, o > threshold
    inter, union = np.logical_and(rm, om).sum(), np.logical_or(rm, om).sum()
    res = {"map_iou": float(inter / union) if union else None,
           "map_pixels_source": int(rm.sum()), "map_pixels": int(om.sum())}
    tp = n_ref = n_out = 0
    for a, b in zip(rm, om):
        ra, rb = _regions(a, min_pixels), _regions(b, min_pixels)
        n_ref += len(ra)
        n_out += len(rb)
        if not ra or not rb:
            continue
        m = np.zeros((len(ra), len(rb)))
        for i, x in enumerate(ra):
            for j, y in enumerate(rb):
                inter = np.logical_and(x, y).sum()
                if inter:
                    m[i, j] = inter / np.logical_or(x, y).sum()
        pairs = sorted(((m[i, j], i, j) for i, j in np.argwhere(m >= iou)), reverse=True)
        used_i, used_j = set(), set()
        for _, i, j in pairs:
            if i not in used_i and j not in used_j:
                used_i.add(i)
                used_j.add(j)
        tp += len(used_i)
    precision = tp / n_out if n_out else (1.0 if not n_ref else 0.0)
    recall = tp / n_ref if n_ref else None
    res.update(regions_source=n_ref, regions=n_out,
               region_f1=(2 * precision * recall / (precision + recall) if precision + recall
                          else 0.0) if recall is not None else None)
    return res


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
