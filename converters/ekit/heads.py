"""ekit.heads — which task and detection head a model's outputs are (``detect_task``), the task
parameters the validation decodes them with, and how to read them (``describe``; the manifest's
``task.decoding``). Plain Python + numpy; ``ekit.task`` re-exports every name.
"""

from __future__ import annotations

import ast
import math

import numpy as np

from .measure import STRIDES

TASKS = ("classify", "detect", "segment", "map", "raw")
HEADS = ("yolov5", "yolov8", "yolox", "ssd", "e2e")
DEFAULTS = {"score_threshold": 0.25, "nms_iou": 0.45, "match_iou": 0.5, "max_det": 300,
            "map_threshold": 0.3, "min_region_pixels": 10}


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
