"""ekit_trt — the workstation half of the TensorRT targets (copied next to every script).

Runs on CPU with onnx + onnxruntime (+ nvidia-modelopt for its quantizer/AutoCast); never imports
TensorRT. Gives the convert step and bench/tensorrt_qdq.py:

* ``op_table(trt)`` / ``lint_ops(model, trt)`` — the ONNX operators that TensorRT version's parser
  does not take (tables vendored from onnx-tensorrt docs/operators.md: tensorrt_onnx_ops.json);
* ``lint_qdq(model)`` — TensorRT's explicit-quantization rules (int8, zero point 0, scale > 0,
  per-tensor scalar or per-channel on the weight's output-channel axis);
* ``lower_opset(model, 17)`` — the version converter for TensorRT 8.5/8.6's parser (opset <= 17);
* ``shape_range(inputs, shapes)`` — min/opt/max of every dynamic input, or an error;
* ``quantize_modelopt`` / ``quantize_ort_symmetric`` — explicit Q/DQ int8 ONNX;
* ``autocast_fp16`` — an fp16-typed ONNX (float32 inputs/outputs kept) for strongly typed TensorRT.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

OPS_FILE = Path(__file__).resolve().parent / "tensorrt_onnx_ops.json"


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:3])


def op_table(trt: str) -> dict:
    """The newest vendored operator table not newer than TensorRT ``trt`` (``note`` says when the
    table is older than the version: the onnx-tensorrt snapshot ends at 10.1)."""
    data = json.loads(OPS_FILE.read_text())
    tables = data["tables"]
    want = _version_key(trt)[:2]
    usable = [k for k in tables if _version_key(k) <= want]
    if not usable:
        raise ValueError(f"no onnx-tensorrt operator table for TensorRT {trt} (have {', '.join(tables)})")
    key = max(usable, key=_version_key)
    table = dict(tables[key], version=key)
    table["note"] = None if _version_key(key) == want else (
        f"TensorRT {trt}: checked against onnx-tensorrt's {key} table (the newest one vendored); "
        "later parsers accept at least these operators")
    return table


def lint_ops(model, trt: str) -> dict:
    """{"table", "opset", "unsupported": [{"op", "count", "nodes"}], "restricted": [...], "note"}."""
    table = op_table(trt)
    supported = set(table["supported"])
    counts: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            counts.setdefault(f"{node.domain}::{node.op_type}", []).append(node.name)
        elif node.op_type not in supported:
            counts.setdefault(node.op_type, []).append(node.name)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    problems = [{"op": op, "count": len(names), "nodes": names[:5]} for op, names in sorted(counts.items())]
    lo_hi = table.get("opsets") or []
    opset_problem = None
    if opset is not None and lo_hi and opset > lo_hi[-1]:
        opset_problem = f"opset {opset} is above the {lo_hi[-1]} TensorRT {table['version']} documents"
    used = {n.op_type for n in model.graph.node}
    # ops TensorRT parses only under conditions (listed by name; the conditions are in
    # onnx-tensorrt's docs/operators.md at the table's commit)
    restricted = sorted(op for op in table.get("restricted", []) if op in used)
    return {"table": f"onnx-tensorrt {table['tag']} ({table['commit'][:12]})", "table_version": table["version"],
            "opset": opset, "opset_max": lo_hi[-1] if lo_hi else None, "opset_problem": opset_problem, "unsupported": problems,
            "restricted": restricted, "note": table["note"]}


def _const(model, name):
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _weight_axis(node, users) -> int:
    """The per-channel axis TensorRT takes for the weights a DequantizeLinear feeds: the output-channel
    axis. Conv: 0 ([out, in, kh, kw]); ConvTranspose: 1 ([in, out, kh, kw]); MatMul: 1 (a [K, N] weight,
    as ONNX Runtime's and modelopt's quantizers write it); Gemm: 1 unless transB=1 ([N, K]: 0)."""
    for u in users:
        if len(u.input) > 1 and u.input[1] == node.output[0]:
            if u.op_type in ("ConvTranspose", "MatMul"):
                return 1
            if u.op_type == "Gemm":
                trans_b = next((a.i for a in u.attribute if a.name == "transB"), 0)
                return 0 if trans_b else 1
    return 0


def lint_qdq(model, require_zero_point: bool = False) -> dict:
    """TensorRT's explicit-quantization rules for every QuantizeLinear/DequantizeLinear:
    int8 zero point, all zero (``require_zero_point``: it must be there, as TensorRT 8.5/8.6's parser
    requires 3 inputs); every scale > 0; a scale is a scalar (per tensor) or 1-D per channel on the
    weight's output-channel axis (_weight_axis). -> {"q", "dq", "problems": [str], "per_channel"}."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    problems, per_channel, counts = [], 0, {"QuantizeLinear": 0, "DequantizeLinear": 0}
    for node in model.graph.node:
        if node.op_type not in counts:
            continue
        counts[node.op_type] += 1
        label = f"{node.op_type} {node.name or node.output[0]!r}"
        scale = _const(model, node.input[1]) if len(node.input) > 1 else None
        if scale is None:
            problems.append(f"{label}: scale is not a constant")
            continue
        if not np.all(scale > 0):
            problems.append(f"{label}: scale {scale.ravel()[:4].tolist()} is not positive (TensorRT needs scale > 0)")
        if len(node.input) > 2 and node.input[2]:
            zp = _const(model, node.input[2])
            if zp is None:
                problems.append(f"{label}: zero point is not a constant")
            elif zp.dtype != np.int8:
                problems.append(f"{label}: zero point is {zp.dtype}, TensorRT takes int8 only")
            elif np.any(zp != 0):
                problems.append(f"{label}: zero point {zp.ravel()[:4].tolist()} is not 0 (TensorRT is symmetric)")
        elif require_zero_point:
            problems.append(f"{label}: no zero point (TensorRT 8.5/8.6 parse Q/DQ with 3 inputs only; "
                            "a QuantizeLinear without one also outputs uint8)")
        if scale.ndim == 0 or scale.size == 1:
            continue
        if scale.ndim != 1:
            problems.append(f"{label}: scale of shape {list(scale.shape)} (block quantization is not int8 Q/DQ)")
            continue
        per_channel += 1
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        want = _weight_axis(node, consumers.get(node.output[0], []))
        if axis != want:
            problems.append(f"{label}: per-channel on axis {axis}, TensorRT takes axis {want}")
    return {"q": counts["QuantizeLinear"], "dq": counts["DequantizeLinear"], "per_channel": per_channel,
            "problems": problems}


