"""ekit_tf_convert — the rpi target's conversion: onnx2tf (ONNX -> SavedModel, run as a
subprocess, its failures read back) and TFLiteConverter (the wrapped signature, the representative
dataset, the converter per precision). TensorFlow and onnx2tf are imported inside the functions.
The conventions of the artifacts are in ekit_tf."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import ekit
import ekit_tf

# --------------------------------------------------------------------------- onnx2tf

_OP_PATTERNS = (
    re.compile(r"onnx_op_type:\s*([A-Za-z0-9_.]+)"),
    re.compile(r"[Oo][Pp] type[:=]?\s*'?([A-Za-z0-9_.]+)"),
    re.compile(r"No module named 'onnx2tf\.ops\.([A-Za-z0-9_]+)'"),
    re.compile(r"not supported[^\n]*?\b([A-Z][A-Za-z0-9]+)\b"),
)
_NAME_PATTERN = re.compile(r"onnx_op_name:\s*(\S+)")


def onnx2tf_failure(text: str) -> tuple[list[str], list[str]]:
    """(op types, op names) named in onnx2tf's output when it fails."""
    ops, names = [], []
    for pat in _OP_PATTERNS:
        for m in pat.finditer(text):
            if m.group(1) not in ops:
                ops.append(m.group(1))
        if ops:
            break
    for m in _NAME_PATTERN.finditer(text):
        if m.group(1) not in names:
            names.append(m.group(1))
    return ops, names


def unsupported_onnx_ops(onnx_path) -> list[str]:
    """Op types of the ONNX graph onnx2tf has no converter module for (checked before running
    it, so the error names the op even when onnx2tf's own message does not)."""
    import importlib.util

    import onnx

    model = onnx.load(os.fspath(onnx_path), load_external_data=False)
    missing = []
    for node in model.graph.node:
        op = node.op_type
        if op in missing:
            continue
        if node.domain not in ("", "ai.onnx") or importlib.util.find_spec(f"onnx2tf.ops.{op}") is None:
            missing.append(op if node.domain in ("", "ai.onnx") else f"{node.domain}::{op}")
    return missing


NO_TFLITE_BUILTIN = ("Erf", "Acos", "Asin", "Atan")  # onnx2tf -rtpo rewrites them into builtins


def pseudo_op_args(onnx_path, user_args=()) -> tuple[list[str], str | None]:
    """onnx2tf's ``-rtpo`` for the ops of the model that have no TFLite builtin (Erf: GELU
    exports) -> (extra args, a note for the manifest); nothing when the user passed ``-rtpo``."""
    import onnx

    if any(str(a) in ("-rtpo", "--replace_to_pseudo_operators") for a in user_args):
        return [], None
    model = onnx.load(os.fspath(onnx_path), load_external_data=False)
    ops = sorted({n.op_type for n in model.graph.node if n.op_type in NO_TFLITE_BUILTIN})
    if not ops:
        return [], None
    args = ["-rtpo", *[op.lower() for op in ops]]
    return args, (f"onnx2tf {' '.join(args)} applied: {', '.join(ops)} have no TFLite builtin and "
                  "were replaced by builtin approximations (checked by the validation below)")


