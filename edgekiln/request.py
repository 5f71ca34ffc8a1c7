"""What the user asked for: a build request and the input spec, parsed and checked.

Everything here is plain data and string parsing; the only I/O is looking at the model file to
detect its format (``detect_format``) and reading an optional sidecar spec file.
"""

from __future__ import annotations

import os
import re
import unicodedata
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

from .errors import DataError, InvalidModel, ModelNotFound, UsageError
from .targets import SourceKind, source_kinds

LAYOUTS = ("nchw", "nhwc")
RESIZES = ("crop", "stretch", "letterbox")
TASKS = ("classify", "detect", "segment", "map", "raw")  # = converters/ekit/task.py TASKS
HEADS = ("yolov5", "yolov8", "yolox", "ssd", "e2e")  # = converters/ekit/task.py HEADS
TASK_PARAMS = {"score_threshold": float, "nms_iou": float, "match_iou": float, "max_det": int,
               "threshold": float, "min_region_pixels": int, "first_class": int,
               # the gate's (docs/gates.md): ambiguity band, mAP decode threshold, augmentation
               "band": float, "map_score_threshold": float, "augment_min_boxes": int,
               "augment_max_images": int, "augment_mosaic": int}


@dataclass(frozen=True)
class InputSpec:
    """How pixels become the model's input tensor (see converters/README.md)."""

    name: str | None = None
    shape: tuple[int, ...] | None = None
    layout: str = "nchw"
    color: str = "rgb"
    scale: float = 255.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str = "crop"
    dynamic_batch: bool = False
    pad: int | None = None  # letterbox fill (0-255); None: 114 with letterbox
    # --resize not given: the source step letterboxes a detector, crops anything else
    # (converters/ekit/task.py letterbox_detector)
    resize_auto: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if data["pad"] is None:
            del data["pad"]  # absent unless letterboxing: older specs (and build keys) unchanged
        if not data["resize_auto"]:
            del data["resize_auto"]
        for key in ("shape", "mean", "std"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data


@dataclass(frozen=True)
class BuildRequest:
    model: Path
    model_name: str
    source_format: str
    targets: tuple[str, ...]
    precisions: tuple[str, ...] | None  # None: each target's defaults
    input: InputSpec = field(default_factory=InputSpec)
    calib: Path | None = None
    val: Path | None = None
    arch: str | None = None  # "zoo-name", "file.py:factory" or "pkg.module:factory"
    trust_pickle: bool = False  # --trust-model (alias --trust-pickle): the model file may run code
    opset: int = 17
    simplify: str = "onnxslim"
    max_images: int = 200
    options: Mapping[str, Any] = field(default_factory=dict)  # target option overrides
    thresholds: Mapping[str, Any] = field(default_factory=dict)  # "[precision.]metric" -> value
    out: Path = Path("dist")
    version: str | None = None
    task: str | None = None  # None: detected from the model (ekit_task.detect_task)
    head: str | None = None
    task_params: Mapping[str, Any] = field(default_factory=dict)  # score/NMS thresholds, ...
    # --platform linux/arm64: each target with [emulation] is also validated on that platform
    # (edgekiln.emulation), with QEMU_CPU emulate_cpu (None: the target's board)
    validate_on: str | None = None
    emulate_cpu: str | None = None


# ---------------------------------------------------------------- parsing of CLI strings


def parse_list(text: str | None, what: str) -> tuple[str, ...]:
    if not text:
        return ()
    items = tuple(part.strip() for part in str(text).split(",") if part.strip())
    if not items:
        raise UsageError(f"--{what} is empty", f"give a comma-separated list, e.g. --{what} a,b")
    return items


def parse_floats(text: str | None, what: str, count: int | None = 3) -> tuple[float, ...] | None:
    if text is None or text == "":
        return None
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise UsageError(f"--{what} {text!r} is not a list of numbers",
                         f"e.g. --{what} 0.485,0.456,0.406") from None
    if count and len(values) not in (1, count):
        raise UsageError(f"--{what} needs 1 or {count} values, got {len(values)}", "one per colour channel")
    if what == "std" and any(v == 0 for v in values):
        raise UsageError("--std has a zero", "std divides the pixels; use values > 0")
    return values


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None or text == "":
        return None
    try:
        shape = tuple(int(v) for v in str(text).replace("x", ",").split(","))
    except ValueError:
        raise UsageError(f"--input-shape {text!r} is not a list of integers", "e.g. --input-shape 1,3,224,224") from None
    if len(shape) != 4 or any(v <= 0 for v in shape):
        raise UsageError(f"--input-shape {text!r} must be 4 positive integers (batch, and 3 image dims)",
                         "e.g. 1,3,224,224 (nchw) or 1,224,224,3 (nhwc)")
    return shape


def parse_assignments(items: list[str] | tuple[str, ...] | None, what: str) -> dict[str, Any]:
    """``key=value`` pairs; values are read as TOML (numbers, booleans, strings unquoted)."""
    result: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = str(item).partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--{what} {item!r} is not key=value", f"e.g. --{what} name=value")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        result[key.strip()] = value
    return result


def safe_name(text: str) -> str:
    """A model name that is safe as one path component (no separators, no leading dots).

    Unicode letters are kept (NFC), anything else that is not a word character, '-' or '.'
    becomes '_'. ``../x`` becomes ``x``; an empty result becomes ``model``.
    """
    text = unicodedata.normalize("NFC", text)
    text = re.sub(r"[^\w.\-]+", "_", text, flags=re.UNICODE)
    text = re.sub(r"\.{2,}", "_", text).strip("._-")
    return text[:100] or "model"


def load_sidecar(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"input spec file {path} is not valid TOML: {exc}", "fix it or remove it") from None
    data = data.get("input", data)
    if not isinstance(data, dict):
        raise UsageError(f"input spec file {path}: [input] must be a table", "e.g. [input] shape = [1, 3, 224, 224]")
    return data


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# what each key of a sidecar / release.toml input table may hold (a CLI string is parsed as before)
SPEC_TYPES = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "shape": (lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(d, int) and not
                                                                           isinstance(d, bool) for d in v)),
              "a list of whole numbers, e.g. [1, 3, 224, 224]"),
    "layout": (lambda v: isinstance(v, str), "\"nchw\" or \"nhwc\""),
    "color": (lambda v: isinstance(v, str) and v.lower() in ("rgb", "bgr"), "\"rgb\" or \"bgr\""),
    "bgr": (lambda v: isinstance(v, bool), "true or false"),
    "scale": (_number, "a number, e.g. 255"),
    "mean": (lambda v: isinstance(v, str) or _number(v) or (isinstance(v, list) and all(map(_number, v))),
             "a list of numbers, e.g. [0.485, 0.456, 0.406]"),
    "std": (lambda v: isinstance(v, str) or _number(v) or (isinstance(v, list) and all(map(_number, v))),
            "a list of numbers, e.g. [0.229, 0.224, 0.225]"),
    "resize": (lambda v: isinstance(v, str), "\"crop\", \"stretch\" or \"letterbox\""),
    "dynamic_batch": (lambda v: isinstance(v, bool), "true or false"),
    "pad": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number 0-255"),
}


