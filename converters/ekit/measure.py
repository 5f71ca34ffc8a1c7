"""ekit_measure — the measurements behind ekit_task: detection heads decoded, class-aware NMS,
one-to-one matching, mAP@0.5, ground-truth boxes mapped into the model input, mIoU of argmax masks,
pixel IoU and region F1 of probability maps (with a connected-component labeller: scipy is not in
every image). Plain Python + numpy (copied next to the converter scripts that import it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from . import stats

STRIDES = (8, 16, 32)


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
            "det_boxes_source": total_ref, "det_boxes_artifact": total_out,
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

def miou(ref, out, with_low: bool = False):
    """Mean IoU of the argmax masks of segmentation logits ``[N, C, H, W]`` (classes present in
    either mask; intersections and unions summed over the images). ``with_low``: ->
    ``{"miou", "miou_low"}`` with the image-bootstrap 2.5th percentile (ekit.stats)."""
    r = np.asarray(ref).argmax(axis=1)
    o = np.asarray(out).argmax(axis=1)
    classes = np.union1d(np.unique(r), np.unique(o))
    inter = np.asarray([[np.logical_and(a == c, b == c).sum() for c in classes] for a, b in zip(r, o)],
                       dtype=np.float64).reshape(len(r), -1)
    union = np.asarray([[np.logical_or(a == c, b == c).sum() for c in classes] for a, b in zip(r, o)],
                       dtype=np.float64).reshape(len(r), -1)

    def value(w):
        i, u = w @ inter, w @ union
        with np.errstate(invalid="ignore", divide="ignore"):
            per = np.where(u > 0, i / np.where(u > 0, u, 1), np.nan)
        cnt = (u > 0).sum(axis=1)
        return np.where(cnt > 0, np.nansum(per, axis=1) / np.maximum(cnt, 1), 1.0)

    v = float(value(np.ones((1, len(r))))[0])
    if not with_low:
        return v
    return {"miou": v, "miou_low": stats.percentile_low(value(stats.boot_weights(len(r))))}


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


def map_metrics(ref, out, threshold: float = 0.3, min_pixels: int = 10, iou: float = 0.5,
                groups=None) -> dict:
    """Probability maps ``[N, 1, H, W]`` (or ``[N, H, W]``): pixel IoU of the masks above
    ``threshold`` (summed over images) and region F1 (8-connected regions of at least
    ``min_pixels``, matched one-to-one at IoU >= ``iou``, the source's regions as truth); bounds
    bootstrap the photos (``groups``: ``stats.boot_weights``)."""
    r = np.asarray(ref, dtype=np.float64)
    o = np.asarray(out, dtype=np.float64)
    r = r.reshape(r.shape[0], r.shape[-2], r.shape[-1])
    o = o.reshape(r.shape)
    rm, om = r > threshold, o > threshold
    inter = np.logical_and(rm, om).reshape(len(rm), -1).sum(axis=1).astype(np.float64)
    union = np.logical_or(rm, om).reshape(len(rm), -1).sum(axis=1).astype(np.float64)
    res = {"map_iou": float(inter.sum() / union.sum()) if union.sum() else None,
           "map_pixels_source": int(rm.sum()), "map_pixels": int(om.sum())}
    w = stats.boot_weights(len(rm), groups=groups)
    res["map_iou_low"] = (stats.percentile_low(stats.ratio_boot(inter, union, w))
                          if res["map_iou"] is not None else None)
    tps, n_refs, n_outs = [], [], []
    for a, b in zip(rm, om):
        ra, rb = _regions(a, min_pixels), _regions(b, min_pixels)
        n_refs.append(len(ra))
        n_outs.append(len(rb))
        tps.append(0)
        if not ra or not rb:
            continue
        m = np.zeros((len(ra), len(rb)))
        for i, x in enumerate(ra):
            for j, y in enumerate(rb):
                both = np.logical_and(x, y).sum()
                if both:
                    m[i, j] = both / np.logical_or(x, y).sum()
        pairs = sorted(((m[i, j], i, j) for i, j in np.argwhere(m >= iou)), reverse=True)
        used_i, used_j = set(), set()
        for _, i, j in pairs:
            if i not in used_i and j not in used_j:
                used_i.add(i)
                used_j.add(j)
        tps[-1] = len(used_i)
    tp, n_ref, n_out = sum(tps), sum(n_refs), sum(n_outs)
    precision = tp / n_out if n_out else (1.0 if not n_ref else 0.0)
    recall = tp / n_ref if n_ref else None
    res.update(regions_source=n_ref, regions=n_out,
               region_f1=(2 * precision * recall / (precision + recall) if precision + recall
                          else 0.0) if recall is not None else None)
    t, fp, fn = np.asarray(tps, float), np.asarray(n_outs, float) - tps, np.asarray(n_refs, float) - tps
    res["region_f1_low"] = stats.f1_low(t, fp, fn, w) if n_ref else None
    return res