def lower_opset(model, opset: int):
    """``model`` converted to ``opset`` (ONNX's version converter) when it is above it: TensorRT 8.5/8.6
    parse opset <= 17 only. -> (model, note or None). ValueError when the converter cannot: the model
    must be exported with that opset. The result is validated like any artifact (the ORT proxy)."""
    import onnx
    from onnx import version_converter

    have = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if have is None or have <= opset:
        return model, None
    try:
        lowered = version_converter.convert_version(model, opset)
        onnx.checker.check_model(lowered)
    except Exception as exc:
        why = str(exc).splitlines()[0].rsplit("failed: ", 1)[-1][:160]  # "No Adapter From Version $18 for Split"
        raise ValueError(f"opset {have} is above the {opset} this TensorRT parses, and ONNX's version converter "
                         f"cannot lower it ({why})") from None
    return lowered, f"opset {have} lowered to {opset} (ONNX version converter) for this TensorRT's parser"


def parse_shapes(text: str) -> tuple[str | None, list[list[int]]]:
    """``"1x3x224x224:4x3x224x224:8x3x224x224"`` or ``"input:1x3x..:..:.."`` -> (name, [min, opt, max])."""
    parts = [p.strip() for p in str(text).split(":") if p.strip()]
    name = None
    if len(parts) == 4:
        name, parts = parts[0], parts[1:]
    if len(parts) != 3:
        raise ValueError(f"shapes {text!r} is not MIN:OPT:MAX (e.g. 1x3x640x640:4x3x640x640:8x3x640x640)")
    try:
        dims = [[int(d) for d in p.lower().split("x")] for p in parts]
    except ValueError:
        raise ValueError(f"shapes {text!r}: dimensions must be integers joined by x") from None
    return name, dims


