"""ekit.augment — enough boxes for the gate to tell (docs/gates.md).

A detection gate on 8 boxes cannot tell (one lost box is F1 0.93; 8 of 8 found is a 95 % lower bound
of 0.68). When the validation images give the source fewer than ``augment_min_boxes`` (200) boxes
(regions for a probability map), the SOURCE step adds deterministic variants of the images that
have some, runs the source on them and keeps them in ``reference.npz``: every runtime's validate
step reads its inputs from there, so every artifact is judged on the same, larger set
(``augmented`` in the metrics says how many images were added, and how). First MOSAICS: a 3x3 grid
(at 320 px; 2-4 per side) of crops centred on the source's own boxes/regions, each at 1.5-2.5x the
object's size, so every added image carries several objects at a size the source still finds
(YOLOv8n on the task photos: ~6 boxes per mosaic against ~1.3 per whole-image zoom); then
whole-image zooms and shrinks (only these for a probability map, by default: ``MOSAIC_DEFAULT``).
At most ``augment_max_images`` (64) images in all: each one runs through every artifact, some under
QEMU at ~100x — boxes per image, not images, is what to buy. A plain mirror is not among the
variants (the demo's validation set IS the mirrored calibration set: a flip would judge int8 on its
calibration images). Task params: ``augment_min_boxes=0`` turns it off, ``augment_mosaic=0/1``
keeps to the whole-image variants / asks for mosaics. ``groups`` in the info says which photo each
image shows: the bounds resample photos, a photo with all its variants.
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
DEFAULTS = {"augment_min_boxes": 200, "augment_max_images": 64}
# mosaics by default for detectors only: PP-OCRv4 det's text cut at tile borders and shrunk makes
# fragment regions with no ambiguity band to absorb them (its onnx int8 region F1 0.909 -> 0.678
# on 215 mosaic regions; docs/gates.md); ``augment_mosaic=1`` asks for them on a map too
MOSAIC_DEFAULT = {"detect": 1}


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


# Mosaic views of one object: (context, anchor) — the crop is ``context`` times the object's
# longer side (capped at the image), the object's centre at ``anchor`` (fractions) of the crop.
VIEWS = tuple((c, a) for c in (1.5, 2.0, 1.75, 2.5)
              for a in ((0.5, 0.5), (0.35, 0.35), (0.65, 0.65), (0.35, 0.65), (0.65, 0.35),
                        (0.5, 0.35), (0.5, 0.65), (0.35, 0.5), (0.65, 0.5)))


def grid(h: int, w: int) -> int:
    """Tiles per side of a mosaic: tiles of ~100 px or more, 2 to 4 per side."""
    return int(min(4, max(2, min(h, w) // 100)))


def mosaic(pixels: np.ndarray, boxes, index: int, pad: int = 114) -> np.ndarray:
    """Mosaic ``index`` of one image: a g x g grid (``grid``) of crops centred on its ``boxes``
    ([k, 4] x1 y1 x2 y2, input pixels), tile t showing box t % k in view ``VIEWS[t // k]``
    (tiles numbered on from ``index * g * g``). Same size and dtype as ``pixels``."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(pixels))
    w, h = img.size
    g = grid(h, w)
    ys, xs = np.linspace(0, h, g + 1).round().astype(int), np.linspace(0, w, g + 1).round().astype(int)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.full_like(np.asarray(pixels), int(pad))
    for q in range(g * g):
        t = index * g * g + q
        (x1, y1, x2, y2), (ctx, (ax, ay)) = boxes[t % len(boxes)], VIEWS[(t // len(boxes)) % len(VIEWS)]
        th, tw = ys[q // g + 1] - ys[q // g], xs[q % g + 1] - xs[q % g]
        side = max(x2 - x1, (y2 - y1) * tw / th, 1.0) * ctx  # crop width; height keeps the tile's aspect
        cw, ch = min(side, w, h * tw / th), min(side * th / tw, h, w * th / tw)
        left = min(max((x1 + x2) / 2 - cw * ax, 0.0), w - cw)
        top = min(max((y1 + y2) / 2 - ch * ay, 0.0), h - ch)
        tile = img.crop((round(left), round(top), round(left + cw), round(top + ch))).resize((tw, th), Image.BILINEAR)
        out[ys[q // g]:ys[q // g + 1], xs[q % g]:xs[q % g + 1]] = np.asarray(tile, dtype=out.dtype)
    return out


def unit_boxes(task: dict, ref_outputs) -> list[np.ndarray] | None:
    """Per image, the boxes (x1 y1 x2 y2, input pixels) of what the gate counts: the source's
    boxes (detector) or the bounding boxes of its regions (probability map); None otherwise."""
    from .measure import _regions, decode

    kind, p = task.get("task"), task.get("params") or {}
    if kind == "detect":
        return [np.asarray(d["boxes"], dtype=np.float64).reshape(-1, 4) for d in decode(ref_outputs, p)]
    if kind == "map":
        r = np.asarray(ref_outputs[0], dtype=np.float64)
        r = r.reshape(r.shape[0], r.shape[-2], r.shape[-1]) > float(p["threshold"])
        hw = p.get("input_hw") or r.shape[1:]
        sy, sx = hw[0] / r.shape[1], hw[1] / r.shape[2]
        out = []
        for m in r:
            bb = []
            for reg in _regions(m, int(p["min_region_pixels"])):
                yy, xx = np.nonzero(reg)
                bb.append([xx.min() * sx, yy.min() * sy, (xx.max() + 1) * sx, (yy.max() + 1) * sy])
            out.append(np.asarray(bb, dtype=np.float64).reshape(-1, 4))
        return out
    return None


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


def candidates(counts: np.ndarray, room: int, g: int = 3, mosaics: bool = True) -> list[tuple[int, str]]:
    """(image index, variant) to add, at most ``room``: first the mosaics of the images that have
    units (``mosaicGxG-M``, richest images first, mosaic by mosaic, each image until every view of
    each of its units is shown once: ceil(units x len(VIEWS) / g^2)), then the whole-image
    ``VARIANTS``, variant by variant (only these with ``mosaics`` False)."""
    rich = sorted((i for i in range(len(counts)) if counts[i] > 0), key=lambda i: (-counts[i], i))
    most = {i: -(-int(counts[i]) * len(VIEWS) // (g * g)) for i in rich}
    out = [(i, f"mosaic{g}x{g}-{m}") for m in range(max(most.values(), default=0)) for i in rich
           if m < most[i] and mosaics]
    out += [(i, v[0]) for v in VARIANTS for i in rich]
    return out[:max(0, room)]


def kind(name: str) -> str:
    """A variant's kind: ``mosaic3x3-7`` -> ``mosaic3x3``; the whole-image variants are their own."""
    return name.rsplit("-", 1)[0] if name.startswith("mosaic") else name


def make(pixels: np.ndarray, boxes, name: str, pad: int = 114) -> np.ndarray:
    """The pixels of variant ``name`` (a ``candidates`` name) of one image with units ``boxes``."""
    if name.startswith("mosaic"):
        return mosaic(pixels, boxes, int(name.rsplit("-", 1)[1]), pad)
    return variant(pixels, name, pad)


def enough(task: dict, data: dict, ref_outputs, run, spec: dict, fixed_batch: int | None = None):
    """Source step, after ``write_task``: add variants until the source's boxes/regions reach
    ``augment_min_boxes`` or the set ``augment_max_images``. ``run(x) -> outputs`` is the source
    model. -> (data, ref_outputs, info) with info ``{"images", "variants" {kind: images},
    "units_before", "units", "min_units", "max_images", "groups", "why"}`` or None when nothing
    was added; ``groups[j]`` is the original image that image j shows (the bounds resample
    photos, a photo with all its variants: docs/gates.md)."""
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
    boxes = unit_boxes(task, ref_outputs)
    g = grid(*data["pixels"].shape[1:3])
    mosaics = bool(int(p.get("augment_mosaic", MOSAIC_DEFAULT.get(task.get("task"), 0))))
    todo = candidates(counts, cap - n, g, mosaics)
    pad = _pad(spec)
    pix = np.stack([make(data["pixels"][i], boxes[i], name, pad) for i, name in todo])
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
    kinds = {}
    for _, name in todo[:keep]:
        kinds[kind(name)] = kinds.get(kind(name), 0) + 1
    said = ", ".join(f"{v} {k}" for k, v in kinds.items())
    info = {"images": keep, "variants": kinds,
            "units_before": int(counts.sum()), "units": total, "min_units": need, "max_images": cap,
            "groups": list(range(n)) + [int(i) for i, _ in todo[:keep]],
            "why": (f"the {n} validation image(s) gave the source {int(counts.sum())} {what} (< {need}): "
                    f"{keep} deterministic variant(s) ({said}) of the {int((counts > 0).sum())} image(s) "
                    f"with {what} added -> {total} {what} on {n + keep} images"
                    + ("" if total >= need else f" (capped at {cap} images)"))}
    return data, ref_outputs, info
