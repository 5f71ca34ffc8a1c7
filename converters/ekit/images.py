"""ekit.images — images and preprocessing: reading a photo the way the input spec says, and the
sentence that tells a user how to do the same.

Conventions (they are also what the manifest tells users):

* ``InputSpec.mean``/``std`` are listed in the channel order the MODEL receives, i.e. after the
  rgb->bgr swap when ``color`` is "bgr" (the Caffe/OpenCV convention).
* ``resize = "crop"``: the image is scaled (bilinear, Pillow) so that it covers
  ``H/0.875 x W/0.875`` — for a square input that is torchvision's ``Resize(256)`` for 224 — and
  the centre ``H x W`` is cut out (torchvision's ``CenterCrop`` rounding). ``"stretch"``: resized
  to exactly ``H x W`` (bilinear), aspect ratio not kept. ``"letterbox"`` (YOLO): scaled by
  ``min(H/h, W/w)`` (bilinear, new size rounded), pasted centred (offsets floored) on an ``H x W``
  canvas of ``pad`` (default 114) in every channel.
* Transparency is dropped (``Image.convert("RGB")``, what nearly every training pipeline does);
  16-bit greyscale is scaled to 8 bit by ``round(v / 257)``; EXIF orientation is applied.
* A model with one input channel gets the ITU-R 601 luma of the RGB pixels (Pillow's "L").
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .steps import CROP_FRACTION, IMAGE_EXTENSIONS, LETTERBOX_PAD, fail, warn

# --------------------------------------------------------------------------- images

def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden entries skipped), sorted by relative path.
    Links are not followed (edgekiln.inputs refuses them before a build: the host's hash, the
    local and the Docker runner see the same files; a link loop cannot repeat images)."""
    root = Path(folder)
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            path = Path(dirpath) / name
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS) and not path.is_symlink():
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _to_rgb(img):
    """Any Pillow image -> 8-bit RGB Pillow image."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img)
        if a.ndim == 3:  # defensive: some plugins give a channel axis
            a = a[..., 0]
        a = a.astype(np.float64)
        if mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0  # 0..65535 -> 0..255
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = np.nan_to_num(a)
        if a.max(initial=0) <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def resize_geometry(orig_wh, size_hw, resize: str) -> tuple[int, int, int, int]:
    """Where an ``orig_wh`` (W, H) image lands in the ``size_hw`` input: it is resized to
    (nw, nh) and its top-left corner sits at (left, top) of the input (negative when cropped).
    -> (nw, nh, left, top). One rule for the pixels (``_resize``) and for boxes (ekit_task)."""
    iw, ih = orig_wh
    th, tw = int(size_hw[0]), int(size_hw[1])
    if resize == "stretch":
        return tw, th, 0, 0
    if resize == "letterbox":  # Ultralytics/YOLOX: scale to fit, centre, pad the rest
        r = min(th / ih, tw / iw)
        nw, nh = int(round(iw * r)), int(round(ih * r))
        return nw, nh, (tw - nw) // 2, (th - nh) // 2
    if resize != "crop":
        raise ValueError(f"unknown resize mode {resize!r} (crop|stretch|letterbox)")
    s = max(th / ih, tw / iw) / CROP_FRACTION
    if ih <= iw:  # torchvision: the shorter side gets the requested size, the longer is truncated
        nh = int(round(ih * s))
        nw = int(nh * iw / ih)
    else:
        nw = int(round(iw * s))
        nh = int(nw * ih / iw)
    nh, nw = max(nh, th), max(nw, tw)
    return nw, nh, -int(round((nw - tw) / 2.0)), -int(round((nh - th) / 2.0))


def _resize(img, size_hw, resize: str, pad: int = LETTERBOX_PAD):
    from PIL import Image

    th, tw = int(size_hw[0]), int(size_hw[1])
    nw, nh, left, top = resize_geometry(img.size, size_hw, resize)
    img = img.resize((nw, nh), Image.BILINEAR)
    if resize == "letterbox":
        canvas = Image.new("RGB", (tw, th), (int(pad),) * 3)
        canvas.paste(img, (left, top))
        return canvas
    return img.crop((-left, -top, -left + tw, -top + th))


def _load(path, size_hw, resize, pad=LETTERBOX_PAD):
    """-> (uint8 HxWx3 array, None) or (None, reason)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # a broken EXIF block must not lose the picture
                pass
            img = _to_rgb(img)
            if size_hw is not None:
                img = _resize(img, size_hw, resize, pad)
            arr = np.asarray(img, dtype=np.uint8)
    except UnidentifiedImageError:
        return None, "not an image Pillow can read"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return None, f"unreadable ({type(e).__name__}: {e})"
    if arr.ndim != 3 or arr.shape[2] != 3:
        return None, f"unexpected pixel array shape {arr.shape}"
    return np.ascontiguousarray(arr), None


def load_rgb(path, size_hw=None, resize: str = "crop", pad: int = LETTERBOX_PAD):
    """One image as uint8 ``HxWx3`` RGB resized per ``resize``; None (and a warning) when the file
    cannot be read. ``size_hw=None`` keeps the original size."""
    arr, reason = _load(path, size_hw, resize, pad)
    if arr is None:
        warn(f"skipping {path}: {reason}")
    return arr


# --------------------------------------------------------------------------- preprocessing

