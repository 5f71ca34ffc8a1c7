"""ekit.detection — the detection gate: the artifact judged against the SOURCE's own predictions
(pseudo-labels: no labelled data needed), threshold-free and with confidence bounds (docs/gates.md).

* ``det_map50`` / ``det_map``: mAP@0.5 and mAP@0.5:0.95 (COCO-style: all-point interpolated AP per
  class, mean over the classes the source finds) of the artifact's boxes decoded at a LOW score
  threshold (``map_score_threshold``, 0.001) and ranked by score, against the source's boxes at the
  deployment threshold (``score_threshold``, 0.25) as ground truth. Identical outputs give exactly 1;
  a score that drops below the deployment threshold costs nothing as long as the ranking holds;
* ``det_band_f1``: F1 at the deployment threshold with an ambiguity band: source boxes whose score
  lies in [t (1 - band), t (1 + band)) (``band`` 0.2: [0.20, 0.30) for t = 0.25) count neither
  way, and the artifact boxes matched to them neither. Such boxes flip on any kernel change (fp16
  or a different CPU flips them too); what is left must agree;
* ``*_low``: the lower bound the gates compare (``ekit.stats.low_bound``: bootstrap 2.5th
  percentile — over photos, a photo with its augmented variants — and Wilson on the boxes, the
  smaller);
* ``det_boxes``: the source boxes (>= t) the judgement rests on; ``det_band_boxes`` those outside
  the band; ``det_band_ignored`` those inside it.
"""

from __future__ import annotations

import numpy as np

from . import stats
from .measure import decode, iou_matrix

IOUS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))  # COCO's 0.50:0.05:0.95
GATE_DEFAULTS = {"map_score_threshold": 0.001, "band": 0.2}
KEYS = ("det_map50", "det_map50_low", "det_map", "det_band_f1", "det_band_f1_low")


def pairs(r: dict, o: dict, iou: float = 0.5) -> list[tuple[int, int]]:
    """One-to-one greedy matching of one image (same class, IoU >= ``iou``, highest IoU first)
    -> [(source index, artifact index)]."""
    if not len(r["scores"]) or not len(o["scores"]):
        return []
    m = iou_matrix(r["boxes"], o["boxes"])
    m[np.asarray(r["classes"])[:, None] != np.asarray(o["classes"])[None, :]] = 0.0
    cand = np.argwhere(m >= iou)
    cand = cand[np.argsort(-m[cand[:, 0], cand[:, 1]], kind="stable")]
    used_r, used_o, out = set(), set(), []
    for a, b in cand:
        if a in used_r or b in used_o:
            continue
        used_r.add(int(a))
        used_o.add(int(b))
        out.append((int(a), int(b)))
    return out


# --------------------------------------------------------------------------- mAP vs pseudo-labels

def ap_records(gt: list[dict], dets: list[dict], ious=IOUS) -> dict:
    """Per class: the artifact's detections ranked by score with, per IoU threshold, whether each
    one is a true positive (COCO: greedy per image in score order, each gt box taken once), and
    the number of gt boxes per image. -> {class: {"score", "image", "hits" [k, len(ious)],
    "n_gt" [n_images]}} for every class that has gt boxes."""
    n = len(gt)
    classes = sorted({int(c) for g in gt for c in np.asarray(g["classes"]).reshape(-1)})
    out = {}
    for c in classes:
        scores, images, hits, n_gt = [], [], [], np.zeros(n)
        for i, (g, d) in enumerate(zip(gt, dets)):
            gb = np.asarray(g["boxes"], dtype=np.float64).reshape(-1, 4)[np.asarray(g["classes"]) == c]
            n_gt[i] = len(gb)
            sel = np.asarray(d["classes"]) == c
            db, ds = np.asarray(d["boxes"]).reshape(-1, 4)[sel], np.asarray(d["scores"])[sel]
            if not len(ds):
                continue
            order = np.argsort(-ds, kind="stable")
            h = np.zeros((len(order), len(ious)), dtype=bool)
            if len(gb):
                m = iou_matrix(db[order], gb)
                for t, thr in enumerate(ious):
                    taken = np.zeros(len(gb), dtype=bool)
                    for k in range(len(order)):
                        cand = np.where(~taken, m[k], -1.0)
                        best = int(cand.argmax())
                        if cand[best] >= thr:
                            taken[best] = h[k, t] = True
            scores.append(ds[order])
            images.append(np.full(len(order), i))
            hits.append(h)
        s = np.concatenate(scores) if scores else np.zeros(0)
        order = np.argsort(-s, kind="stable")
        out[c] = {"score": s[order],
                  "image": (np.concatenate(images) if images else np.zeros(0, dtype=int))[order],
                  "hits": (np.concatenate(hits) if hits else np.zeros((0, len(ious)), bool))[order],
                  "n_gt": n_gt}
    return out


