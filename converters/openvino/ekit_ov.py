"""ekit_ov — OpenVINO/NNCF helpers for the intel target's scripts (copied next to them).

Plain Python + numpy at import time; ``ov`` / ``nncf`` modules are passed in by the caller, so
this file imports (and its pure functions are unit-testable) without OpenVINO installed.
"""

from __future__ import annotations

import re
import time

import numpy as np

import ekit

OV_TO_NUMPY = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64",
               "u8": "uint8", "i8": "int8", "u16": "uint16", "i16": "int16", "i32": "int32",
               "i64": "int64", "u32": "uint32", "u64": "uint64", "boolean": "bool"}


# --------------------------------------------------------------------------- conversion errors

def unconverted_ops(message: str) -> list[str]:
    """The ONNX op types OpenVINO's frontend named as not convertible in an error message.

    OpenVINO reports ``-- No conversion rule found for operations: dom.OpA, OpB`` and
    ``-- Conversion is failed for: OpC``; returns ``["dom.OpA", "OpB", "OpC"]`` (in order, no
    duplicates), or [] when the message is about something else.
    """
    found: list[str] = []
    for line in str(message).splitlines():
        m = re.search(r"(?:No conversion rule found for operations|Conversion is failed for)"
                      r"\s*:\s*(.+)$", line)
        if not m:
            continue
        for op in m.group(1).split(","):
            op = op.strip().rstrip(".")
            if op and op not in found:
                found.append(op)
    return found


def first_lines(message: str, n: int = 4) -> str:
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()
             and not ln.startswith("Check '")]
    return " ".join(lines[:n]) or str(message)[:300]


# --------------------------------------------------------------------------- nncf options

def ignored_scope(nncf, entries):
    """``["name", "re:regex", "type:Op"]`` -> nncf.IgnoredScope (validate=False: a name that is
    not in the graph is reported by nncf as a warning, not a crash), or None when empty."""
    if not entries:
        return None
    if isinstance(entries, str):
        entries = [entries]
    names, patterns, types = [], [], []
    for e in entries:
        e = str(e)
        if e.startswith("re:"):
            patterns.append(e[3:])
        elif e.startswith("type:"):
            types.append(e[5:])
        else:
            names.append(e)
    return nncf.IgnoredScope(names=names, patterns=patterns, types=types, validate=False)


def head_names(model, onnx_path) -> list[str]:
    """Friendly names of the OpenVINO ops that compute the ONNX model's decode tail
    (``ekit_onnx.head_outputs``: after the last Conv/Gemm/MatMul), found by tensor name."""
    import onnx

    import ekit_onnx

    wanted = ekit_onnx.head_outputs(onnx.load(str(onnx_path)))
    return [op.get_friendly_name() for op in model.get_ops()
            if any(set(op.output(i).get_names()) & wanted for i in range(op.get_output_size()))]


def head_conv_ops(model, onnx_path) -> list[str]:
    """Friendly names of the OpenVINO Convolution/MatMul ops that compute the ONNX model's head
    convs (``ekit_onnx.head_convs``: the last learned layer of each head branch), found by their
    output tensor's name; a bias Add that carries the name leads back to its convolution."""
    import onnx

    import ekit_onnx

    wanted = {n.output[0] for n in ekit_onnx.head_convs(onnx.load(str(onnx_path)))}
    compute = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")
    found = []
    for op in model.get_ordered_ops():
        if not any(set(op.output(i).get_names()) & wanted for i in range(op.get_output_size())):
            continue
        node = op
        for _ in range(3):  # Add(bias) <- Convolution
            if node.get_type_name() in compute:
                break
            node = node.input_value(0).get_node()
        if node.get_type_name() in compute and node.get_friendly_name() not in found:
            found.append(node.get_friendly_name())
    return found


PASS_THROUGH = ("MaxPool", "Reshape", "Split", "VariadicSplit", "Transpose", "Interpolate", "StridedSlice",
                "Squeeze", "Unsqueeze", "Slice")


