"""ekit_mnn — MNN converter/quantizer helpers for the mnn target's scripts (copied next to them).

Plain Python + numpy (+ Pillow for the calibration images) at import time; no MNN import here,
so the pure functions are unit-testable without MNN installed.

What the `mnn` wheel (3.6.1) really does, and why these helpers exist:

* Its console scripts ``mnnconvert`` / ``mnnquant`` import ``MNN.tools.utils.log``, which runs
  ``os.system("pip install -U aliyun-log-python-sdk")`` when that package is missing and sends
  usage logs (machine id, model uuid, arguments) to Alibaba. edgekiln never runs them: it calls
  the C extension ``_tools`` directly (``mnnconvert(argv)``, ``mnnquant(argv)``).
* ``mnnquant``'s own wrapper passes three strings where the 3.6 extension takes one argv list,
  and the extension aborts the process (std::length_error). ``_tools`` also aborts on some bad
  input, and prints from C: each call runs in a child process (``tool_command``), so the step
  survives, captures the log and turns it into a one-line error.
* MNNConvert reports an op it lacks as ``These Op Not Support: ONNX::Hardmax`` and ``Converted
  Failed!`` — and returns normally, writing no file: ``unsupported_ops`` reads that line.
* Every .mnn carries a random uuid4 (36 bytes); ``stable_uuid`` replaces it by one derived from
  the file's other bytes, so the same inputs give the same bytes (``release --check``).
* mnnquant calibrates from image FILES through its own preprocessing (RGBA read, bilinear resize
  to width x height, ``(pixel - mean) * normal``). ``calibration_images`` writes the calibration
  tensors edgekiln made (resize/crop/letterbox of the input spec already applied) back as 8-bit
  PNGs of exactly the model's size, and ``quant_config`` gives mnnquant the spec's mean/std as
  mean/normal: its resize is then the identity and it sees the same tensors as every other step
  (checked: the first conv's input range in the int8 model is the spec's, 0..1 for YOLOv8n; swapping
  RGB/BGR changes YOLOv8n's mAP50 by 0.01, noise).
* Activation ranges (measured, bench/results/int8_recipes_edge.md). KL clips what a detector's scores
  need. EMA (``_quantizeModelEMA``) runs the images one per step and updates each range by a moving
  average of momentum 0.99 from the FIRST image's: with 20-30 images ~75 % of every range is that
  one image's. Given every image in one batch (``batch_size``), the first and only update is the
  min/max over the set ("MINMAX" here). A batch needs a net that takes one: ``batchable``.
* ``skip_quant_op_names`` (what ``keep_float`` would pass) does not keep ops float in 3.6.1: EMA never
  reads it (the int8 model's head convs carry int8 scales), KL keeps the listed convs' weights float
  but still gives their tensors int8 scales (YOLOv8n's sigmoid scores shared the box Concat's scale:
  mAP50 0.0). So the mnn target defaults to ``keep_float = "none"`` and says so when asked for more.
* Where YOLOv8n's int8 loses (MINMAX int8, ops set float afterwards by dropping their int8 scales in
  the JSON, 1 thread; mAP50 / band F1): all int8 0.745 / 0.597; model.0-2 float 0.831 / 0.693; the
  whole backbone (model.0-9) float 0.921 / 0.824; neck and head float 0.819 / 0.600. The loss is
  spread over the body's per-tensor activations (model.1's SiLU output reaches 159, most values < 2),
  not in one op: no float set small enough for >= 85 % int8 MACs reaches the gate here.
* The quantizer is deterministic (same bytes twice); MNN's int8 CPU run is not with 2+ threads: the
  same YOLOv8n int8 bytes gave mAP50 0.741, 0.759, 0.766 on three runs (1 thread: 0.748 every time).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

TOOLS = {
    "convert": "import sys, _tools; _tools.mnnconvert(['MNNConvert'] + sys.argv[1:])",
    "quant": "import sys, _tools; _tools.mnnquant(['quantized.out'] + sys.argv[1:])",
}
RECON_TOLERANCE = 0.05  # |pixel - round(pixel)| of a calibration tensor mapped back to 0..255
MINMAX_PIXELS = 32 * 320 * 320  # one MINMAX batch at most (29 YOLOv8n 320x320 images: ~2 GB, 27 s)


def tool_command(kind: str, args) -> list[str]:
    return [sys.executable, "-c", TOOLS[kind], *map(str, args)]


def run_tool(kind: str, args, timeout: float) -> tuple[int, str, float]:
    """-> (exit code (negative: killed by that signal), stdout+stderr, seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.run(tool_command(kind, args), capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0


def convert_args(onnx_path, mnn_path, fp16: bool, biz_code: str = "edgekiln", weight_bits: int = 0) -> list[str]:
    """``weight_bits`` 8: weight-only int8 (``--weightQuantBits``; MNN decodes them to float to compute)."""
    args = ["-f", "ONNX", "--modelFile", str(onnx_path), "--MNNModel", str(mnn_path), "--bizCode", biz_code]
    return args + (["--fp16"] if fp16 else []) + (["--weightQuantBits", str(int(weight_bits))] if weight_bits else [])


def unsupported_ops(log: str) -> list[str]:
    """``These Op Not Support: ONNX::Hardmax ONNX::Foo`` -> ["Hardmax", "Foo"]."""
    ops: list[str] = []
    for m in re.finditer(r"Op Not Support:\s*(.+)", log):
        for word in m.group(1).split():
            op = word.split("::")[-1].strip(",")
            if op and op not in ops:
                ops.append(op)
    return ops


def last_lines(log: str, n: int = 3) -> str:
    keep = [l.strip() for l in log.splitlines() if l.strip() and "device supports" not in l]
    return " | ".join(keep[-n:])


def stable_uuid(path, current: str) -> str:
    """Replace the file's random uuid (``current``, 36 ASCII bytes, exactly once in the file) by
    a uuid derived from sha256 of the file with those bytes zeroed. -> the new uuid ("" when the
    file carries none: the quantizer's EMA path writes none)."""
    path = Path(path)
    if not current:
        return ""
    data = bytearray(path.read_bytes())
    old = current.encode("ascii")
    at = data.find(old)
    if len(old) != 36 or at < 0 or data.find(old, at + 1) >= 0:
        raise ValueError(f"uuid {current!r} is not in {path.name} exactly once")
    data[at:at + 36] = b"0" * 36
    new = str(uuid.UUID(bytes=hashlib.sha256(bytes(data)).digest()[:16], version=4))
    data[at:at + 36] = new.encode("ascii")
    path.write_bytes(bytes(data))
    return new


def _channel(value, c: int, default: float) -> np.ndarray:
    if value is None:
        return np.full(c, default, dtype=np.float64)
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    return np.full(c, v[0]) if v.size == 1 else v[:c]


def to_pixels(x: np.ndarray, spec: dict) -> tuple[np.ndarray, float]:
    """One calibration tensor (model layout, no batch dim) -> (HxWxC uint8 in the model's channel
    order, the largest distance of a value from an integer pixel before rounding)."""
    hwc = x if spec.get("layout") == "nhwc" else np.transpose(x, (1, 2, 0))
    c = hwc.shape[-1]
    scale = float(spec.get("scale") or 1.0)
    pix = (hwc * _channel(spec.get("std"), c, 1.0) + _channel(spec.get("mean"), c, 0.0)) * scale
    err = float(np.abs(pix - np.round(pix)).max()) if pix.size else 0.0
    return np.clip(np.round(pix), 0, 255).astype(np.uint8), err


def calibration_images(calib: np.ndarray, spec: dict, folder, limit: int) -> tuple[int, float]:
    """Write up to ``limit`` calibration tensors as PNGs (RGB files: a bgr model's channels are
    swapped back; mnnquant swaps them again with format BGR). -> (count, worst rounding error)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    worst, n = 0.0, min(len(calib), int(limit))
    for i in range(n):
        pix, err = to_pixels(calib[i], spec)
        worst = max(worst, err)
        if pix.shape[-1] == 1:
            Image.fromarray(pix[..., 0], "L").save(folder / f"{i:05d}.png")
            continue
        if spec.get("color") == "bgr":
            pix = pix[..., ::-1]
        Image.fromarray(np.ascontiguousarray(pix), "RGB").save(folder / f"{i:05d}.png")
    return n, worst


MNN_COMPUTE = ("Convolution", "ConvolutionDepthwise", "Deconvolution", "DeconvolutionDepthwise",
               "MatMul", "InnerProduct")


def mnn_nodes(path) -> list[tuple]:
    """The ops of a .mnn as ``(name, type, [input names], [name])`` (MNN names each op after its
    output var, which is the ONNX output tensor's name; the name ``skip_quant_op_names`` takes)."""
    import MNN.expr as F

    d = F.load_as_dict(str(path))
    return [(k, v.op_type, [i.name for i in v.inputs], [k]) for k, v in d.items()
            if v.op_type not in ("Const", "Input")]


def keep_float(path, outputs, mode: str, task: str | None) -> dict:
    """The ops of the fp32 .mnn that stay float in the int8 model (``skip_quant_op_names``):
    ``mode`` "auto" (a detector: decode tail + head convs and what follows them; anything else:
    the decode tail only), "tail", "none". -> ``ekit.keep_float.float_region``'s dict."""
    from ekit.keep_float import float_region

    if mode == "none":
        return {"tail": [], "head": [], "float": []}
    detector = mode == "auto" and task == "detect"
    return float_region(mnn_nodes(path), list(outputs), MNN_COMPUTE, detector)


def run_model(path, x: np.ndarray, io: dict, threads: int = 0) -> list[np.ndarray]:
    """Run a .mnn on ``x`` ([N, ...] float32) one sample at a time with MNN's CPU runtime
    (precision "high"), as the validate step does. -> outputs stacked on axis 0."""
    import os

    import MNN
    import MNN.expr as F

    rt = MNN.nn.create_runtime_manager(({"backend": "CPU", "numThread": threads or os.cpu_count() or 1,
                                         "precision": "high"},))
    ins, outs = [t["name"] for t in io["inputs"]], [t["name"] for t in io["outputs"]]
    net = MNN.nn.load_module_from_file(str(path), ins, outs, runtime_manager=rt)
    per = []
    for i in range(len(x)):
        s = np.ascontiguousarray(x[i:i + 1].astype(np.float32))
        var = F.const(s, list(s.shape), F.NCHW)
        per.append([np.array(F.convert(o, F.NCHW).read(), dtype=np.float32) for o in net.forward([var])])
    return [np.concatenate([p[k] for p in per], axis=0) for k in range(len(outs))]


def json_args(src, dest, to_json: bool) -> list[str]:
    """MNNConvert arguments: a .mnn -> its JSON (``to_json``) or that JSON -> a .mnn."""
    if to_json:
        return ["-f", "MNN", "--modelFile", str(src), "--JsonFile", str(dest)]
    return ["-f", "JSON", "--modelFile", str(src), "--MNNModel", str(dest), "--bizCode", "edgekiln"]


def batchable(net: dict) -> int:
    """Make an MNN net (MNNConvert's JSON of a .mnn) run at any batch: a constant shape fed to a
    Reshape whose first entry is 1 (an export at batch 1 bakes it in: YOLOv8's head ``[1, 82, -1]``,
    a classifier's ``[1, 200]``) gets 0, "copy the input's first dim" (ONNX and MNN semantics).
    In place; -> how many constants changed. The quantizer needs it to take the calibration set as
    one batch (``batch_size``); at batch 1 the net computes what it did (the JSON keeps 6 decimals:
    weights move by < 5e-7; YOLOv8n's copy still gives its source's boxes, mAP50 1.000)."""
    ops = net.get("oplists") or []
    producer = {i: o for o in ops for i in o.get("outputIndexes") or []}
    changed = set()
    for op in ops:
        ins = op.get("inputIndexes") or []
        if op.get("type") != "Reshape" or len(ins) < 2:
            continue
        const = producer.get(ins[1])
        blob = (const or {}).get("main") or {}
        vals = blob.get("int32s") if (const or {}).get("type") == "Const" else None
        if vals and vals[0] == 1 and id(const) not in changed:
            vals[0] = 0
            changed.add(id(const))
    return len(changed)


def quant_config(spec: dict, folder, count: int, feature_method: str, weight_method: str) -> dict:
    """mnnquant's JSON: the spec's mean/std as mean/normal on 0-255 pixels, the model's size.
    ``feature_method`` "MINMAX" is MNN's EMA given the images as one batch (``batch_size``, at most
    ``MINMAX_PIXELS``: 32 at 320x320, 8 at 640x640): its first update sets the range, the min/max over
    that batch; further batches move it by the moving average (module docstring)."""
    shape = list(spec["shape"])
    h, w, c = (shape[1], shape[2], shape[3]) if spec.get("layout") == "nhwc" else (shape[2], shape[3], shape[1])
    scale = float(spec.get("scale") or 1.0)
    mean = _channel(spec.get("mean"), c, 0.0) * scale
    normal = 1.0 / (_channel(spec.get("std"), c, 1.0) * scale)
    fmt = "GRAY" if c == 1 else ("BGR" if spec.get("color") == "bgr" else "RGB")
    return {"format": fmt, "mean": [float(v) for v in mean], "normal": [float(v) for v in normal],
            "width": int(w), "height": int(h), "path": str(folder).rstrip("/") + "/",  # its reader appends names
            "used_image_num": int(count),
            "feature_quantize_method": "EMA" if feature_method == "MINMAX" else str(feature_method),
            "weight_quantize_method": str(weight_method)} | (
        {"batch_size": max(1, min(int(count), MINMAX_PIXELS // (int(h) * int(w))))} if feature_method == "MINMAX" else {})