def shape_range(inputs: list[dict], shapes: str | None) -> dict | None:
    """The optimization profile of the (single) input: None when every dim is fixed and no range was
    given, else {"input", "min", "opt", "max"}. A dynamic dim without a range is a ValueError."""
    inp = inputs[0]
    fixed = [d if isinstance(d, int) and d > 0 else None for d in inp["shape"]]
    dynamic = any(d is None for d in fixed)
    if not shapes:
        if dynamic:
            raise ValueError(f"input {inp['name']!r} has dynamic dimensions {inp['shape']}: a TensorRT engine "
                             "needs their range")
        return None
    name, dims = parse_shapes(shapes)
    if name and name != inp["name"]:
        raise ValueError(f"shapes name input {name!r}, the model's input is {inp['name']!r}")
    for which, d in zip(("min", "opt", "max"), dims):
        if len(d) != len(fixed) or any(f is not None and f != v for f, v in zip(fixed, d)):
            raise ValueError(f"shapes {which} {d} does not fit input {inp['name']!r} {inp['shape']}")
    if not all(a <= b <= c for a, b, c in zip(*dims)):
        raise ValueError(f"shapes {shapes!r}: need min <= opt <= max in every dimension")
    return {"input": inp["name"], "min": dims[0], "opt": dims[1], "max": dims[2]}


def feed_problem(shapes: dict | None, x_shape) -> str | None:
    """check_engine.py feeds the engine the reference images at the profile's smallest batch: is that
    shape inside the profile? (None: yes.)"""
    if not shapes:
        return None
    feed = [max(1, shapes["min"][0])] + [int(d) for d in x_shape[1:]]
    if len(feed) != len(shapes["min"]) or not all(a <= f <= c for a, f, c in zip(shapes["min"], feed, shapes["max"])):
        return (f"the reference images are fed as {feed}, outside the shape range {shapes['min']} .. "
                f"{shapes['max']}: the engine could not be checked on the device")
    return None


def fix_shape(model, shape):
    """Give the symbolic dims of the first input the values of ``shape`` (quantizers and AutoCast
    work on a fixed shape)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, value in zip(dims, shape):
        if not d.HasField("dim_value"):
            d.dim_value = int(value)
    return model


def quantize_modelopt(src: Path, dst: Path, calib: np.ndarray, *, method: str = "entropy",
                      nodes_to_exclude=(), op_types_to_exclude=(), high_precision: str = "fp32") -> dict:
    """modelopt's explicit Q/DQ int8 (TensorRT placement rules), calibrated on CPU. Weights are stored
    as int8 behind a DequantizeLinear (dq_only: half the file of float weights + Q/DQ, the same
    answers: MobileNetV2 cosine 0.97152 either way), activations get Q/DQ pairs."""
    from modelopt.onnx.quantization import quantize

    quantize(os.fspath(src), quantize_mode="int8", calibration_data=calib.astype(np.float32),
             calibration_method=method, calibration_eps=["cpu"], output_path=os.fspath(dst),
             nodes_to_exclude=list(nodes_to_exclude) or None,
             op_types_to_exclude=list(op_types_to_exclude) or None,
             high_precision_dtype=high_precision, dq_only=True, log_level="WARNING")
    return {"tool": "nvidia-modelopt", "method": method, "high_precision": high_precision,
            "weights": "int8 (DequantizeLinear only)"}


def quantize_ort_symmetric(src: Path, dst: Path, calib: np.ndarray, *, method: str = "minmax",
                           nodes_to_exclude=(), op_types_to_exclude=()) -> dict:
    """ONNX Runtime's static QDQ made TensorRT-legal: int8 activations and weights, symmetric
    (zero point 0), per-channel weights."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from ekit_onnx import calibration_reader

    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = Path(dst).with_suffix(".pre.onnx")  # the onnx target's pre-processing (fusions first)
    try:
        quant_pre_process(os.fspath(src), os.fspath(pre), skip_symbolic_shape=False)
    except Exception:
        quant_pre_process(os.fspath(src), os.fspath(pre), skip_symbolic_shape=True)
    model = onnx.load(os.fspath(pre))
    name = model.graph.input[0].name
    ops = None
    if op_types_to_exclude:  # ORT quantizes its default op list; exclusions narrow that
        from onnxruntime.quantization.registry import QDQRegistry

        ops = sorted(set(QDQRegistry) - set(op_types_to_exclude))

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    # QuantizeBias off: ORT would store biases as int32 behind a DequantizeLinear, which TensorRT
    # does not take (its Q/DQ are int8; it quantizes the bias itself)
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    quantize_static(os.fspath(pre), os.fspath(dst), calibration_reader(name, calib),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=methods[method], nodes_to_exclude=list(nodes_to_exclude),
                    op_types_to_quantize=ops, extra_options=extra)
    pre.unlink(missing_ok=True)
    return {"tool": "onnxruntime", "method": method, "symmetric": True}