def check_spec_types(side: Mapping[str, Any]) -> None:
    """A spec table's values have the types their keys take (one line naming the key, not a
    traceback, for ``scale = "x"`` or ``layout = 3``)."""
    for key, value in side.items():
        check, what = SPEC_TYPES.get(key, (None, None))
        if check is not None and not check(value):
            raise UsageError(f"input spec: {key} = {value!r} is not {what}", f"fix {key} in the spec")


def input_spec(*, shape=None, layout=None, mean=None, std=None, bgr=None, scale=None, resize=None,
               name=None, dynamic_batch=None, pad=None, sidecar: Mapping[str, Any] | None = None,
               default_layout: str = "nchw") -> InputSpec:
    """Build an InputSpec: command-line values win over the sidecar, which wins over defaults."""
    side = dict(sidecar or {})
    check_spec_types(side)

    def pick(value, key):
        return value if value is not None else side.get(key)

    raw_shape = pick(shape, "shape")
    if isinstance(raw_shape, (list, tuple)):
        raw_shape = ",".join(map(str, raw_shape))
    spec = InputSpec(
        name=pick(name, "name"),
        shape=parse_shape(raw_shape),
        layout=(pick(layout, "layout") or default_layout).lower(),
        color="bgr" if pick(bgr, "bgr") or str(side.get("color", "rgb")).lower() == "bgr" else "rgb",
        scale=_scale(pick(scale, "scale")),
        mean=_floats_from(pick(mean, "mean"), "mean"),
        std=_floats_from(pick(std, "std"), "std"),
        resize=(pick(resize, "resize") or "crop").lower(),
        dynamic_batch=bool(pick(dynamic_batch, "dynamic_batch") or False),
        pad=parse_pad(pick(pad, "pad"), (pick(resize, "resize") or "crop").lower()),
        resize_auto=pick(resize, "resize") is None,
    )
    if spec.layout not in LAYOUTS:
        raise UsageError(f"--layout {spec.layout!r} is unknown", "use nchw or nhwc")
    if spec.resize not in RESIZES:
        raise UsageError(f"--resize {spec.resize!r} is unknown", "use crop, stretch or letterbox")
    if spec.scale <= 0:
        raise UsageError("--pixel-scale must be > 0", "255 feeds 0..1 pixels, 1 feeds 0..255")
    if spec.shape:
        channels = spec.shape[1] if spec.layout == "nchw" else spec.shape[3]
        if channels not in (1, 3):
            raise UsageError(f"--input-shape {','.join(map(str, spec.shape))} has {channels} channels "
                             f"in {spec.layout} layout", "images have 1 or 3 channels: check --layout")
    return spec


