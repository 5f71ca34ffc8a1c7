"""ekit_tf — TensorFlow / onnx2tf / LiteRT helpers for the TFLite (rpi) converter templates.

Plain Python, copied next to the scripts that import it (edgekiln/helpers.py); TensorFlow, onnx2tf and LiteRT are imported
inside the functions, so the module itself imports anywhere (unit tests run it without TF).

Conventions the templates and the manifest rely on:

* Every .tflite edgekiln writes has ONE signature whose outputs are named ``output_0``,
  ``output_1``, … in the order of the reference outputs (``y0``, ``y1``, … of reference.npz);
  :func:`run_litert` returns them in that order.
* Float artifacts take the model's own preprocessed tensor, laid out NHWC (TFLite's layout).
* int8 artifacts built with ``int8_input = "pixels"`` (the default) have the preprocessing of the
  InputSpec (colour order, /scale, -mean, /std) folded INTO the model: their input is ``pixels`` —
  RGB 0-255 NHWC (greyscale 0-255 [N,H,W,1] for a one-channel model) — and its quantization is
  pinned to scale 1 (zero point 0 for uint8, -128 for int8), so a user feeds raw pixels (minus 128
  for int8 I/O) and nothing else.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

import ekit

FLOAT_PRECISIONS = ("fp32", "fp16", "dynamic")
INT_PRECISIONS = ("int8", "int8x16")
PRECISIONS = FLOAT_PRECISIONS + INT_PRECISIONS

# What each precision is, in words that end up in the report (names are honest: "dynamic" is
# not integer inference).
PRECISION_TEXT = {
    "fp32": "float32 weights and activations",
    "fp16": "float16 weights (dequantized to float32 at load time unless the CPU runs fp16), "
            "float32 activations",
    "dynamic": "dynamic-range quantization: int8 weights, float32 activations (activations are "
               "quantized on the fly inside some kernels); NOT full integer",
    "int8": "full integer: int8 weights and activations, calibrated on real images",
    "int8x16": "int8 weights, int16 activations (16x8 mode; slow on CPUs without int16 kernels)",
}

ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


# --------------------------------------------------------------------------- layout / pixels

def int8_options(opts) -> tuple[str, str]:
    """The int8 I/O options of a TFLite convert step, checked: (int8_io, int8_input)."""
    int8_io, int8_input = str(opts["int8_io"]), str(opts["int8_input"])
    if int8_io not in ("uint8", "int8", "float32"):
        ekit.fail("usage", f"option int8_io={int8_io!r}: use uint8, int8 or float32")
    if int8_input not in ("pixels", "tensor"):
        ekit.fail("usage", f"option int8_input={int8_input!r}: use pixels or tensor")
    return int8_io, int8_input


def load_calibration(src, precision: str, opts, notes: list, needs: bool):
    """``work/source/calib.npy`` cut to ``calib_count`` (None when the source step wrote none); a
    ``data`` failure when ``needs`` and there is none; a warning below ``calib_warn_below``."""
    path = Path(src) / "calib.npy"
    calib = np.load(path) if path.is_file() else None
    if needs and calib is None:
        ekit.fail("data", f"{precision} needs calibration images and the source step wrote none",
                  "pass --calib FOLDER")
    if calib is not None:
        calib = calib[:int(opts["calib_count"])]
        if needs and calib.shape[0] < int(opts["calib_warn_below"]):
            ekit.warn(f"{precision}: only {calib.shape[0]} calibration image(s); ranges from few images "
                      "clip outliers (200 representative images are the default)")
            notes.append(f"calibrated on only {calib.shape[0]} image(s)")
    return calib


def describe(artifact, fold: bool, int8_io: str, notes: list) -> dict:
    """What a written .tflite takes, read back from the file: ``{"size_bytes", "io", "feed_mode"}``."""
    spec = io_specs(interpreter(artifact, 1))
    qin = spec["inputs"][0]["quantization"]
    if fold and qin and (abs(qin["scale"][0] - 1.0) > 1e-6
                         or qin["zero_point"][0] != (0 if int8_io == "uint8" else -128)):
        notes.append(f"input quantization is scale={qin['scale'][0]:g}, zero_point={qin['zero_point'][0]}, "
                     "not the pixel identity: quantize pixels with them")
    feed_mode = "pixels" if fold else ("quantized_tensor" if qin else "float_tensor")
    return {"size_bytes": Path(artifact).stat().st_size, "io": spec, "feed_mode": feed_mode}


def to_nhwc(x: np.ndarray) -> np.ndarray:
    """[N,C,H,W] -> [N,H,W,C] (other ranks unchanged)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x