def autocast_fp16(src: Path, dst: Path, *, nodes_to_exclude=(), op_types_to_exclude=(),
                  calibration: np.ndarray | None = None, input_name: str | None = None) -> dict:
    """An fp16-typed ONNX for a strongly typed TensorRT network: modelopt AutoCast keeps nodes whose
    values overflow fp16 (and the inputs/outputs) in float32. ``calibration``: real input images
    (NCHW float32, as fed) for AutoCast's reference run, which decides what overflows; without them
    it runs on random inputs."""
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision

    data = None
    if calibration is not None and len(calibration):
        data = Path(dst).with_suffix(".calib.npz")
        np.savez(data, **{input_name: np.ascontiguousarray(calibration, dtype=np.float32)})
    try:
        model = convert_to_mixed_precision(os.fspath(src), low_precision_type="fp16", keep_io_types=True,
                                           nodes_to_exclude=list(nodes_to_exclude) or None,
                                           op_types_to_exclude=list(op_types_to_exclude) or None,
                                           calibration_data=os.fspath(data) if data else None)
    finally:
        if data is not None:
            data.unlink(missing_ok=True)
    onnx.save(model, os.fspath(dst))
    casts = sum(1 for n in model.graph.node if n.op_type == "Cast")
    return {"tool": "nvidia-modelopt autocast", "casts": casts,
            "reference_inputs": f"{len(calibration)} real image(s)" if data else "random"}


def op_counts(model) -> dict:
    out: dict[str, int] = {}
    for node in model.graph.node:
        out[node.op_type] = out.get(node.op_type, 0) + 1
    return out


PROXY = ("recovery measured with ONNX Runtime CPU on the Q/DQ model; the engine's own numbers are "
         "checked on the device by check_engine")


def _keep_if_better(found: dict, record: dict, before: dict, missed: list, thresholds: dict, qdq_path) -> None:
    """The best try replaces the plain Q/DQ model only when it scores above it; otherwise the plain
    model stays and the record says so (never a try worse than plain int8)."""
    from ekit import recover as ekit_recover

    record["proxy"] = PROXY
    if found.get("artifact") and found["score"] > ekit_recover.score(before, thresholds):
        os.replace(found["artifact"], qdq_path)
    else:
        record["float_layers"], record["int8_mac_share"] = [], 1.0
        record["after"] = {"misses": missed, "summary": "no try did better than plain int8"}


