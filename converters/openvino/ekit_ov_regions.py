"""ekit_ov_regions — the intel target's region recovery (--recover, ``recover_unit = "region"``): the unit
is one activation FakeQuantize of the NNCF-quantized IR. Dropping it (its consumers read the float
tensor: no re-calibration, the other scales and the int8 weights stay) is activation-only fallback;
the compute ops it fed run in float with their dequantized weights. Ranking (local noise, a task proxy
on a few calibration images) and verification (the real metric on the top few) are ekit/regions.py's
``rank_and_verify``, shared with the Q/DQ ONNX runtimes. ``ov`` is passed in (importable without it).
"""

from __future__ import annotations

import time

import numpy as np

import ekit
import ekit_ov
from ekit.keep_float import MIN_INT8_MACS

COMPUTE = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")
# ops a quantized tensor passes through on its way to a compute op (OpenVINO's low-precision
# transformations keep them int8): a compute op behind one of them reads the FakeQuantize's output
PASS = ("Concat", "MaxPool", "Reshape", "Split", "VariadicSplit", "Transpose", "Interpolate", "StridedSlice",
        "Squeeze", "Unsqueeze", "Slice")


def is_activation_fq(op) -> bool:
    """A FakeQuantize on an activation (NNCF compresses weights to int8 constants; a weight FakeQuantize
    reads a Constant, maybe through a Convert)."""
    if op.get_type_name() != "FakeQuantize":
        return False
    src = op.input_value(0).get_node()
    while src.get_type_name() == "Convert":
        src = src.input_value(0).get_node()
    return src.get_type_name() != "Constant"


def compute_behind(op, hops: int = 6) -> list[str]:
    """Friendly names of the compute ops that read ``op``'s output, directly or through PASS ops."""
    found: list[str] = []
    todo = [(i.get_node(), hops) for i in op.output(0).get_target_inputs()]
    while todo:
        node, left = todo.pop()
        kind = node.get_type_name()
        if kind in COMPUTE:
            if node.get_friendly_name() not in found:
                found.append(node.get_friendly_name())
        elif kind in PASS and left > 0:
            todo += [(i.get_node(), left - 1) for k in range(node.get_output_size())
                     for i in node.output(k).get_target_inputs()]
    return found


def fq_regions(model) -> list[dict]:
    """The activation regions of an NNCF-quantized model, in the shape ekit/regions.py takes:
    ``[{"tensor": FakeQuantize name, "consumers": [op types], "compute": [compute ops fed]}]``."""
    return [{"tensor": op.get_friendly_name(),
             "consumers": sorted({i.get_node().get_type_name() for i in op.output(0).get_target_inputs()}),
             "compute": compute_behind(op)}
            for op in model.get_ordered_ops() if is_activation_fq(op)]


def drop_fqs(model, names):
    """A copy of ``model`` without the activation FakeQuantizes ``names`` (their consumers read the input)."""
    m = model.clone()
    wanted = set(names)
    for op in m.get_ordered_ops():
        if op.get_friendly_name() in wanted and is_activation_fq(op):
            src = op.input_value(0)
            for inp in list(op.output(0).get_target_inputs()):
                inp.replace_source_output(src)
    m.validate_nodes_and_infer_types()
    return m


def runs(ov, model, x) -> list[np.ndarray]:
    """The model's outputs on ``x`` one image at a time (CPU, f32 for the float parts)."""
    compiled = ekit_ov.compile_model(ov, ov.Core(), model, "CPU", "f32")
    return ekit_ov.run_batches(compiled.create_infer_request(), x, 1, len(compiled.outputs), list(compiled.outputs))


def fq_noise(ov, model, regions: list[dict], x) -> dict:
    """{FakeQuantize name: ||FQ(a) - a||^2 / ||a||^2} on ``x`` (one run with their inputs and outputs exposed)."""
    m = model.clone()
    ops = {op.get_friendly_name(): op for op in m.get_ordered_ops()}
    keys = []
    for r in regions:
        src = ops[r["tensor"]].input_value(0)
        keys += [(src.get_node().get_friendly_name(), src.get_index()), (r["tensor"], 0)]
    unique = list(dict.fromkeys(keys))
    added = m.add_outputs(unique)
    results = [o.get_node().get_friendly_name() for o in m.outputs]
    where = {k: results.index(o.get_node().get_friendly_name()) for k, o in zip(unique, added)}
    compiled = ekit_ov.compile_model(ov, ov.Core(), m, "CPU", "f32")
    req = compiled.create_infer_request()
    num, den = {r["tensor"]: 0.0 for r in regions}, {r["tensor"]: 0.0 for r in regions}
    for i in range(len(x)):
        res = req.infer({0: np.ascontiguousarray(x[i:i + 1])})
        for k, r in enumerate(regions):
            a = np.asarray(res[compiled.outputs[where[keys[2 * k]]]], np.float64)
            b = np.asarray(res[compiled.outputs[where[keys[2 * k + 1]]]], np.float64)
            num[r["tensor"]] += float(((a - b) ** 2).sum())
            den[r["tensor"]] += float((a * a).sum())
    return {t: (num[t] / den[t] if den[t] > 0 else 0.0) for t in num}


def head_priors(model, head_convs) -> set:
    """The compute ops whose regions are candidates whatever their noise: the head convs, and (NNCF keeps
    those float, so no FakeQuantize feeds them) the compute ops right before them in each head branch."""
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    out = set(head_convs)
    for name in head_convs:
        if name not in ops:
            continue
        todo, seen = [ops[name].input_value(0).get_node()], 0
        while todo and seen < 8:
            node, seen = todo.pop(), seen + 1
            if node.get_type_name() in COMPUTE:
                out.add(node.get_friendly_name())
            elif node.get_type_name() != "Parameter":
                todo += [node.input_value(k).get_node() for k in range(node.get_input_size())
                         if node.input_value(k).get_node().get_type_name() != "Constant"]
    return out


def search(ov, int8_model, float_model, calib, ref: dict, thresholds: dict, head_convs, *, max_seconds: float,
           names=None, candidates: int = 8, verify: int = 3, images: int = 6, min_int8_macs: float = MIN_INT8_MACS) -> dict:
    """ekit/regions.py's search on the FakeQuantize regions of ``int8_model``; the artifact of a try is the
    ov.Model itself. -> regions.rank_and_verify's result."""
    import ekit_ov_recover
    from ekit import regions as ekit_regions

    t0 = time.perf_counter()
    x = np.asarray(calib[:images], np.float32)
    regions = fq_regions(int8_model)
    _, floats = ekit_ov.int8_mac_fraction(int8_model)
    ekit.log(f"recover: {len(regions)} activation FakeQuantize regions")
    return ekit_regions.rank_and_verify(
        regions, fq_noise(ov, int8_model, regions, x), head_priors(int8_model, head_convs),
        runs(ov, float_model, x), runs(ov, int8_model, x),
        lambda keys: runs(ov, drop_fqs(int8_model, keys), x), lambda keys: drop_fqs(int8_model, keys),
        ekit_ov_recover.macs(float_model), set(floats), ref, thresholds,
        save=lambda model, k: model, run=lambda model: runs(ov, model, ref["x"]), max_seconds=max_seconds,
        started=t0, names=names, candidates=candidates, verify=verify, min_int8_macs=min_int8_macs)