def int8_mac_fraction(model) -> tuple[float, list[str]]:
    """(the fraction of the compute ops' MACs that run int8, the compute ops that do not) of an
    NNCF-quantized model: int8 = its weights come from an int8 constant (or a FakeQuantize) and its
    activation from a FakeQuantize, directly or through ops that keep a tensor int8 (NNCF places
    activation FakeQuantizes before Concat/MaxPool; a Concat needs all its inputs quantized). A
    FakeQuantize dropped by region recovery leaves the ops it fed float."""
    import ekit_ov_recover

    def int8_weights(node, hops=4) -> bool:  # NNCF stores int8 weights: i8/u8 Constant -> Convert -> ...
        kind = node.get_type_name()
        if kind == "Constant":
            return str(node.get_element_type()) in ("<Type: 'int8_t'>", "<Type: 'uint8_t'>") or \
                node.get_element_type().get_type_name() in ("i8", "u8")
        if kind == "FakeQuantize":
            return True
        return hops > 0 and any(int8_weights(node.input_value(i).get_node(), hops - 1)
                                for i in range(node.get_input_size()))

    def int8_data(node, hops=6) -> bool:  # its activation comes from a FakeQuantize (through Concat/MaxPool/...)
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Concat":
            return hops > 0 and all(int8_data(node.input_value(i).get_node(), hops - 1)
                                    for i in range(node.get_input_size()))
        return hops > 0 and kind in PASS_THROUGH and int8_data(node.input_value(0).get_node(), hops - 1)

    table = ekit_ov_recover.macs(model)
    quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
    floats = [name for name, op in ekit_ov_recover.compute_ops(model).items()
              if not int8_weights(op.input_value(1).get_node())
              or (quantized and not int8_data(op.input_value(0).get_node()))]
    total = sum(table.values())
    return ((total - sum(table.get(n, 0) for n in floats)) / total if total else 1.0), floats


def fast_bias_correction(value, task_kind: str | None) -> bool:
    """The fast_bias_correction option ("detect" | true | false) for a model of ``task_kind``: "detect"
    is fast for detectors only (YOLOv8n band F1 0.821 full -> 0.905 fast; MobileNetV2 20/20 full,
    18/20 fast: bench/results/int8_recipes.md)."""
    text = str(value).strip().lower()
    if text == "detect":
        return task_kind == "detect"
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    ekit.fail("usage", f"option fast_bias_correction={value!r} is not one of detect, true, false")


def nncf_kwargs(nncf, options: dict) -> dict:
    """Keyword arguments shared by nncf.quantize and nncf.quantize_with_accuracy_control."""
    kw: dict = {}
    preset = (options.get("preset") or "").strip().lower()
    if preset:
        try:
            kw["preset"] = nncf.QuantizationPreset(preset)
        except ValueError:
            ekit.fail("usage", f"preset {preset!r}: use performance or mixed")
    model_type = (options.get("model_type") or "").strip().lower()
    if model_type:
        try:
            kw["model_type"] = nncf.ModelType(model_type)
        except ValueError:
            ekit.fail("usage", f"model_type {model_type!r}: use transformer or leave it empty")
    device = str(options.get("device") or "CPU").upper()
    kw["target_device"] = {"CPU": nncf.TargetDevice.CPU, "GPU": nncf.TargetDevice.GPU,
                           "NPU": nncf.TargetDevice.NPU}.get(device, nncf.TargetDevice.ANY)
    if "fast_bias_correction" in options:
        kw["fast_bias_correction"] = bool(options["fast_bias_correction"])
    fix = str(options.get("overflow_fix") or "").strip().lower()
    if fix:  # 7-bit weights where the int8 kernels of CPUs without VNNI would saturate (edgekiln.isa)
        try:
            kw["advanced_parameters"] = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix(fix))
        except ValueError:
            ekit.fail("usage", f"overflow_fix {fix!r}: use enable, first_layer_only or disable")
    scope = ignored_scope(nncf, options.get("ignored_scopes"))
    if scope is not None:
        kw["ignored_scope"] = scope
    return kw