def _ap(hits: np.ndarray, w: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """All-point interpolated AP of ranked ``hits`` [k] with record weights ``w`` [B, k] and gt
    counts ``n_gt`` [B] -> [B] (NaN where a resample has no gt box of the class)."""
    b = w.shape[0]
    if hits.size == 0:
        return np.where(n_gt > 0, 0.0, np.nan)
    tp = np.cumsum(w * hits[None, :], axis=1)
    fp = np.cumsum(w * (1.0 - hits[None, :]), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rec = tp / n_gt[:, None]
        prec = tp / np.maximum(tp + fp, 1e-12)
    prec = np.where(w > 0, prec, 0.0)  # records absent from a resample add no point
    env = np.flip(np.maximum.accumulate(np.flip(prec, axis=1), axis=1), axis=1)
    drec = np.diff(np.concatenate([np.zeros((b, 1)), rec], axis=1), axis=1)
    ap = np.sum(drec * env, axis=1)
    return np.where(n_gt > 0, ap, np.nan)


def map_boot(records: dict, weights: np.ndarray, iou_index=0) -> np.ndarray:
    """mAP (mean over classes with gt in the resample) per row of image ``weights`` [B, n]."""
    aps = []
    for rec in records.values():
        w = weights[:, rec["image"]] if rec["image"].size else np.zeros((weights.shape[0], 0))
        aps.append(_ap(rec["hits"][:, iou_index].astype(np.float64), w, weights @ rec["n_gt"]))
    if not aps:
        return np.full(weights.shape[0], np.nan)
    with np.errstate(invalid="ignore"):
        a = np.vstack(aps)
        cnt = np.sum(~np.isnan(a), axis=0)
        return np.where(cnt > 0, np.nansum(a, axis=0) / np.maximum(cnt, 1), np.nan)


def map_values(records: dict, n_images: int) -> tuple[float | None, float | None]:
    """(mAP@0.5, mAP@0.5:0.95) of the full set."""
    if not records:
        return None, None
    one = np.ones((1, n_images))
    per_iou = [float(map_boot(records, one, t)[0]) for t in range(len(IOUS))]
    return per_iou[0], float(np.mean(per_iou))


# --------------------------------------------------------------------------- band F1

def band_counts(ref_band: list[dict], out: list[dict], lo: float, hi: float,
                iou: float = 0.5) -> dict:
    """Per image (tp, fp, fn, ignored) of the artifact's boxes at the deployment threshold against
    the source's boxes down to the band's low end ``lo``: a source box with score in [lo, hi) and
    the artifact box matched to it count neither way."""
    tp, fp, fn, ign = [], [], [], []
    for r, o in zip(ref_band, out):
        s = np.asarray(r["scores"])
        amb = s < hi
        pr = pairs(r, o, iou)
        matched_r = {a for a, _ in pr}
        t = sum(1 for a, _ in pr if not amb[a])
        skip = sum(1 for a, _ in pr if amb[a])
        tp.append(t)
        fp.append(len(o["scores"]) - t - skip)
        fn.append(int(sum(1 for a in range(len(s)) if not amb[a] and a not in matched_r)))
        ign.append(int(amb.sum()))
    return {"tp": np.asarray(tp, float), "fp": np.asarray(fp, float), "fn": np.asarray(fn, float),
            "ignored": np.asarray(ign, float)}


# --------------------------------------------------------------------------- the gate's metrics

def gate_metrics(ref_outputs, outputs, p: dict, ref_dets=None, out_dets=None, groups=None) -> dict:
    """The detection gate's metrics (module docstring) of ``outputs`` against ``ref_outputs``,
    task params ``p`` (``score_threshold``, ``match_iou``, ``map_score_threshold``, ``band``).
    ``ref_dets`` / ``out_dets``: the decodes at ``score_threshold`` when already made; ``groups``
    the photo of each image (the bootstrap resamples photos: ``stats.boot_weights``)."""
    t = float(p["score_threshold"])
    band = float(p.get("band", GATE_DEFAULTS["band"]))
    lo, hi = t * (1 - band), t * (1 + band)
    low_t = min(float(p.get("map_score_threshold", GATE_DEFAULTS["map_score_threshold"])), t)
    match_iou = float(p.get("match_iou", 0.5))
    ref_t = ref_dets if ref_dets is not None else decode(ref_outputs, p)
    out_t = out_dets if out_dets is not None else decode(outputs, p)
    out_low = decode(outputs, dict(p, score_threshold=low_t))
    ref_lo = decode(ref_outputs, dict(p, score_threshold=lo))
    n = len(ref_t)
    gt = [{"boxes": r["boxes"], "classes": r["classes"]} for r in ref_t]
    n_boxes = int(sum(len(r["scores"]) for r in ref_t))
    w = stats.boot_weights(n, groups=groups)
    res = {"det_boxes": n_boxes, "det_images": n,
           "det_band": [round(lo, 6), round(hi, 6)], "det_map_score_threshold": low_t}
    records = ap_records(gt, out_low)
    m50, m = map_values(records, n)
    res["det_map50"], res["det_map"] = m50, m
    res["det_map50_low"] = stats.low_bound(map_boot(records, w, 0), m50, n_boxes) if m50 is not None else None
    c = band_counts(ref_lo, out_t, lo, hi, match_iou)
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    res["det_band_boxes"] = int(tp.sum() + fn.sum())
    res["det_band_ignored"] = int(c["ignored"].sum())
    res["det_band_f1"] = stats.f1_counts(float(tp.sum()), float(fp.sum()), float(fn.sum())) \
        if res["det_band_boxes"] else None
    res["det_band_f1_low"] = stats.f1_low(tp, fp, fn, w) if res["det_band_boxes"] else None
    return res


def reasons(res: dict, p: dict) -> dict:
    """``not_applicable`` entries for the gate's metrics that could not be computed."""
    na = {}
    t = p.get("score_threshold")
    if not res.get("det_boxes"):
        for k in KEYS:
            na[k] = (f"the source model finds no box with score >= {t} on these images: give "
                     "images that contain what it detects")
    elif not res.get("det_band_boxes"):
        lo, hi = res.get("det_band") or (None, None)
        for k in ("det_band_f1", "det_band_f1_low"):
            na[k] = (f"every source box scores inside the ambiguity band [{lo}, {hi}): no box is "
                     "stable enough to judge at the threshold")
    return na