def _scale(value) -> float:
    try:
        return float(value or 255.0)
    except (TypeError, ValueError):
        raise UsageError(f"--pixel-scale {value!r} is not a number", "255 feeds 0..1 pixels, 1 feeds 0..255") from None


def parse_pad(value, resize: str) -> int | None:
    """The letterbox fill value: an integer 0-255; only with ``--resize letterbox`` (114 there
    when not given, the grey YOLO models are trained with)."""
    if value is None or value == "":
        return 114 if resize == "letterbox" else None
    try:
        pad = int(str(value))
    except ValueError:
        raise UsageError(f"--pad {value!r} is not an integer", "e.g. --pad 114 (0-255)") from None
    if not 0 <= pad <= 255:
        raise UsageError(f"--pad {pad} is outside 0-255", "give a pixel value, e.g. 114")
    if resize != "letterbox":
        raise UsageError(f"--pad only applies to --resize letterbox (the resize is {resize})",
                         "add --resize letterbox or drop --pad")
    return pad


def parse_task(task: str | None, head: str | None, params: Mapping[str, Any] | None = None):
    """``--task``, ``--head`` and ``--task-param key=value`` checked -> (task, head, params).
    A head implies ``detect``; a head with another task is a usage error."""
    task = (task or "").strip().lower() or None
    head = (head or "").strip().lower() or None
    if task is not None and task not in TASKS:
        raise UsageError(f"--task {task!r} is unknown", f"use one of {', '.join(TASKS)}")
    if head is not None:
        if head not in HEADS:
            raise UsageError(f"--head {head!r} is unknown", f"use one of {', '.join(HEADS)}")
        if task not in (None, "detect"):
            raise UsageError(f"--head {head} describes a detector but --task is {task}",
                             "drop --head or use --task detect")
        task = "detect"
    checked = {}
    for key, value in (params or {}).items():
        if key not in TASK_PARAMS:
            raise UsageError(f"--task-param {key!r} is unknown", f"use one of {', '.join(TASK_PARAMS)}")
        try:
            number = TASK_PARAMS[key](value)
        except (TypeError, ValueError):
            raise UsageError(f"--task-param {key}={value!r} is not a number", f"e.g. {key}=0.25") from None
        if number < 0 or (key in ("score_threshold", "nms_iou", "match_iou", "threshold", "band",
                                  "map_score_threshold") and number > 1):
            raise UsageError(f"--task-param {key}={value} is out of range",
                             "thresholds and IoUs are between 0 and 1, counts >= 0")
        checked[key] = number
    return task, head, checked


def _floats_from(value, what):
    if isinstance(value, (list, tuple)):
        if not value or len(value) not in (1, 3):
            raise UsageError(f"{what} needs 1 or 3 values, got {len(value)}", "one per colour channel")
        if what == "std" and any(v == 0 for v in value):
            raise UsageError("std has a zero", "std divides the pixels; use values > 0")
        return tuple(float(v) for v in value)
    return parse_floats(value, what)


# ---------------------------------------------------------------- model files