def run_onnx2tf(onnx_path, cache_root, calib_nhwc: np.ndarray, input_name: str,
                fixed_batch: bool, extra_args=(), timeout: int = 1800) -> tuple[Path, dict]:
    """onnx2tf as a subprocess on a COPY of ``onnx_path`` -> (SavedModel folder, info).

    Offline: our own calibration tensors (NHWC) go in as onnx2tf's sample file in its working
    directory and through ``-cind``, so it never downloads anything. The SavedModel is cached
    under ``cache_root/<hash>`` (model bytes + arguments + onnx2tf version): the convert steps of
    one build (one per precision) run onnx2tf once.
    """
    from importlib import metadata

    onnx_path = Path(onnx_path)
    version = metadata.version("onnx2tf")
    args = ["-osd", "-v", "error"] + ([] if fixed_batch else ["-b", "1"]) + [str(a) for a in extra_args]
    h = hashlib.sha256()
    with open(onnx_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps([version, args]).encode())
    key = h.hexdigest()[:16]
    root = Path(cache_root) / key
    saved = root / "saved_model"
    info = {"onnx2tf": version, "args": args, "cache": key, "seconds": 0.0, "reused": False}
    if (saved / "saved_model.pb").is_file():
        info["reused"] = True
        ekit.log(f"onnx2tf: reusing the SavedModel of an earlier step ({root})")
        return saved, info
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    model_copy = root / "model.onnx"  # onnx2tf overwrites its input
    shutil.copyfile(onnx_path, model_copy)
    calib_nhwc = np.ascontiguousarray(calib_nhwc, dtype=np.float32)
    np.save(root / "calib_nhwc.npy", calib_nhwc)
    np.save(root / ekit_tf.ONNX2TF_SAMPLE, calib_nhwc[:20])  # what onnx2tf would otherwise download
    c = calib_nhwc.shape[-1]
    zeros = json.dumps([[[[0.0] * c]]])
    ones = json.dumps([[[[1.0] * c]]])
    cmd = [sys.executable, "-m", "onnx2tf", "-i", "model.onnx", "-o", "saved_model",
           "-cind", input_name, "calib_nhwc.npy", zeros, ones] + args
    ekit.log("+ " + " ".join(cmd))
    t = time.perf_counter()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    with open(root / "onnx2tf.log", "w") as logf:
        try:
            proc = subprocess.run(cmd, cwd=root, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    info["seconds"] = round(time.perf_counter() - t, 1)
    text = (root / "onnx2tf.log").read_text(errors="replace")
    if rc != 0 or not (saved / "saved_model.pb").is_file():
        ops, names = onnx2tf_failure(text)
        tail = "\n".join(l for l in text.strip().splitlines()[-15:])
        print(tail, file=sys.stderr)
        shutil.rmtree(saved, ignore_errors=True)
        if rc is None:
            ekit.fail("unsupported", f"onnx2tf did not finish within {timeout} s")
        what = (f"the ONNX op {', '.join(ops)}" + (f" (node {', '.join(names[:3])})" if names else "")
                if ops else "the model")
        last = [l.strip() for l in text.splitlines() if "error" in l.lower()][-1:]
        ekit.fail("unsupported", f"onnx2tf {version} could not convert {what} to TensorFlow"
                                 + (f": {last[0][:300]}" if last else f" (exit code {rc})"),
                  "the rpi target needs every op in onnx2tf's supported list; replace the op "
                  "in the model or export with another opset")
    ekit.log(f"onnx2tf: SavedModel in {info['seconds']} s")
    return saved, info


# --------------------------------------------------------------------------- TFLite conversion

def wrap(model_fn, in_shape, spec: dict | None, fold_pixels: bool, trackable=None):
    """A tf.Module with one tf.function ``serve``: (pixels | input) NHWC float32 ->
    {"output_0": …}. ``model_fn(x)`` returns a list of tensors in reference order."""
    import tensorflow as tf

    module = tf.Module()
    module.keep = trackable  # keeps a loaded SavedModel's variables alive
    # Keras 3 models are not tf.Module trackables: hand their tf.Variables to the module, else
    # the converter sees uninitialized resource variables instead of constant weights
    try:
        variables = list(getattr(trackable, "variables", None) or [])
    except Exception:
        variables = []
    module.tf_variables = [getattr(v, "value", v) for v in variables]
    name = "pixels" if fold_pixels else "input"
    shape = list(in_shape)  # pixels: RGB, or greyscale for a one-channel model: same shape

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name=name)])
    def serve(x):
        if fold_pixels:
            x = ekit_tf.preprocess_tf(x, spec)
        outs = model_fn(x)
        return {f"output_{i}": tf.identity(o) for i, o in enumerate(outs)}

    module.serve = serve
    return module