def accuracy_control_kwargs(kw: dict) -> dict:
    """``nncf_kwargs`` for nncf.quantize_with_accuracy_control, which names the advanced
    parameters ``advanced_quantization_parameters``."""
    kw = dict(kw)
    if "advanced_parameters" in kw:
        kw["advanced_quantization_parameters"] = kw.pop("advanced_parameters")
    return kw


def describe_kwargs(kw: dict) -> dict:
    """The nncf arguments as plain JSON for the results / manifest."""
    out = {}
    for k, v in kw.items():
        if k == "ignored_scope":
            out[k] = {"names": v.names, "patterns": v.patterns, "types": v.types}
        elif k == "advanced_parameters":
            out["overflow_fix"] = v.overflow_fix.value
        elif hasattr(v, "value"):
            out[k] = v.value
        else:
            out[k] = v
    return out


def float_ops_hint(model) -> dict:
    """How many FakeQuantize nodes the quantized model holds (fewer after accuracy control)."""
    ops = [op.get_type_name() for op in model.get_ordered_ops()]
    return {"fake_quantize": ops.count("FakeQuantize"),
            "convolutions": ops.count("Convolution") + ops.count("GroupConvolution"),
            "matmuls": ops.count("MatMul")}


# --------------------------------------------------------------------------- reproducible IR

AUTO_NAME = re.compile(r"^([A-Za-z0-9]+)_(\d+)((?:_compressed)?)$")


def stable_name_map(names, op_types) -> dict[str, str]:
    """{made-up name: renumbered name} for names OpenVINO makes up, ``<OpType>_<n>`` (and the
    ``<OpType>_<n>_compressed`` fp16 compression derives from one), ``n`` renumbered per type in
    the order given; the same ``n`` keeps one new number. Other names (the model's own, e.g.
    ONNX's ``Conv_12``: not an OpenVINO type name) are left alone."""
    numbers: dict[tuple[str, str], int] = {}
    counts: dict[str, int] = {}
    found = {}
    for name in names:
        match = AUTO_NAME.match(name)
        if not match or match.group(1) not in op_types:
            continue
        key = (match.group(1), match.group(2))
        if key not in numbers:
            counts[key[0]] = numbers[key] = counts.get(key[0], 0) + 1
        found[name] = f"{key[0]}_{numbers[key]}{match.group(3)}"
    return found


def save_stable(ov, model, xml, compress_to_fp16: bool) -> None:
    """``ov.save_model``, then the names OpenVINO made up renumbered in topological order.

    OpenVINO names an unnamed node ``<Type>_<n>`` from a counter global to the process, so the
    same model gets other names whenever the process made a different number of nodes before
    (NNCF's accuracy control does): the IR's bytes then differ from build to build while the
    weights (.bin) are identical. The saved model is read back, its made-up node and tensor
    names are renumbered (stable_name_map), and it is saved again without recompression (a
    re-read fp16 model keeps its Convert nodes, so the .bin is unchanged), next to the target
    and renamed over it."""
    from pathlib import Path

    xml = Path(xml)
    ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    reread = ov.Core().read_model(str(xml))
    ops = list(reread.get_ordered_ops())
    types = {op.get_type_name() for op in ops} | {"Constant"}
    ports = [port for op in ops for port in op.outputs()]
    names = [op.get_friendly_name() for op in ops] + [n for port in ports for n in sorted(port.get_names())]
    rename = stable_name_map(names, types)
    for op in ops:
        op.set_friendly_name(rename.get(op.get_friendly_name(), op.get_friendly_name()))
    for port in ports:
        if set(port.get_names()) & set(rename):
            port.get_tensor().set_names({rename.get(n, n) for n in port.get_names()})
    tmp = xml.with_name(f".stable-{xml.name}")
    ov.save_model(reread, str(tmp), compress_to_fp16=False)
    del reread, ops, ports  # the .bin read above is memory-mapped: let go of it before replacing it
    for suffix in (".bin", ".xml"):
        tmp.with_suffix(suffix).replace(xml.with_suffix(suffix))