def detect_format(path: Path, *, arch: str | None, trust_pickle: bool,
                  sources: Mapping[str, SourceKind] | None = None) -> str:
    """The source format of a model file or folder; raises a clear error for anything else.
    Suffixes come from targets/_sources.toml; torch.save files (``by_content``) are told apart
    by what is inside them."""
    sources = sources if sources is not None else source_kinds()
    decisive = {suf: fmt for fmt, k in sources.items() if not k.by_content for suf in k.suffixes}
    torch_suffixes = {suf for k in sources.values() if k.by_content for suf in k.suffixes}
    if not path.exists():
        raise ModelNotFound(f"model {path} does not exist", "check the path given to --model")
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "saved_model"
        raise InvalidModel(f"{path} is a folder but not a TensorFlow SavedModel (no saved_model.pb)",
                           "give a model file (.onnx, .pt, .pt2, .keras, .h5) or a SavedModel folder")
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ModelNotFound(f"model {path} cannot be read: {exc.strerror}", "check its permissions") from None
    if not head:
        raise InvalidModel(f"model {path} is empty (0 bytes)", "re-export or re-download it")
    suffix = path.suffix.lower()
    if suffix in decisive:
        return decisive[suffix]
    if zipfile.is_zipfile(path):
        names = _zip_names(path)
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return _program(path, "torchscript", trust_pickle)
        if any(n.endswith("archive_format") or "/serialized_exported_program" in n or
               n.endswith("/models/model.json") for n in names):
            return _program(path, "torch_export", trust_pickle)
        if any(n.endswith("data.pkl") for n in names):
            return _checkpoint_kind(path, arch, trust_pickle)
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80":  # legacy (pre-zip) torch.save pickle
        return _checkpoint_kind(path, arch, trust_pickle)
    if head[:4] == b"\x89HDF":
        return "keras"
    if suffix in torch_suffixes:
        raise InvalidModel(f"{path} is not a PyTorch file (not a zip archive nor a pickle)",
                           "save it with torch.save, torch.jit.save or torch.export.save")
    raise InvalidModel(f"{path} is not a model edgekiln can read",
                       "give .onnx, TorchScript/.pt, torch.export .pt2, .keras/.h5 or a SavedModel folder")


# operators of a TorchScript / torch.export program that reach files (ATen's from_file, torchvision's
# image read_file/write_file, loading an operator library); the rest of such a program is tensor math
FILE_OPS = re.compile(rb"\bfrom_file\b|\bread_file\b|\bwrite_file\b|load_library")


def _program(path: Path, fmt: str, trust: bool) -> str:
    """A TorchScript / torch.export file runs no Python, but its operators could read or write
    files: one that names such an operator loads only with --trust-model (docs/trust.md)."""
    if trust:
        return fmt
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename.endswith((".py", ".json")) and info.file_size < 1 << 26:
                    found = FILE_OPS.search(zf.read(info))
                    if found:
                        raise UsageError(f"{path.name} is a {fmt} program that calls {found.group().decode()} "
                                         f"({info.filename}): it reaches files, refused",
                                         "if you trust the file, pass --trust-model (docs/trust.md)")
    except (zipfile.BadZipFile, OSError):
        raise InvalidModel(f"{path} is a damaged zip archive", "re-save the model") from None
    return fmt


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        raise InvalidModel(f"{path} is a damaged zip archive", "re-save the model") from None


def _checkpoint_kind(path: Path, arch: str | None, trust_pickle: bool) -> str:
    if trust_pickle:
        return "pickle"  # a whole module, or a state dict that --arch (if given) is built for
    if arch:
        return "state_dict"
    raise UsageError(
        f"{path.name} is a torch.save checkpoint (weights, not a graph)",
        "pass --arch module:factory (or a built-in like mobilenet_v2) to load it as a state dict, "
        "or --trust-model if it is a whole pickled module you trust (it runs code from the file)")



# ---------------------------------------------------------------- the whole request

SIMPLIFIERS = ("onnxslim", "onnxsim", "none")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"}


