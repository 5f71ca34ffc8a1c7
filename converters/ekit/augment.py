"""ekit.augment — enough boxes for the gate to tell (docs/gates.md).

A detection gate on 8 boxes cannot tell (one lost box is F1 0.93; 8 of 8 found is a 95 % lower bound
of 0.68). When the validation images give the source fewer than ``augment_min_boxes`` (100) boxes
(regions for a probability map), the SOURCE step adds deterministic variants of the images that
have some — zooms into the centre and corners, shrinks onto the pad colour, mirrored zooms — runs
the source on them and keeps them in ``reference.npz``: every runtime's validate step reads its
inputs from there, so every artifact is judged on the same, larger set (``augmented`` in the
metrics says how many images were added). At most ``augment_max_images`` (64) images in all: each
one runs through every artifact, some under QEMU at ~100x. A plain mirror is not among the
variants (the demo's validation set IS the mirrored calibration set: a flip would judge int8 on
its calibration images). Both task params: ``--task-param augment_min_boxes=0`` turns it off.
"""

from __future__ import annotations

import numpy as np

# (name, flip, zoom > 1 crops / < 1 shrinks, anchor of the crop as fractions of the free margin)
VARIANTS = (("zoom1.25-centre", False, 1.25, (0.5, 0.5)),
            ("shrink0.75", False, 0.75, (0.5, 0.5)),
            ("mirror-zoom1.25-topleft", True, 1.25, (0.0, 0.0)),
            ("mirror-zoom1.25-bottomright", True, 1.25, (1.0, 1.0)),
            ("zoom1.5-centre", False, 1.5, (0.5, 0.5)),
            ("mirror-shrink0.6", True, 0.6, (0.5, 0.5)),
            ("zoom1.25-topright", False, 1.25, (1.0, 0.0)),
            ("zoom1.25-bottomleft", False, 1.25, (0.0, 1.0)))
DEFAULTS = {"augment_min_boxes": 100, "augment_max_images": 64}


def variant(pixels: np.ndarray, name: str, pad: int = 114) -> np.ndarray:
    """One variant (``VARIANTS``) of a uint8 HxWx3 model-input image, same size."""
    from PIL import Image

    _, flip, zoom, (ax, ay) = next(v for v in VARIANTS if v[0] == name)
    img = Image.fromarray(np.ascontiguousarray(pixels))
    w, h = img.size
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if zoom >= 1:
        cw, ch = round(w / zoom), round(h / zoom)
        left, top = round((w - cw) * ax), round((h - ch) * ay)
        img = img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BILINEAR)
    else:
        sw, sh = round(w * zoom), round(h * zoom)
        canvas = Image.new("RGB", (w, h), (int(pad),) * 3)
        canvas.paste(img.resize((sw, sh), Image.BILINEAR), (round((w - sw) * ax), round((h - sh) * ay)))
        img = canvas
    return np.asarray(img, dtype=np.uint8)


def units(task: dict, ref_outputs) -> np.ndarray | None:
    """What the gate counts per image: the source's boxes (detector) or regions (probability
    map); None for the other tasks (no augmentation)."""
    from .measure import _regions, decode

    kind, p = task.get("task"), task.get("params") or {}
    if kind == "detect":
        return np.asarray([len(d["scores"]) for d in decode(ref_outputs, p)])
    if kind == "map":
        r = np.asarray(ref_outputs[0], dtype=np.float64)
        r = r.reshape(r.shape[0], r.shape[-2], r.shape[-1]) > float(p["threshold"])
        return np.asarray([len(_regions(m, int(p["min_region_pixels"]))) for m in r])
    return None


def candidates(counts: np.ndarray, room: int) -> list[tuple[int, str]]:
    """(image index, variant) to add, at most ``room``: every variant of the images that have
    units, richest images first, variant by variant."""
    rich = sorted((i for i in range(len(counts)) if counts[i] > 0), key=lambda i: (-counts[i], i))
    out = [(i, v[0]) for v in VARIANTS for i in rich]
    return out[:max(0, room)]


def enough(task: dict, data: dict, ref_outputs, run, spec: dict, fixed_batch: int | None = None):
    """Source step, after ``write_task``: add variants until the source's boxes/regions reach
    ``augment_min_boxes`` or the set ``augment_max_images``. ``run(x) -> outputs`` is the source
    model. -> (data, ref_outputs, info) with info ``{"images", "variants", "units_before",
    "units", "min_units", "max_images", "why"}`` or None when nothing was added."""
    from .images import _pad, preprocess

    counts = units(task, ref_outputs)
    p = task.get("params") or {}
    need = int(p.get("augment_min_boxes", DEFAULTS["augment_min_boxes"]))
    cap = int(p.get("augment_max_images", DEFAULTS["augment_max_images"]))
    n = len(data["files"])
    if counts is None or need <= 0 or counts.sum() >= need or not counts.sum() or n >= cap:
        return data, ref_outputs, None
    if fixed_batch and fixed_batch > 1:
        return data, ref_outputs, None  # a fixed batch > 1 needs whole batches: not worth it
    todo = candidates(counts, cap - n)
    pad = _pad(spec)
    pix = np.stack([variant(data["pixels"][i], name, pad) for i, name in todo])
    x = preprocess(pix, spec)
    extra = [np.asarray(y) for y in run(x)]
    more = units(task, extra)
    total, keep = int(counts.sum()), 0
    for k in range(len(todo)):
        if total >= need:
            break
        total += int(more[k])
        keep = k + 1
    files = [f"augmented/{name}/{data['files'][i]}" for i, name in todo[:keep]]
    data = dict(data, x=np.concatenate([data["x"], x[:keep]]),
                pixels=np.concatenate([data["pixels"], pix[:keep]]),
                labels=np.concatenate([data["labels"], np.full(keep, -1, dtype=data["labels"].dtype)]),
                files=list(data["files"]) + files)
    ref_outputs = [np.concatenate([a, b[:keep]]) for a, b in zip(ref_outputs, extra)]
    what = "boxes" if task.get("task") == "detect" else "regions"
    info = {"images": keep, "variants": sorted({name for _, name in todo[:keep]}),
            "units_before": int(counts.sum()), "units": total, "min_units": need, "max_images": cap,
            "why": (f"the {n} validation image(s) gave the source {int(counts.sum())} {what} (< {need}): "
                    f"{keep} deterministic variant(s) of the {int((counts > 0).sum())} image(s) with "
                    f"{what} added -> {total} {what} on {n + keep} images"
                    + ("" if total >= need else f" (capped at {cap} images)"))}
    return data, ref_outputs, info