def model_input_nhwc(x: np.ndarray, spec: dict) -> np.ndarray:
    """A tensor in the InputSpec's layout -> the NHWC tensor a TFLite artifact takes."""
    return to_nhwc(x) if spec.get("layout", "nchw") == "nchw" else np.ascontiguousarray(x)


def nhwc_shape(spec: dict, batch: int = 1) -> list[int]:
    h, w, c = ekit.input_hw(spec)
    return [batch, h, w, c]


def _norm(spec: dict, c: int):
    mean = spec.get("mean")
    std = spec.get("std")
    mean = np.zeros(c, np.float32) if mean is None else np.broadcast_to(
        np.asarray(mean, np.float32).reshape(-1), (c,)).copy()
    std = np.ones(c, np.float32) if std is None else np.broadcast_to(
        np.asarray(std, np.float32).reshape(-1), (c,)).copy()
    return mean, std, float(spec.get("scale") or 1.0)


def pixels_from_x(x: np.ndarray, spec: dict) -> np.ndarray:
    """Invert ekit.preprocess: preprocessed tensors (model layout) -> float32 pixels in 0..255,
    RGB [N,H,W,3] (greyscale L [N,H,W,1] for a one-channel model). Used to calibrate a
    pixel-input int8 model from calib.npy."""
    h, w, c = ekit.input_hw(spec)
    t = model_input_nhwc(x, spec).astype(np.float32)
    mean, std, scale = _norm(spec, c)
    p = (t * std + mean) * scale
    if c == 3 and spec.get("color", "rgb") == "bgr":
        p = p[..., ::-1]
    return np.clip(np.rint(p), 0.0, 255.0).astype(np.float32)


def preprocess_tf(pixels, spec: dict):
    """ekit.preprocess as TensorFlow ops (NHWC out): 0-255 float pixels, RGB [N,H,W,3] or
    greyscale [N,H,W,1] for a one-channel model -> the model's input.

    One 1x1 convolution with bias: channel order, /scale, -mean and /std are a per-channel affine
    map, which TFLite turns into a single int8 CONV_2D with per-channel weights (each weight is
    exactly representable), the cheapest and most exact integer form of the preprocessing."""
    import tensorflow as tf

    h, w, c = ekit.input_hw(spec)
    mean, std, scale = _norm(spec, c)
    a = 1.0 / (scale * std)
    b = -mean / std
    kernel = np.zeros((1, 1, c, c), np.float32)
    for j in range(c):  # model channel j reads pixel channel i
        i = c - 1 - j if (c == 3 and spec.get("color", "rgb") == "bgr") else j
        kernel[0, 0, i, j] = a[j]
    return tf.nn.bias_add(tf.nn.conv2d(pixels, tf.constant(kernel), strides=1, padding="VALID"),
                          tf.constant(b.astype(np.float32)))


# --------------------------------------------------------------------------- LiteRT

def output_keys(keys) -> list[str]:
    """Signature output names in reference order: output_0, output_1, … numerically, other
    names alphabetically (what source_tf uses for y0, y1, …)."""
    def k(name):
        m = re.fullmatch(r"output_(\d+)", name)
        return (0, int(m.group(1)), "") if m else (1, 0, name)
    return sorted(keys, key=k)



