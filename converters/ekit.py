"""ekit — the small helper every edgekiln converter script imports (copied next to it).

Plain Python + numpy + Pillow only: it runs in every build environment (torch, onnx, tflite,
openvino, tensorrt images), so anything heavier is imported lazily inside a function.

What it gives a script (see converters/README.md for the contract):

* the job: ``step(__file__)`` (params, options, source/output folders, the resolved input spec),
  ``params(__file__)``, ``paths()``, ``work()``, ``finish(__file__, versions, **extra)``,
  ``fail(kind, message, hint)``, ``log(msg)``, ``warn(msg)``;
* images: ``list_images``, ``load_rgb``, ``load_set``, ``synthetic_set``, ``preprocess``,
  ``describe_preprocessing``, ``input_hw``;
* the reference file: ``write_reference``, ``read_reference``;
* validation: ``compare``, ``latency``, ``tensor_spec``, ``file_size``, ``jsonable``.

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

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

# when the step's script imported ekit: the clock of the whole step (e.g. --recover's budget is a
# multiple of the plain int8 step's time so far)
STARTED = time.perf_counter()

ERROR_MARK = "EDGEKILN-ERROR "
ERROR_KINDS = ("invalid_model", "data", "shape", "unsupported", "usage")
EXIT_USER_ERROR = 3

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pnm")
LABEL_FILES = ("labels.csv", "labels.txt")
CROP_FRACTION = 0.875
LETTERBOX_PAD = 114  # the grey Ultralytics and YOLOX pad with


# --------------------------------------------------------------------------- the job

def params(script_file: str | os.PathLike) -> dict:
    """The step's params: ``steps/NN-id.json`` next to ``steps/NN-id.py``."""
    path = Path(script_file).with_suffix(".json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class Options(dict):
    """A step's options (the target file's [options] + per-build overrides). Defaults live ONLY in
    targets/<target>.toml: a key missing here is a bug in the target file, said loudly."""

    def __missing__(self, key):
        fail("usage", f"option {key!r} is not set: targets/<target>.toml [options] must define it",
             "add it to the target file's [options] table")


class StepContext:
    """What every convert/validate script starts from (``ekit.step(__file__)``):

    * ``params`` — the step's params; ``options`` — ``Options`` (missing key: a loud failure);
    * ``target``, ``precision``;
    * ``src`` — ``work/source`` (the source step's outputs), ``out`` — the plan's ``out_dir``,
      ``work/<target>/<precision>`` (made by the script when it writes: a failed step leaves none);
    * ``io`` — ``work/source/io.json`` (``{}`` before the source step wrote it);
    * ``spec`` — THE resolved input spec: ``io.json``'s ``input_spec`` (what the source step
      resolved against the model) over the requested ``params["input"]`` — one merge rule for all.
    """

    def __init__(self, script_file: str | os.PathLike):
        self.params = params(script_file)
        self.options = Options(self.params.get("options") or {})
        self.target = self.params.get("target")
        self.precision = self.params.get("precision")
        self.src = work() / "source"
        out_dir = self.params.get("out_dir")  # the plan's; work/<target>/<precision>
        self.out = (Path.cwd() / out_dir if out_dir else
                    work() / self.target / self.precision if self.target and self.precision else None)
        io_path = self.src / "io.json"
        self.io = json.loads(io_path.read_text()) if io_path.is_file() else {}
        self.spec = resolved_spec(self.params.get("input") or {}, self.io)


def resolved_spec(requested: dict, io: dict) -> dict:
    """The input spec a convert/validate step uses: the source step's resolved ``input_spec``
    (io.json) wins key by key over the requested one (params["input"])."""
    spec = dict(requested or {})
    spec.update((io or {}).get("input_spec") or {})
    return spec


def step(script_file: str | os.PathLike) -> StepContext:
    return StepContext(script_file)


def paths() -> dict:
    """Where the read-only inputs are inside this environment (env var EKIT_PATHS, JSON)."""
    raw = os.environ.get("EKIT_PATHS")
    if not raw:
        fail("usage", "EKIT_PATHS is not set: run this script through edgekiln "
                      "(the runner tells it where the model and data are)")
    value = json.loads(raw)
    return {"model": value.get("model"), "calib": value.get("calib"), "val": value.get("val"),
            **{k: v for k, v in value.items() if k not in ("model", "calib", "val")}}


def work() -> Path:
    """The job's shared output folder (``<cwd>/work``)."""
    return Path.cwd() / "work"


def log(msg: str) -> None:
    """One progress line (stdout, flushed so the host can stream it)."""
    print(msg, flush=True)


_WARNED: set[str] = set()


def warn(msg: str) -> None:
    """A warning the host shows the user (``warning: `` lines); the same one only once."""
    if msg not in _WARNED:
        _WARNED.add(msg)
        log(f"warning: {msg}")


def fail(kind: str, message: str, hint: str | None = None):
    """Stop with a user error the host understands (last stderr line, exit code 3)."""
    sys.stdout.flush()
    line = json.dumps({"kind": kind, "message": str(message), "hint": hint}, ensure_ascii=True)
    print(ERROR_MARK + line, file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def versions_of(dists) -> dict:
    """``{dist: version}`` as installed in THIS environment (None when not installed)."""
    from importlib import metadata

    out = {}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = None
    return out


def finish(script_file: str | os.PathLike, versions, **extra) -> Path:
    """Write ``work/results/<step>.json`` = ``{"step", "versions": {...}, **extra}``."""
    step = Path(script_file).stem
    data = {"step": step, "versions": versions_of(versions),
            "python": ".".join(map(str, sys.version_info[:3]))}
    data.update(jsonable(extra))
    path = work() / "results" / f"{step}.json"
    write_json(path, data)
    log(f"{step}: done")
    return path


def write_json(path: str | os.PathLike, data) -> None:
    """Write JSON atomically (temp file + rename), numpy values made plain."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(jsonable(data), f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def jsonable(value):
    """numpy scalars/arrays, Paths, tuples -> plain JSON values; NaN/inf -> None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


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


# --------------------------------------------------------------------------- labels

def _int_or_none(text):
    try:
        return int(str(text).strip())
    except ValueError:
        return None


def read_label_file(path: Path) -> dict[str, int]:
    """``filename,label`` lines (comma, tab or whitespace separated; '#' comments and a
    non-numeric header line are ignored) -> {relative posix path or basename: label}."""
    out: dict[str, int] = {}
    for raw in path.read_text(encoding="utf-8-sig", errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "," in line:
            name, _, label = line.rpartition(",")
        elif "\t" in line:
            name, _, label = line.rpartition("\t")
        else:
            bits = line.rsplit(None, 1)
            if len(bits) != 2:
                continue
            name, label = bits
        value = _int_or_none(label)
        if value is None:
            continue  # header or junk
        out[name.strip().strip('"').replace("\\", "/")] = value
    return out


def discover_labels(folder, files: list[Path]) -> tuple[list[int], str]:
    """Labels for ``files`` (all under ``folder``) and where they came from.

    1. ``labels.csv`` / ``labels.txt`` in the folder: ``filename,label`` (path relative to the
       folder, or bare file name);
    2. else one subfolder per class: integer folder names are the label itself; other names are
       numbered in sorted order (only when there are >= 2 class folders and no loose images);
    3. else -1 (unknown).
    """
    root = Path(folder)
    for name in LABEL_FILES:
        lf = root / name
        if lf.is_file():
            table = read_label_file(lf)
            labels = []
            for f in files:
                rel = f.relative_to(root).as_posix()
                labels.append(table.get(rel, table.get(f.name, -1)))
            return labels, name
    tops = [f.relative_to(root).parts for f in files]
    if tops and all(len(p) >= 2 for p in tops):
        classes = sorted({p[0] for p in tops})
        if all(_int_or_none(c) is not None for c in classes):
            return [int(p[0]) for p in tops], "integer class folders"
        if len(classes) >= 2:
            index = {c: i for i, c in enumerate(classes)}
            return [index[p[0]] for p in tops], "class folders (sorted order)"
    return [-1] * len(files), "none"


# --------------------------------------------------------------------------- data sets

def _pick_order(n: int, limit: int | None) -> list[int]:
    """Indices to try: an evenly spread selection of ``limit`` first, then the rest (fallbacks
    for unreadable files)."""
    if not limit or limit >= n:
        return list(range(n))
    first = sorted(set(int(round(i)) for i in np.linspace(0, n - 1, limit)))
    rest = [i for i in range(n) if i not in set(first)]
    return first + rest


def load_set(folder, input_spec: dict, limit: int | None = None, min_count: int = 1,
             purpose: str = "validation") -> dict:
    """Load up to ``limit`` images of ``folder`` preprocessed per ``input_spec``.

    Returns ``{"x": float32 [N,...] (model layout), "pixels": uint8 [N,H,W,3], "labels": int64
    [N], "files": [relative paths], "skipped": [(file, reason)], "labels_from": str}``.
    Unreadable files are warned about and skipped; fewer than ``min_count`` usable images (or a
    missing/empty/unreadable folder) is a ``data`` failure.
    """
    if not folder:
        fail("data", f"no {purpose} images were given")
    root = Path(folder)
    if not root.exists():
        fail("data", f"the {purpose} folder {root} does not exist")
    if not root.is_dir():
        fail("data", f"the {purpose} path {root} is not a folder of images")
    try:
        files = list_images(root)
    except OSError as e:
        fail("data", f"cannot read the {purpose} folder {root}: {e}")
    if not files:
        fail("data", f"the {purpose} folder {root} holds no images "
                     f"({', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS[:5])}, ...)")
    h, w, _ = input_hw(input_spec)
    resize = input_spec.get("resize", "crop")
    all_labels, labels_from = discover_labels(root, files)
    pixels, labels, names, skipped = [], [], [], []
    for i in _pick_order(len(files), limit):
        if limit and len(pixels) >= limit:
            break
        rel = files[i].relative_to(root).as_posix()
        arr, reason = _load(files[i], (h, w), resize, _pad(input_spec))
        if arr is None:
            warn(f"skipping {purpose} image {rel}: {reason}")
            skipped.append((rel, reason))
            continue
        pixels.append(arr)
        labels.append(all_labels[i])
        names.append(rel)
    if len(pixels) < max(1, int(min_count)):
        detail = "; ".join(f"{f}: {r}" for f, r in skipped[:5])
        fail("data", f"only {len(pixels)} usable image(s) in the {purpose} folder {root} "
                     f"(need at least {min_count}; {len(skipped)} unreadable"
                     + (f": {detail}" if detail else "") + ")",
             "add more images or fix the unreadable ones")
    order = sorted(range(len(names)), key=lambda k: names[k])  # stable, listing order
    pix = np.stack([pixels[k] for k in order])
    result = {
        "x": preprocess(pix, input_spec),
        "pixels": pix,
        "labels": np.asarray([labels[k] for k in order], dtype=np.int64),
        "files": [names[k] for k in order],
        "skipped": skipped,
        "labels_from": labels_from,
    }
    n_lab = int((result["labels"] >= 0).sum())
    log(f"{purpose}: {len(names)} image(s) from {root}"
        + (f", {len(skipped)} skipped" if skipped else "")
        + (f", {n_lab} labelled ({labels_from})" if n_lab else ", no labels"))
    return result


def synthetic_set(input_spec: dict, n: int = 8, seed: int = 0) -> dict:
    """Seeded uniform-noise pixels through the same preprocessing (no images given at all)."""
    h, w, _ = input_hw(input_spec)
    rng = np.random.default_rng(seed)
    pix = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    return {"x": preprocess(pix, input_spec), "pixels": pix,
            "labels": np.full(n, -1, dtype=np.int64),
            "files": [f"synthetic-{seed}-{i}" for i in range(n)], "skipped": [],
            "labels_from": "none"}


# --------------------------------------------------------------------------- reference file

def write_reference(path, data: dict, outputs) -> None:
    """``reference.npz``: x, pixels, labels, files (from a load_set/synthetic_set dict) and
    y0, y1, ... (the source framework's outputs, each stacked on axis 0)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"x": np.asarray(data["x"], dtype=np.float32),
              "pixels": np.asarray(data["pixels"], dtype=np.uint8),
              "labels": np.asarray(data["labels"], dtype=np.int64),
              "files": np.asarray([str(f) for f in data["files"]], dtype=str)}
    for i, y in enumerate(outputs):
        arrays[f"y{i}"] = np.asarray(y)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def read_reference(path=None) -> dict:
    """-> {"x", "pixels", "labels", "files": list[str], "y": [y0, y1, ...]}."""
    path = Path(path) if path else work() / "source" / "reference.npz"
    with np.load(path, allow_pickle=False) as z:
        ys = []
        while f"y{len(ys)}" in z.files:
            ys.append(z[f"y{len(ys)}"])
        return {"x": z["x"], "pixels": z["pixels"], "labels": z["labels"],
                "files": [str(f) for f in z["files"]], "y": ys}


# --------------------------------------------------------------------------- validation

def _squeeze_like(ref: np.ndarray, out: np.ndarray, i: int) -> np.ndarray:
    if ref.shape == out.shape:
        return out
    if ref.size == out.size and tuple(d for d in ref.shape if d != 1) == \
            tuple(d for d in out.shape if d != 1):
        return out.reshape(ref.shape)
    raise ValueError(f"output {i}: shape {list(out.shape)} does not match the reference "
                     f"{list(ref.shape)}")


def _classes(a: np.ndarray):
    """[N, C] scores (also [N,1,C] / [N,C,1,1]) -> [N, C]; None when not classification-like."""
    if a.ndim < 2:
        return None
    rest = [d for d in a.shape[1:] if d != 1]
    if len(rest) != 1 or rest[0] < 2:
        return None
    return a.reshape(a.shape[0], rest[0])


EMPTY_NORM = 1e-2  # see compare: both outputs of a sample below 1% of the set's largest norm: "empty"


def compare(ref_outputs, outputs, labels=None) -> dict:
    """How close ``outputs`` are to ``ref_outputs`` (lists of arrays, samples on axis 0).

    * ``max_abs`` / ``mean_abs``: over every element of every output;
    * ``cosine``: per sample, over all outputs flattened together; ``cosine`` is the MINIMUM
      over samples (one bad sample must show), ``cosine_mean`` the mean; a sample whose source
      and artifact outputs are both "empty" (norms <= EMPTY_NORM x the set's largest) counts 1;
    * ``top1_agreement``: argmax of the first output equal, only when it is classification-like
      ([N, C], C >= 2, size-1 dims ignored), else None;
    * ``accuracy`` / ``source_accuracy``: of ``outputs`` / ``ref_outputs`` on samples with a label
      >= 0 (None without labels or a classification-like first output);
    * ``nonfinite``: NaN/inf values in ``outputs`` (those make max/mean None, cosine 0).
    All values are plain floats/ints/None.
    """
    if len(ref_outputs) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs, the reference has {len(ref_outputs)}")
    if not ref_outputs:
        raise ValueError("no outputs to compare")
    refs = [np.asarray(r) for r in ref_outputs]
    outs = [_squeeze_like(r, np.asarray(o), i) for i, (r, o) in enumerate(zip(refs, outputs))]
    n = int(refs[0].shape[0])
    for i, r in enumerate(refs):
        if r.shape[0] != n:
            raise ValueError(f"output {i} has {r.shape[0]} samples, output 0 has {n}")
    R = np.concatenate([r.reshape(n, -1).astype(np.float64) for r in refs], axis=1)
    O = np.concatenate([o.reshape(n, -1).astype(np.float64) for o in outs], axis=1)
    nonfinite = int((~np.isfinite(O)).sum())
    finite = nonfinite == 0 and bool(np.isfinite(R).all())
    diff = np.abs(R - O)
    res = {"n": n,
           "max_abs": float(diff.max()) if finite and diff.size else None,
           "mean_abs": float(diff.mean()) if finite and diff.size else None}
    if finite:
        num = (R * O).sum(axis=1)
        nr, no = np.linalg.norm(R, axis=1), np.linalg.norm(O, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = num / (nr * no)
        # A sample whose outputs are empty next to the others (a probability map of a photo with
        # nothing in it: 1e-7 noise or exact zeros) has no direction to compare: when source and
        # artifact are both below EMPTY_NORM x the set's largest norm they agree (1); otherwise
        # the cosine as usual (0 when exactly one of them is all zeros).
        tiny = EMPTY_NORM * max(float(nr.max(initial=0.0)), float(no.max(initial=0.0)))
        empty = np.maximum(nr, no) <= tiny
        cos = np.where(empty, 1.0, np.where((nr == 0) | (no == 0), 0.0, cos))
        cos = np.clip(cos, -1.0, 1.0)
        res["cosine"] = float(cos.min())
        res["cosine_mean"] = float(cos.mean())
    else:
        res["cosine"] = 0.0
        res["cosine_mean"] = 0.0
    rc, oc = _classes(refs[0]), _classes(outs[0])
    if rc is not None and oc is not None:
        rt, ot = rc.argmax(axis=1), oc.argmax(axis=1)
        res["top1_agreement"] = float((rt == ot).mean()) if finite else 0.0
    else:
        rt = ot = None
        res["top1_agreement"] = None
    res["accuracy"] = res["source_accuracy"] = None
    res["labelled"] = 0
    if labels is not None and rt is not None:
        lab = np.asarray(labels).reshape(-1)
        if lab.shape[0] != n:
            raise ValueError(f"{lab.shape[0]} labels for {n} samples")
        m = lab >= 0
        if m.any():
            res["labelled"] = int(m.sum())
            res["accuracy"] = float((ot[m] == lab[m]).mean())
            res["source_accuracy"] = float((rt[m] == lab[m]).mean())
    res["nonfinite"] = nonfinite
    return res


NOISY_SPREAD = 0.5  # (p90 - p10) / median above this: a busy machine, say so


def latency(fn, runs: int = 50, warmup: int = 5) -> dict:
    """Call ``fn()`` ``warmup`` times, then time ``runs`` calls: milliseconds. ``spread`` is
    (p90 - p10) / median; ``noisy`` flags a spread above ``NOISY_SPREAD`` (warned)."""
    for _ in range(max(0, int(warmup))):
        fn()
    times = []
    for _ in range(max(1, int(runs))):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    a = np.asarray(times)
    med, p10, p90 = float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90))
    spread = (p90 - p10) / med if med > 0 else 0.0
    res = {"median": med, "p90": p90, "min": float(a.min()), "runs": int(a.size),
           "spread": spread, "noisy": bool(spread > NOISY_SPREAD)}
    if res["noisy"]:
        warn(f"noisy latency: p10-p90 spans {spread:.0%} of the median ({p10:.2f}-{p90:.2f} ms, "
             f"min {res['min']:.2f} ms): the machine was busy; the min is the better estimate")
    return res


_ORT_TYPES = {"float": "float32", "double": "float64", "float16": "float16", "int8": "int8",
              "uint8": "uint8", "int16": "int16", "uint16": "uint16", "int32": "int32",
              "int64": "int64", "bool": "bool", "bfloat16": "bfloat16"}


def tensor_spec(name, shape, dtype, quantization=None) -> dict:
    """TensorSpec: dims are ints, or strings/None for dynamic ones; dtype a numpy-style name."""
    dims = []
    for d in (shape or []):
        if isinstance(d, (int, np.integer)) and int(d) >= 0:
            dims.append(int(d))
        else:
            dims.append(d if isinstance(d, str) else None)
    dt = dtype if not isinstance(dtype, str) else str(dtype)
    if isinstance(dt, str) and dt.startswith("tensor(") and dt.endswith(")"):  # onnxruntime's type strings
        dt = _ORT_TYPES.get(dt[7:-1], dt[7:-1])
    try:
        dt = np.dtype(dt).name
    except TypeError:
        dt = str(dt)
    q = None
    if quantization is not None:
        q = {"scale": [float(s) for s in np.asarray(quantization["scale"]).reshape(-1)],
             "zero_point": [int(z) for z in np.asarray(quantization["zero_point"]).reshape(-1)]}
        for k, v in quantization.items():
            if k not in q:
                q[k] = jsonable(v)
    return {"name": str(name), "shape": dims, "dtype": dt, "quantization": q}


def file_size(paths) -> int:
    """Total bytes of a file, a folder (recursive) or a list of them."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    total = 0
    for p in paths:
        p = Path(p)
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        else:
            total += p.stat().st_size
    return total


# --------------------------------------------------------------------------- source-step data

def reference_inputs(p: dict, spec: dict) -> tuple[dict, str]:
    """The images the reference outputs are computed on: ``val`` if given, else ``calib``, else
    (only with params ``allow_synthetic``) seeded noise; otherwise a ``data`` failure.
    -> (load_set dict, "val" | "calib" | "synthetic")."""
    where = paths()
    limit = int(p.get("reference_limit") or 200)
    if where.get("val"):
        return load_set(where["val"], spec, limit=limit, min_count=1, purpose="validation"), "val"
    if where.get("calib"):
        return load_set(where["calib"], spec, limit=limit, min_count=1,
                        purpose="calibration"), "calib"
    if p.get("allow_synthetic"):
        warn("no images given: the reference uses seeded random noise, so accuracy cannot be "
             "measured and int8 calibration would be meaningless")
        return synthetic_set(spec, n=int(p.get("synthetic_count") or 8),
                             seed=int(p.get("seed") or 0)), "synthetic"
    fail("data", "no validation or calibration images were given: edgekiln checks every "
                 "artifact against the source model on real images",
         "pass --val DIR (or --calib DIR)")


def write_calibration(p: dict, spec: dict, out_dir: Path) -> dict | None:
    """``calib.npy`` (float32, model layout) from the calibration folder, if one was given."""
    where = paths()
    if not where.get("calib"):
        return None
    data = load_set(where["calib"], spec, limit=int(p.get("calib_limit") or 500),
                    min_count=int(p.get("calib_min") or 1), purpose="calibration")
    n = len(data["files"])
    if n < 32:
        warn(f"only {n} calibration image(s): int8 ranges from few images are fragile "
             "(100-500 representative images are typical)")
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "calib.npy", data["x"].astype(np.float32))
    return {"n": n, "skipped": data["skipped"], "files_sha": _names_hash(data["files"])}


def _names_hash(names) -> str:
    import hashlib

    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


# -- where a validation ran, and the Arm validation (edgekiln.emulation) -------------------------

EMULATED_LATENCY = "emulated — not a device figure"


def where() -> dict:
    """Where this step runs: ``machine`` (aarch64, x86_64), ``emulated`` (QEMU user mode: the
    runner sets QEMU_CPU only for a platform its engine emulates), ``cpu`` (the emulated core, else
    the CPU's model name or Arm part number from /proc/cpuinfo)."""
    import platform

    qemu = os.environ.get("QEMU_CPU")
    cpu = qemu
    if not cpu:
        info = {}
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
        except OSError:
            pass
        cpu = info.get("model name") or (f"Arm part {info['CPU part']}" if "CPU part" in info else None)
    return {"machine": platform.machine(), "emulated": bool(qemu), "cpu": cpu,
            "how": "QEMU user mode" if qemu else "native"}


def finish_validation(p: dict, out_dir: Path, report: dict, outputs) -> Path:
    """Write a validate step's report (``p["report_name"]``, default report.json) with ``where``.
    ``p["save_outputs"]``: keep this machine's outputs (outputs.npz) for an Arm validation to
    compare with; ``p["compare_with"]``: that file, so the report says ``vs_native`` (max/mean
    difference, cosine, top-1 agreement, bit-identical or not). An emulated latency is labelled."""
    report["where"] = where()
    if p.get("save_outputs"):
        np.savez(out_dir / "outputs.npz", *[np.asarray(o) for o in outputs])
    if p.get("compare_with"):
        with np.load(out_dir / p["compare_with"]) as z:
            native = [z[f"arr_{i}"] for i in range(len(z.files))]
        vs = compare(native, outputs)
        vs = {k: vs.get(k) for k in ("n", "max_abs", "mean_abs", "cosine", "top1_agreement")}
        vs["identical"] = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(native, outputs))
        report["vs_native"] = vs
        log(f"vs this machine's validation ({p['compare_with']}): identical={vs['identical']}, "
            f"max_abs={vs['max_abs']}, cosine={vs['cosine']}, top-1 agreement={vs['top1_agreement']}")
    if report["where"]["emulated"]:
        if report.get("latency_ms"):
            report["latency_ms"]["label"] = EMULATED_LATENCY
        report.setdefault("notes", []).append(
            f"validated on {report['where']['machine']} under QEMU user mode (QEMU_CPU="
            f"{report['where']['cpu']}): the outputs are the Arm build of the runtime's; the latency "
            f"is {EMULATED_LATENCY}")
    path = out_dir / p.get("report_name", "report.json")
    write_json(path, report)
    return path