def recover(quantize, float_path: Path, qdq_path: Path, ref: dict, thresholds: dict, opts, excluded=(),
            plain_seconds: float | None = None, calib=None) -> dict:
    """--recover for a Q/DQ ONNX (``quantize(dest, layers) -> dest`` re-quantizes with ``layers``
    kept float: modelopt / ORT ``nodes_to_exclude``): measure ``qdq_path`` in ONNX Runtime on the
    reference images (the proxy the validate step gates), and when it misses ``thresholds`` keep
    its most sensitive Conv/Gemm/MatMul layers float (``qdq_path`` is replaced by the best try that
    does better than plain int8). Every try re-calibrates (the quantizers keep no calibration to
    reuse), so k doubles (1, 2, 4, ...) and no try starts that would end past ``recover_time_factor``
    x ``plain_seconds`` (the plain int8 quantization). ``recover_unit`` "region" (the default) instead
    drops quantization regions from the Q/DQ model (ekit/regions.py, ranked on ``calib``). -> the
    ``recovery`` record (ekit_recover.record + the proxy sentence)."""
    import time

    import onnx

    import ekit
    import ekit_onnx
    from ekit import recover as ekit_recover

    def run(path):
        return ekit_onnx.ort_run(ekit_onnx.ort_session(path, optimization="none"), ref["x"].astype(np.float32))

    t_in = time.perf_counter()  # the plain model's own measurement counts against the budget too
    before = ekit_recover.measure(ref, run(qdq_path))
    missed = ekit_recover.misses(before, thresholds)
    if not missed:
        ekit.log("recover: the plain int8 Q/DQ model meets its thresholds; nothing kept float")
        return {"attempted": False, "passed": True, "float_layers": [], "int8_mac_share": None,
                "reason": "the plain int8 model meets its thresholds", "proxy": PROXY}
    unit = str(opts["recover_unit"])
    if unit not in ("region", "layer"):
        ekit.fail("usage", f"option recover_unit={unit!r} is not one of region, layer")
    ekit.log(f"recover: plain int8 misses {'; '.join(missed)} (ONNX Runtime proxy); ranking {unit}s")
    t0 = time.perf_counter()
    fmodel = onnx.load(os.fspath(float_path))
    if unit == "region":  # an activation's Q/DQ dropped from the Q/DQ model: no re-calibration (ekit/regions.py)
        from ekit import regions as ekit_regions

        def save(model, k):
            dest = Path(qdq_path).with_suffix(f".recover.{k}.onnx")
            onnx.save(model, os.fspath(dest))
            return dest

        found = ekit_regions.search(onnx.load(os.fspath(qdq_path)), fmodel, calib, ref, thresholds, save=save, run=run,
                                    max_seconds=ekit_recover.time_budget(opts, plain_seconds,
                                                                         time.perf_counter() - t_in))
        record = ekit_regions.record(found, before, thresholds, time.perf_counter() - t0)
        _keep_if_better(found, record, before, missed, thresholds, qdq_path)
        for f in Path(qdq_path).parent.glob(Path(qdq_path).stem + ".recover.*"):
            f.unlink()
        ekit.log(f"recover: {'passes' if record['passed'] else 'still misses'} (ONNX Runtime proxy) with "
                 f"{len(record['float_layers'])} region(s) without Q/DQ, {record['int8_mac_share']:.1%} of MACs int8, "
                 f"{record['seconds']} s")
        return record
    ranked = [r for r in ekit_recover.onnx_sensitivity(fmodel, onnx.load(os.fspath(qdq_path)), ref["x"])
              if r["layer"] not in set(excluded)]
    t_sens = time.perf_counter() - t0
    ekit.log("recover: most sensitive: " + ", ".join(f"{r['layer']} {r['sensitivity']:.4f}" for r in ranked[:5])
             + f" ({t_sens:.1f} s)")
    trial = Path(qdq_path).with_suffix(".recover")
    found = ekit_recover.search(ranked, lambda layers: quantize(trial.with_suffix(f".{len(layers)}.onnx"), layers),
                                run, ref, thresholds, int(opts["recover_max_float_layers"]),
                                ekit_recover.time_budget(opts, plain_seconds, time.perf_counter() - t0),
                                order="doubling", first_try_seconds=plain_seconds)
    record = ekit_recover.record(found, ranked, ekit_recover.macs(fmodel), before, thresholds,
                                 time.perf_counter() - t0, t_sens)
    record["method"] += (" (each try a new Q/DQ quantization with those nodes in nodes_to_exclude; "
                         "k = 1, 2, 4, ...)")
    _keep_if_better(found, record, before, missed, thresholds, qdq_path)
    for f in Path(qdq_path).parent.glob(trial.name + ".*"):
        f.unlink()
    ekit.log(f"recover: {'passes' if record['passed'] else 'still misses'} (ONNX Runtime proxy) with "
             f"{len(record['float_layers'])} layer(s) float, {record['int8_mac_share']:.1%} of MACs int8, "
             f"{record['seconds']} s")
    return record