# --------------------------------------------------------------------------- preprocessing

def bake_preprocessing(ov, model, spec: dict):
    """Put layout, colour order, scale/mean/std of the InputSpec into the model's first input
    with OpenVINO's PrePostProcessor. The model then takes uint8 NHWC RGB pixels (after
    resize/crop). Returns (model, description dict)."""
    from openvino.preprocess import PrePostProcessor

    h, w, c = ekit.input_hw(spec)
    if c != 3:
        ekit.fail("unsupported", f"bake_preprocessing handles 3-channel RGB inputs; this model "
                                 f"takes {c} channel(s)", "feed it float input (bake_preprocessing=false)")
    layout = spec.get("layout", "nchw")
    scale = float(spec.get("scale") or 1.0)
    mean = None if spec.get("mean") is None else np.broadcast_to(
        np.asarray(spec["mean"], np.float64).reshape(-1), (c,)) * scale
    std = None if spec.get("std") is None else np.broadcast_to(
        np.asarray(spec["std"], np.float64).reshape(-1), (c,)) * scale
    name = model.inputs[0].get_any_name()
    ppp = PrePostProcessor(model)
    inp = ppp.input(name)
    inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    inp.model().set_layout(ov.Layout("NCHW" if layout == "nchw" else "NHWC"))
    pre = inp.preprocess()
    pre.convert_element_type(ov.Type.f32)
    steps = ["uint8 -> float32"]
    if spec.get("color", "rgb") == "bgr":
        pre.reverse_channels()
        steps.append("RGB -> BGR")
    if mean is not None:
        pre.mean([float(v) for v in mean])
        steps.append(f"- {[round(float(v), 4) for v in mean]}")
    if std is not None:
        pre.scale([float(v) for v in std])
        steps.append(f"/ {[round(float(v), 4) for v in std]}")
    elif scale != 1.0:
        pre.scale(scale)
        steps.append(f"/ {scale:g}")
    if layout == "nchw":
        steps.append("NHWC -> NCHW")
    model = ppp.build()
    desc = {"input": name, "dtype": "uint8", "layout": "nhwc", "color": "rgb",
            "steps": steps,
            "description": "the model takes uint8 RGB pixels laid out NHWC; inside it: "
                           + ", ".join(steps)}
    return model, desc


def _resize_sentence(spec: dict) -> str:
    text = ekit.describe_preprocessing(spec)
    cut = [text.find(m) for m in (", keep RGB", ", reorder the channels", ", convert it to grey")]
    cut = [i for i in cut if i > 0]
    return text[:min(cut)] if cut else text.split(".")[0]


def feed_for(spec: dict, baked: dict | None, dynamic_batch: bool) -> dict:
    """The report's ``feed``: what a user passes to the artifact."""
    shape = list(spec.get("shape") or [])
    if baked:
        h, w, _ = ekit.input_hw(spec)
        batch = shape[0] if shape else 1
        return {"dtype": "uint8", "layout": "nhwc", "shape": [batch, h, w, 3],
                "dynamic_batch": dynamic_batch,
                "preprocessing": _resize_sentence(spec) + ", and feed the uint8 RGB pixels as "
                                 f"NHWC [{'N' if dynamic_batch else batch}, {h}, {w}, 3]; channel "
                                 "order, scaling and mean/std "
                                 "happen inside the model." + (" The batch dimension is dynamic."
                                                                if dynamic_batch else "")}
    return {"dtype": "float32", "layout": spec.get("layout", "nchw"), "shape": shape,
            "dynamic_batch": dynamic_batch,
            "preprocessing": ekit.describe_preprocessing(dict(spec, dynamic_batch=dynamic_batch))}