def interpreter(model_path, threads: int | None):
    """A LiteRT interpreter (default op resolver = builtin kernels + XNNPACK delegate)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=os.fspath(model_path), num_threads=int(threads) if threads else None)
    it.allocate_tensors()
    return it


def _q(detail):
    qp = detail.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", []), dtype=np.float64)
    zps = np.asarray(qp.get("zero_points", []), dtype=np.int64)
    if scales.size == 0:
        s, z = detail.get("quantization", (0.0, 0))
        if not s:
            return None
        scales, zps = np.asarray([s], np.float64), np.asarray([z], np.int64)
    return {"scale": scales, "zero_point": zps}


def ordered_outputs(it) -> list[dict]:
    """Output details in reference order (via the signature's output names when present)."""
    details = it.get_output_details()
    sigs = it.get_signature_list()
    if sigs:
        sig = sigs[next(iter(sigs))]
        names = sig.get("outputs", {})
        runner = it.get_signature_runner(next(iter(sigs)))
        idx = runner.get_output_details()
        by_index = {d["index"]: d for d in details}
        order = []
        for key in output_keys(list(names)):
            d = dict(by_index.get(idx[key]["index"], idx[key]))
            d["signature_name"] = key
            order.append(d)
        if len(order) == len(details):
            return order
    return details


def io_specs(it) -> dict:
    def spec(d, name=None):
        q = _q(d)
        return ekit.tensor_spec(name or d["name"], [int(v) for v in d["shape_signature"]]
                                if "shape_signature" in d else list(d["shape"]),
                                np.dtype(d["dtype"]).name, q)
    ins = it.get_input_details()
    return {"inputs": [spec(d) for d in ins],
            "outputs": [spec(d, d.get("signature_name")) for d in ordered_outputs(it)]}


def quantize(x: np.ndarray, detail) -> np.ndarray:
    """float -> the input's integer dtype with its scale/zero point (round half to even, like
    numpy; clipped to the dtype)."""
    dt = np.dtype(detail["dtype"])
    q = _q(detail)
    if q is None:
        return x.astype(dt)
    s, z = float(q["scale"][0]), int(q["zero_point"][0])
    info = np.iinfo(dt)
    return np.clip(np.rint(x / s) + z, info.min, info.max).astype(dt)


def dequantize(y: np.ndarray, detail) -> np.ndarray:
    q = _q(detail)
    if q is None or np.dtype(detail["dtype"]).kind == "f":
        return y.astype(np.float32)
    s, z = q["scale"], q["zero_point"]
    if s.size > 1:  # per-axis output quantization (rare)
        axis = int((detail.get("quantization_parameters") or {}).get("quantized_dimension", 0))
        shape = [1] * y.ndim
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    else:
        s, z = float(s[0]), int(z[0])
    return ((y.astype(np.float64) - z) * s).astype(np.float32)


def run_litert(it, feeds: np.ndarray, batch: int = 1) -> list[np.ndarray]:
    """Run ``feeds`` ([N, …], already in the input's dtype) ``batch`` at a time; dequantized
    outputs in reference order, stacked on axis 0."""
    inp = it.get_input_details()[0]
    outs_d = ordered_outputs(it)
    collected = [[] for _ in outs_d]
    for i in range(0, feeds.shape[0], batch):
        it.set_tensor(inp["index"], feeds[i:i + batch])
        it.invoke()
        for k, d in enumerate(outs_d):
            collected[k].append(dequantize(it.get_tensor(d["index"]).copy(), d))
    return [np.concatenate(c, axis=0) for c in collected]


def reference_feeds(it, ref: dict, spec: dict, mode: str) -> np.ndarray:
    """The reference images as a user feeds the artifact (``mode``: the convert step's feed_mode):
    pixels -> RGB (greyscale for one channel) 0-255, quantized when the input is integer;
    quantized_tensor -> the preprocessed NHWC tensor quantized; float_tensor -> that tensor."""
    inp = it.get_input_details()[0]
    dtype = np.dtype(inp["dtype"])
    if mode == "pixels":
        grey = int(inp["shape"][-1]) == 1
        pix = (grey_pixels(ref["pixels"]) if grey else ref["pixels"]).astype(np.float32)
        return quantize(pix, inp) if dtype.kind in "iu" else pix
    x = model_input_nhwc(ref["x"], spec)
    return quantize(x, inp) if mode == "quantized_tensor" else x.astype(dtype)


def reference_outputs(it, feeds: np.ndarray, batch: int, ref: dict) -> tuple[list[np.ndarray], list[str]]:
    """Run ``feeds``; dequantized outputs in the reference's layout (NHWC ones transposed back),
    and the notes of what was transposed."""
    matched, notes = [], []
    for r, o in zip(ref["y"], run_litert(it, feeds, batch)):
        o2, note = match_layout(r, o)
        matched.append(o2)
        if note:
            notes.append(note)
    return matched, notes


def match_layout(ref: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, str | None]:
    """A TFLite output that is the NHWC form of an NCHW reference is transposed back."""
    if ref.shape == out.shape or ref.size != out.size:
        return out, None
    if out.ndim >= 3 and ref.ndim == out.ndim:
        perm = (0, out.ndim - 1) + tuple(range(1, out.ndim - 1))
        t = out.transpose(perm)
        if t.shape == ref.shape:
            return np.ascontiguousarray(t), f"output transposed {list(out.shape)} -> {list(ref.shape)} (NHWC -> NCHW)"
    return out, None


def tflite_ops(model_path) -> list[str]:
    """Builtin op names used by a .tflite (for the report)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=os.fspath(model_path))
        return sorted({d["op_name"] for d in it._get_ops_details()})
    except Exception:
        return []


# --------------------------------------------------------------------------- TensorFlow sources

def _is_qat(model) -> bool:
    return any(type(l).__name__.startswith(("QuantizeWrapper", "QuantizeLayer", "QuantizeAnnotate"))
               for l in getattr(model, "layers", []))


TRUST_HINT = "if you trust the file, pass --trust-model (it may then run code; see docs/trust.md)"
# TensorFlow ops that reach outside the tensors: files, processes, printing to a stream, datasets,
# summaries, checkpoints, Python callbacks. A SavedModel's graph is a program; one that uses these
# (outside its own variable save/restore functions) loads only with --trust-model.
OUTSIDE_OPS = re.compile(r"File|Reader|Record|Save|Restore|Checkpoint|Summary|Print|PyFunc|Dataset|Iterator"
                         r"|Debug|Proto|ImmutableConst|Rpc|Socket")


def saved_model_outside_ops(path: Path) -> list[str]:
    """The ops of a SavedModel's graph (and its functions, except the variable save/restore
    functions TensorFlow writes itself) that match OUTSIDE_OPS, read from saved_model.pb without
    running anything."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString((path / "saved_model.pb").read_bytes())
    except Exception as e:
        ekit.fail("invalid_model", f"{path.name}/saved_model.pb cannot be parsed ({type(e).__name__})")
    found = set()
    for meta in sm.meta_graphs:
        nodes = list(meta.graph_def.node)
        for fn in meta.graph_def.library.function:
            if re.match(r"__inference__traced_(save|restore)_\d+$", fn.signature.name):
                continue  # the checkpoint I/O TensorFlow itself adds to every SavedModel
            nodes += list(fn.node_def)
        found |= {n.op for n in nodes if OUTSIDE_OPS.search(n.op)}
    # the top-level graph's own save/restore nodes (saver_def) are TensorFlow's too
    return sorted(found - {"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename"})