def make_request(*, model, target="onnx", precision=None, calib=None, val=None, input_shape=None,
                 layout=None, mean=None, std=None, bgr=False, pixel_scale=None, resize=None,
                 input_name=None, dynamic_batch=False, spec=None, arch=None, trust_pickle=False, trust_model=False,
                 opset=17, simplify="onnxslim", max_images=200, option=(), threshold=(),
                 max_drop=None, jetpack=None, version=None, name=None, out="dist", task=None, head=None,
                 task_param=(), pad=None, recover=False,
                 sources: Mapping[str, SourceKind] | None = None) -> BuildRequest:
    """A checked BuildRequest from command-line values (strings as typed). Every user error is
    raised here, before any environment or Docker engine is touched.

    ``max_drop`` is shorthand for the threshold ``int8.max_accuracy_drop`` (percentage points);
    ``jetpack`` for the jetson target's option ``jetpack`` (a row of targets/_tensorrt.toml);
    ``recover`` for the option ``recover=true`` on every target that declares it (int8 accuracy
    recovery: converters/ekit/recover.py)."""
    if not model:
        raise UsageError("no model given", "pass --model FILE (see `edgekiln build --help`)")
    sources = sources if sources is not None else source_kinds()
    trust_pickle = bool(trust_pickle or trust_model)  # one opt-in: the model file may run code
    model_path = Path(model).expanduser()
    fmt = detect_format(model_path, arch=arch, trust_pickle=trust_pickle, sources=sources)
    sidecar_path = Path(spec) if spec else model_path.with_name(model_path.name + ".edgekiln.toml")
    if spec and not sidecar_path.is_file():
        raise UsageError(f"input spec file {spec} does not exist", "check --spec")
    sidecar = load_sidecar(sidecar_path) if sidecar_path.is_file() else None
    ispec = input_spec(shape=input_shape, layout=layout, mean=mean, std=std, bgr=bgr or None,
                       scale=pixel_scale, resize=resize, name=input_name,
                       dynamic_batch=dynamic_batch or None, pad=pad, sidecar=sidecar,
                       default_layout=sources[fmt].layout if fmt in sources else "nchw")
    for label, folder in (("--calib", calib), ("--val", val)):
        if folder is not None:
            check_image_folder(Path(folder), label)
    if simplify not in SIMPLIFIERS:
        raise UsageError(f"--simplify {simplify!r} is unknown", f"use {', '.join(SIMPLIFIERS)}")
    try:
        max_images, opset = int(max_images), int(opset)
    except (TypeError, ValueError):
        raise UsageError("--max-images and --opset take whole numbers", "e.g. --max-images 200") from None
    if max_images < 1:
        raise UsageError("--max-images must be at least 1", "e.g. --max-images 200")
    task, head, task_params = parse_task(task, head, parse_assignments(task_param, "task-param"))
    thresholds = parse_assignments(threshold, "threshold")
    if max_drop is not None:
        try:
            thresholds["int8.max_accuracy_drop"] = float(max_drop)
        except (TypeError, ValueError):
            raise UsageError(f"--max-drop {max_drop!r} is not a number", "e.g. --max-drop 1.0 (points)") from None
    options = parse_assignments(option, "option")
    if jetpack is not None:
        if "jetson" not in parse_list(target, "target"):
            raise UsageError("--jetpack is an option of the jetson target", "drop it or add --target jetson")
        options["jetpack"] = str(jetpack)
    if recover:
        options.setdefault("recover", True)
    return BuildRequest(
        model=model_path.resolve(),
        model_name=safe_name(name or (model_path.name if model_path.is_dir() else model_path.stem)),
        source_format=fmt,
        targets=parse_list(target, "target"),
        precisions=parse_list(precision, "precision") or None,
        input=ispec,
        calib=Path(calib).resolve() if calib else None,
        val=Path(val).resolve() if val else None,
        arch=arch,
        trust_pickle=bool(trust_pickle),
        opset=opset,
        simplify=simplify,
        max_images=max_images,
        options=options,
        thresholds=thresholds,
        out=check_out(out),
        version=version,
        task=task,
        head=head,
        task_params=task_params,
    )


def check_out(path: Path, flag: str = "--out") -> Path:
    """An output root: a folder, or a path where one can be made (not a file, nor under one)."""
    path = Path(path).expanduser()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise UsageError(f"{flag} {path}: {p} is a file, not a folder", f"give {flag} a folder (it is made when missing)")
            break
    return path


def check_image_folder(folder: Path, label: str) -> None:
    """Fail early (before any environment) on a missing, unreadable or image-less folder."""
    if not folder.is_dir():
        raise DataError(f"{label} {folder} is not a folder", "give a folder of images")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise DataError(f"{label} {folder} cannot be read (permission denied)", "check its permissions")
    from .inputs import tree_files  # the listing the version hash and the steps share

    try:
        found = any(p.suffix.lower() in IMAGE_SUFFIXES for p in tree_files(folder.resolve(), label))
    except OSError as exc:
        raise DataError(f"{label} {folder} cannot be read: {exc.strerror}", "check its permissions") from None
    if not found:
        raise DataError(f"{label} {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
                        "point it at a folder of real images")