def input_hw(spec: dict) -> tuple[int, int, int]:
    """(H, W, C) of a resolved InputSpec (shape must be known and H, W, C fixed)."""
    shape = spec.get("shape")
    if not shape or len(shape) != 4:
        fail("shape", f"the input shape must have 4 dimensions (batch, and H, W, channels per "
                      f"layout {spec.get('layout')}); got {shape}",
             "give it with --input-shape, e.g. 1,3,224,224")
    layout = spec.get("layout", "nchw")
    if layout == "nchw":
        c, h, w = shape[1], shape[2], shape[3]
    elif layout == "nhwc":
        h, w, c = shape[1], shape[2], shape[3]
    else:
        fail("usage", f"unknown layout {layout!r} (nchw|nhwc)")
    for name, v in (("height", h), ("width", w), ("channels", c)):
        if not isinstance(v, int) or v <= 0:
            fail("shape", f"the input {name} is not fixed in shape {shape} (layout {layout})",
                 "give a concrete shape with --input-shape")
    if c not in (1, 3):
        fail("unsupported", f"input with {c} channels (shape {shape}, layout {layout}): "
                            "edgekiln feeds images, i.e. 1 or 3 channels",
             "check --layout (nchw/nhwc)")
    return h, w, c


def _per_channel(value, c, what):
    if value is None:
        return None
    a = np.asarray(value, dtype=np.float32).reshape(-1)
    if a.size == 1:
        a = np.repeat(a, c)
    if a.size != c:
        fail("usage", f"{what} has {a.size} values but the model takes {c} channels")
    return a


def preprocess(pixels: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 RGB ``[N,H,W,3]`` -> float32 ``[N, ...]`` in the model layout, per the InputSpec."""
    h, w, c = input_hw(spec)
    x = pixels.astype(np.float32)
    if c == 1:
        # Pillow's "L": L = R*299/1000 + G*587/1000 + B*114/1000
        x = (x[..., 0:1] * 0.299 + x[..., 1:2] * 0.587 + x[..., 2:3] * 0.114)
    elif spec.get("color", "rgb") == "bgr":
        x = x[..., ::-1]
    elif spec.get("color", "rgb") != "rgb":
        fail("usage", f"unknown colour order {spec.get('color')!r} (rgb|bgr)")
    scale = float(spec.get("scale") or 1.0)
    x = x / np.float32(scale)
    mean = _per_channel(spec.get("mean"), c, "mean")
    std = _per_channel(spec.get("std"), c, "std")
    if mean is not None:
        x = x - mean
    if std is not None:
        x = x / std
    if spec.get("layout", "nchw") == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


def _fmt_list(v):
    return "[" + ", ".join(f"{float(x):g}" for x in v) + "]"


def describe_preprocessing(spec: dict) -> str:
    """A sentence a user can implement: how to turn a photo into this model's input."""
    shape = spec.get("shape")
    try:
        h, w, c = _hw_quiet(spec)
    except ValueError:
        h = w = c = None
    parts = []
    size = f"{h}x{w}" if h else "the model's input size"
    if spec.get("resize", "crop") == "crop":
        if h and h == w:
            parts.append(f"Resize the image (bilinear) so its shorter side is "
                         f"{int(round(h / CROP_FRACTION))} px, then cut out the centre {size}")
        else:
            parts.append(f"Resize the image (bilinear, aspect kept) so it covers "
                         f"{h / CROP_FRACTION:.0f}x{w / CROP_FRACTION:.0f} px (H x W), then cut out "
                         f"the centre {size}" if h else
                         f"Resize the image (bilinear, aspect kept) to cover the input size / "
                         f"{CROP_FRACTION}, then cut out the centre")
    elif spec.get("resize") == "letterbox":
        pad = _pad(spec)
        parts.append(f"Letterbox the image to {size}: scale it (bilinear) by min({h}/height, "
                     f"{w}/width), rounding the new size, paste it centred (offsets floored) on "
                     f"a {size} canvas filled with ({pad}, {pad}, {pad})" if h else
                     f"Letterbox the image (scale to fit, centre, pad with {pad})")
        if spec.get("resize_why"):  # chosen by edgekiln (ekit_task.letterbox_detector)
            parts[-1] += f" (letterbox: {spec['resize_why']})"
    else:
        parts.append(f"Resize the image (bilinear) to exactly {size}, ignoring the aspect ratio")
    if c == 1:
        parts.append("convert it to greyscale (L = 0.299 R + 0.587 G + 0.114 B)")
    else:
        parts.append("keep RGB channel order" if spec.get("color", "rgb") == "rgb"
                     else "reorder the channels to BGR")
    scale = float(spec.get("scale") or 1.0)
    if scale == 1.0:
        parts.append("use the 0-255 pixel values as float32")
    else:
        parts.append(f"divide the 0-255 pixel values by {scale:g} (float32)")
    if spec.get("mean") is not None:
        parts.append(f"subtract mean {_fmt_list(spec['mean'])}")
    if spec.get("std") is not None:
        parts.append(f"divide by std {_fmt_list(spec['std'])} (per channel, in the channel order "
                     "the model receives)")
    layout = spec.get("layout", "nchw").upper()
    parts.append(f"lay it out as {layout} {list(shape) if shape else ''}".rstrip())
    text = ", ".join(parts) + "."
    if spec.get("dynamic_batch"):
        text += " The batch dimension is dynamic."
    return text


def _pad(spec: dict) -> int:
    """The letterbox pad value of an InputSpec (0-255 pixel value, before any scaling)."""
    pad = spec.get("pad")
    return LETTERBOX_PAD if pad is None else int(pad)


def _hw_quiet(spec):
    shape = spec.get("shape")
    if not shape or len(shape) != 4:
        raise ValueError
    if spec.get("layout", "nchw") == "nchw":
        c, h, w = shape[1], shape[2], shape[3]
    else:
        h, w, c = shape[1], shape[2], shape[3]
    if not all(isinstance(v, int) and v > 0 for v in (h, w, c)):
        raise ValueError
    return h, w, c