def load_tf_model(path, fmt: str, trust: bool = False) -> dict:
    """A TF SavedModel folder or a Keras .keras/.h5 file -> ``{"fn": x -> [tensors in reference
    order], "shape": [d|None, …], "dtype", "input_name", "output_names", "trackable", "kind",
    "keras_api", "signature", "qat"}``. User errors (no signature, not a model, several inputs)
    are ``ekit.fail`` with a hint.

    ``trust`` (--trust-model): the file may run code. Without it a Keras Lambda layer (Python
    bytecode) is refused by Keras' safe mode — final, no other loader is tried unsafely — and a
    SavedModel whose graph uses ops that reach outside its tensors (OUTSIDE_OPS) is refused."""
    import tensorflow as tf

    path = Path(path)
    info = {"kind": fmt, "keras_api": None, "signature": None, "qat": False, "trusted": bool(trust)}
    if fmt == "saved_model":
        if not path.is_dir() or not ((path / "saved_model.pb").is_file()
                                     or (path / "saved_model.pbtxt").is_file()):
            ekit.fail("invalid_model", f"{path.name} is not a TensorFlow SavedModel folder (no saved_model.pb)")
        if not trust:
            if not (path / "saved_model.pb").is_file():
                ekit.fail("usage", f"{path.name} holds a text saved_model.pbtxt, which edgekiln does not "
                                   "check for code", TRUST_HINT)
            outside = saved_model_outside_ops(path)
            if outside:
                ekit.fail("usage", f"the SavedModel {path.name} is a program that reaches outside its "
                                   f"tensors (ops {', '.join(outside[:6])}): refused", TRUST_HINT)
        try:
            obj = tf.saved_model.load(os.fspath(path))
        except Exception as e:
            ekit.fail("invalid_model", f"TensorFlow cannot load the SavedModel {path.name} "
                                       f"({type(e).__name__}: {str(e).strip()[:300]})")
        sigs = dict(getattr(obj, "signatures", {}) or {})
        if not sigs:
            ekit.fail("invalid_model", f"the SavedModel {path.name} has no signature: there is no "
                                       "function edgekiln could call (no serving_default)",
                      "save it with a signature: tf.saved_model.save(model, dir, signatures="
                      "model.__call__.get_concrete_function(tf.TensorSpec([1, H, W, 3], tf.float32))) "
                      "or keras model.export(dir)")
        if "serving_default" in sigs:
            key = "serving_default"
        elif len(sigs) == 1:
            key = next(iter(sigs))
        else:
            ekit.fail("unsupported", f"the SavedModel {path.name} has {len(sigs)} signatures "
                                     f"({', '.join(sorted(sigs))}) and none is serving_default",
                      "export the one to convert as serving_default")
        sig = sigs[key]
        ins = sig.structured_input_signature[1]
        if len(ins) != 1 or sig.structured_input_signature[0]:
            ekit.fail("unsupported", f"signature {key} of {path.name} takes {len(ins)} inputs "
                                     f"({', '.join(sorted(ins))}); edgekiln converts single-image-input "
                                     "models", "export a signature with one image input")
        in_key, in_spec = next(iter(ins.items()))
        outs = output_keys(list(sig.structured_outputs))
        info.update(signature=key, input_name=in_key, output_names=outs, trackable=obj,
                    shape=[None if d is None else int(d) for d in in_spec.shape],
                    dtype=in_spec.dtype.name)

        def fn(x, _sig=sig, _k=in_key, _o=outs):
            r = _sig(**{_k: x})
            return [r[k] for k in _o]
        info["fn"] = fn
        return info

    if fmt != "keras":
        ekit.fail("usage", f"{fmt} is not a TensorFlow format")
    if not path.is_file():
        ekit.fail("invalid_model", f"{path.name} is not a file")
    errors, model = [], None
    try:
        import keras  # Keras 3

        model = keras.saving.load_model(os.fspath(path), compile=False, safe_mode=not trust)
        info["keras_api"] = f"keras {keras.__version__}"
    except Exception as e:
        _refuse_code(path, e, trust)
        errors.append(f"Keras 3: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
    if model is None:
        try:  # Keras 2 (tf_keras), with tfmot's quantization layers known (QAT models)
            import tensorflow_model_optimization as tfmot
            import tf_keras
            from tf_keras.src.saving.serialization_lib import SafeModeScope

            # legacy H5 loading runs a Lambda's bytecode unless safe mode is on explicitly
            with SafeModeScope(not trust), tfmot.quantization.keras.quantize_scope():
                model = tf_keras.models.load_model(os.fspath(path), compile=False)
            info["keras_api"] = f"tf_keras {tf_keras.__version__}"
        except Exception as e:
            _refuse_code(path, e, trust)
            errors.append(f"tf_keras: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
    if model is None or not hasattr(model, "inputs") or not callable(model):
        ekit.fail("invalid_model", f"{path.name} is not a Keras model ({'; '.join(errors)})",
                  "give a file saved with model.save('m.keras') (or .h5 with the architecture, "
                  "not weights only)")
    inputs = list(model.inputs or [])
    if len(inputs) != 1:
        ekit.fail("unsupported", f"the Keras model {path.name} has {len(inputs)} inputs; edgekiln "
                                 "converts single-image-input models")
    names = [getattr(t, "name", f"output_{i}") for i, t in enumerate(model.outputs)]

    def fn(x, _m=model):
        y = _m(x, training=False)
        if isinstance(y, dict):
            return [y[k] for k in output_keys(list(y))]
        return list(y) if isinstance(y, (list, tuple)) else [y]

    info.update(fn=fn, trackable=model, input_name=str(getattr(inputs[0], "name", "input")).split(":")[0],
                output_names=names, shape=[None if d is None else int(d) for d in inputs[0].shape],
                dtype=str(getattr(inputs[0].dtype, "name", inputs[0].dtype)), qat=_is_qat(model))
    return info


def _refuse_code(path: Path, exc: Exception, trust: bool) -> None:
    """A loader's safe-mode refusal (a Lambda layer, an arbitrary-code object) is final without
    --trust-model: no other loader gets to try the file."""
    text = str(exc)
    if not trust and ("safe_mode" in text or "arbitrary code" in text):
        ekit.fail("usage", f"{path.name} contains Python code (a Lambda layer or another object Keras' "
                           "safe mode refuses): refused", TRUST_HINT)


def resolve_spec(spec: dict, model_shape: list, notes: list) -> dict:
    """The InputSpec with the model's own shape (batch None -> 1) when none was given, and the
    layout corrected to the model's when the channels are obviously elsewhere."""
    spec = dict(spec)
    shape = list(model_shape)
    if len(shape) != 4:
        ekit.fail("unsupported", f"the model's input has shape {shape}: edgekiln feeds 4-D images")
    if spec.get("shape") is None:
        if shape[1] is None or shape[2] is None or shape[3] is None:
            ekit.fail("shape", f"the model's input shape {shape} is not fixed", "give --input-shape")
        spec["shape"] = [shape[0] or 1] + shape[1:]
        layout = spec.get("layout", "nhwc")
        if layout == "nchw" and shape[3] in (1, 3) and shape[1] not in (1, 3):
            notes.append("TensorFlow model: layout nhwc (channels last), not the nchw default")
            spec["layout"] = "nhwc"
        elif layout == "nhwc" and shape[1] in (1, 3) and shape[3] not in (1, 3):
            spec["layout"] = "nchw"
    else:
        given = list(spec["shape"])
        if len(given) != 4 or any(m is not None and m != g for m, g in zip(shape[1:], given[1:])):
            ekit.fail("shape", f"--input-shape {given} does not match the model's input {shape}")
    return spec


def grey_pixels(pixels_rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [N,H,W,3] -> uint8 greyscale [N,H,W,1] (ekit.preprocess's luma, rounded: what a
    one-channel pixel-input artifact is fed)."""
    p = pixels_rgb.astype(np.float64)
    luma = p[..., 0:1] * 0.299 + p[..., 1:2] * 0.587 + p[..., 2:3] * 0.114
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)