# --------------------------------------------------------------------------- running

def compile_model(ov, core, model, device: str = "CPU", precision_hint: str | None = "f32",
                  mode: str = "LATENCY", extra: dict | None = None):
    """Compile with an explicit performance mode and (unless None/"default") inference precision."""
    cfg = {"PERFORMANCE_HINT": mode}
    if precision_hint and precision_hint != "default":
        cfg["INFERENCE_PRECISION_HINT"] = precision_hint
    cfg.update(extra or {})
    return core.compile_model(model, device, cfg)


def accuracy(ov, model, xs, ys, precision_hint: str = "f32") -> float:
    """Top-1 accuracy of ``model`` (ov.Model) on float inputs ``xs`` [N,...] one by one."""
    core = ov.Core()
    compiled = compile_model(ov, core, model, "CPU", precision_hint)
    out = compiled.outputs[0]
    req = compiled.create_infer_request()
    hits = 0
    for i in range(len(xs)):
        y = req.infer({0: xs[i:i + 1]})[out]
        hits += int(np.argmax(np.asarray(y).reshape(-1)) == int(ys[i]))
    return hits / max(1, len(xs))


def ov_dtype(element_type) -> str:
    name = element_type.get_type_name() if hasattr(element_type, "get_type_name") else str(element_type)
    return OV_TO_NUMPY.get(name, name)


def port_spec(port) -> dict:
    ps = port.get_partial_shape()
    dims = [d.get_length() if d.is_static else None for d in ps] if ps.rank.is_static else None
    return ekit.tensor_spec(port.get_any_name(), dims, ov_dtype(port.get_element_type()))


def run_batches(request, x: np.ndarray, batch: int, n_outputs: int, outputs) -> list[np.ndarray]:
    """Run ``x`` [N,...] through a sync infer request ``batch`` samples at a time (the last chunk
    padded with its last sample when the model's batch is static); outputs stacked on axis 0."""
    n = len(x)
    got = [[] for _ in range(n_outputs)]
    for s in range(0, n, batch):
        chunk = x[s:s + batch]
        real = len(chunk)
        if real < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
        res = request.infer({0: np.ascontiguousarray(chunk)})
        for k, port in enumerate(outputs):
            got[k].append(np.asarray(res[port])[:real].copy())
    return [np.concatenate(g, axis=0) for g in got]


def throughput(ov, compiled, sample: np.ndarray, requests: int, seconds: float = 3.0,
               min_requests: int = 0) -> dict:
    """Images/s with an AsyncInferQueue on a THROUGHPUT-compiled model: as many requests in
    flight as the plugin asks for (OPTIMAL_NUMBER_OF_INFER_REQUESTS), for ``seconds`` (at least
    ``min_requests`` inferences), after one warm-up round."""
    nireq = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, nireq)
    feed = {0: np.ascontiguousarray(sample)}
    for _ in range(nireq):
        queue.start_async(feed)
    queue.wait_all()
    done = 0
    t0 = time.perf_counter()
    while True:
        for _ in range(nireq):
            queue.start_async(feed)
        done += nireq
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and done >= max(min_requests, requests):
            break
    queue.wait_all()
    elapsed = time.perf_counter() - t0
    batch = int(sample.shape[0])
    return {"images_per_s": done * batch / elapsed, "requests": done, "infer_requests": nireq,
            "streams": _prop(compiled, "NUM_STREAMS"), "batch": batch,
            "seconds": round(elapsed, 3)}


def _prop(compiled, name):
    try:
        v = compiled.get_property(name)
    except Exception:  # property not offered by this plugin
        return None
    if hasattr(v, "to_integer"):
        return v.to_integer()
    try:
        return int(v)
    except (TypeError, ValueError):
        return str(v)


def precision_of(compiled) -> str:
    v = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = v.get_type_name() if hasattr(v, "get_type_name") else str(v)
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)