def representative(samples: np.ndarray, batch: int, pin_pixel_range: bool):
    """Representative dataset for TFLiteConverter: ``samples`` [N, …] in batches of ``batch``.
    With ``pin_pixel_range`` the first sample gets one black and one white pixel, so the input
    range is exactly 0..255 and the input quantization is scale 1 (2 of H*W pixels of one image
    change; the activation ranges do not notice)."""
    n = samples.shape[0] - samples.shape[0] % batch
    if n < batch or n == 0:
        ekit.fail("data", f"{samples.shape[0]} calibration sample(s) but the model's batch is "
                          f"{batch}: int8 calibration needs at least one full batch",
                  "add calibration images (a few hundred is best)")
    data = samples[:n].astype(np.float32, copy=True)
    if pin_pixel_range:
        data[0, 0, 0, :] = 0.0
        data[0, 0, 1, :] = 255.0

    def gen():
        for i in range(0, n, batch):
            yield [data[i:i + batch]]
    return gen


CALIB_VARIANTS = ("zoom1.25-centre", "shrink0.75", "zoom1.5-centre", "zoom1.25-topright", "zoom1.25-bottomleft")


def augment_calibration(pixels: np.ndarray, minimum: int, pad: int = 114) -> tuple[np.ndarray, str | None]:
    """Calibration pixels [N, H, W, 3] (0-255 float) plus deterministic variants (``ekit.augment``:
    zooms and shrinks, no mirror: the demo's validation images are the mirrored calibration
    images) until at least ``minimum`` samples (all of them for a variant). -> (samples, note)."""
    from ekit.augment import variant

    n = pixels.shape[0]
    if n >= minimum or not n or pixels.shape[-1] != 3:
        return pixels, None
    base = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    out, used = [pixels.astype(np.float32)], []
    for name in CALIB_VARIANTS:
        if sum(len(o) for o in out) >= minimum:
            break
        out.append(np.stack([variant(p, name, pad) for p in base]).astype(np.float32))
        used.append(name)
    data = np.concatenate(out)
    return data, (f"int8: {n} calibration image(s) < {minimum}: calibrated on {data.shape[0]} with "
                  f"deterministic variants ({', '.join(used)})")


def converter_for(module, precision: str, rep=None, int8_io: str = "uint8",
                  float_fallback: bool = False, qat: bool = False):
    import tensorflow as tf

    cf = module.serve.get_concrete_function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([cf], module)
    if precision == "fp32":
        return conv
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        conv.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic":
        pass  # no representative dataset: weights int8, activations float
    elif precision == "int8":
        if rep is not None:
            conv.representative_dataset = rep
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if float_fallback:
            ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
        conv.target_spec.supported_ops = ops
        io = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[int8_io]
        conv.inference_input_type = io
        conv.inference_output_type = io
    elif precision == "int8x16":
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        # float32 I/O: the model quantizes/dequantizes itself (int16 I/O helps nobody on a Pi)
    else:
        ekit.fail("usage", f"unknown TFLite precision {precision!r} ({', '.join(ekit_tf.PRECISIONS)})")
    return conv


def convert(conv, precision: str) -> bytes:
    """Run a TFLiteConverter; a model the converter refuses is an ``unsupported`` failure that
    names the ops it complained about."""
    try:
        return conv.convert()
    except Exception as e:  # ConverterError carries the MLIR diagnostics
        text = str(e)
        ops = sorted(set(re.findall(r"'(tf\.[A-Za-z0-9_]+|tfl\.[A-Za-z0-9_]+)'", text)))
        first = next((l.strip() for l in text.splitlines() if "error" in l.lower()), text[:300])
        ekit.fail("unsupported", f"TFLiteConverter could not make the {precision} model"
                                 + (f" (ops: {', '.join(ops[:8])})" if ops else "") + f": {first[:400]}",
                  "int8 needs int8 kernels for every op: try --option int8_float_fallback=true "
                  "(not full integer) or another precision" if precision == "int8" else None)


def build_and_describe(conv, precision: str, artifact, fold: bool, int8_io: str, notes: list) -> dict:
    """Convert, write ``artifact`` atomically, and read back from the file what it takes:
    ``{"size_bytes", "convert_seconds", "io", "feed_mode"}``."""
    t = time.perf_counter()
    blob = convert(conv, precision)
    seconds = round(time.perf_counter() - t, 1)
    artifact = Path(artifact)
    tmp = artifact.with_name(artifact.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(artifact)
    ekit.log(f"{precision}: {artifact.name} {len(blob) / 1e6:.2f} MB in {seconds} s")
    return dict(ekit_tf.describe(artifact, fold, int8_io, notes), convert_seconds=seconds)
