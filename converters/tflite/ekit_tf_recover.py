"""int8 accuracy recovery for TFLite (the rpi target's --recover), on top of ekit_recover's search.

TFLite's own selective quantization does the work: ``tf.lite.experimental.QuantizationDebugger``
calibrates the converter ONCE; then

* sensitivity: its debug model runs every quantized op beside its float twin on the SAME
  (dequantized) input, so the error an op adds is measured directly: (1 - cosine) of the
  dequantized int8 output vs the float output, on a few reference images (``layer_error``). Ranked
  are the compute ops (conv, depthwise conv, fully connected, transpose conv, batch matmul); for a
  detector or a map the ops of the decode tail (``tail``: after the last compute ops) come first;
* a try: ``debugger.options = QuantizationDebugOptions(denylisted_nodes=<output tensor names>)``
  and ``get_nondebug_quantized_model()`` (a re-quantization, no calibration), then the integer I/O
  the target asked for (TFLiteConverter's own ``modify_model_io_type``). A float layer at the
  model's edge cannot take integer I/O: that input/output stays float32, and the step says so.

Each try is measured by running the artifact exactly as the validate step does
(``ekit_tf.reference_feeds`` / ``ekit_tf.reference_outputs``) with the validate step's metrics.
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import numpy as np

import ekit
from ekit import recover as ekit_recover
from ekit.keep_float import MIN_INT8_MACS, mac_share, within_floor
import ekit_tf

COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL")
IO_TYPES = {"uint8": "uint8", "int8": "int8", "float32": "float32"}


def layer_error(float_out, quant_out, scale, zero_point) -> float:
    """The debugger's per-layer direct comparison: 1 - cosine of the dequantized int8 output
    against the float op's output on the same input (0: no error added)."""
    q = (np.asarray(quant_out, np.float64) - float(zero_point)) * float(scale)
    f = np.asarray(float_out, np.float64)
    den = np.linalg.norm(q) * np.linalg.norm(f)
    return float(1.0 - np.dot(q.ravel(), f.ravel()) / den) if den > 0 else 0.0


def macs(model: bytes) -> dict:
    """Multiply-accumulates per image of every compute op of a TFLite model (bytes), keyed by the
    op's output tensor name (the name ``denylisted_nodes`` takes)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=bytes(model))
    shapes = {d["index"]: [int(v) for v in d["shape"]] for d in it.get_tensor_details()}
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    res = {}
    for op in it._get_ops_details():  # the op list (ekit_tf.tflite_ops reads it the same way)
        kind = op["op_name"]
        if kind not in COMPUTE_OPS or not len(op["outputs"]):
            continue
        out = shapes.get(op["outputs"][0]) or []
        a = shapes.get(op["inputs"][0]) or []
        w = shapes.get(op["inputs"][1]) if len(op["inputs"]) > 1 else []
        per_image = int(np.prod(out[1:])) if out else 0
        if kind == "CONV_2D":  # weights [Cout, kh, kw, Cin]
            n = per_image * int(np.prod(w[1:]))
        elif kind == "DEPTHWISE_CONV_2D":  # weights [1, kh, kw, C*m]
            n = per_image * int(np.prod(w[1:3]))
        elif kind == "FULLY_CONNECTED":  # weights [out, in]
            n = per_image * int(w[-1] if w else 0)
        elif kind == "TRANSPOSE_CONV":  # inputs: output_shape, weights [Cout, kh, kw, Cin], x
            w, a = shapes.get(op["inputs"][1]) or [], shapes.get(op["inputs"][2]) or []
            n = int(np.prod(a[1:])) * int(np.prod(w[:3])) if a and w else 0
        else:  # BATCH_MATMUL: out elements x K
            n = per_image * int(a[-1] if a else 0)
        res[names[op["outputs"][0]]] = int(n)
    return res


def tail(model: bytes) -> list[str]:
    """Output tensor names of the ops between the last compute ops and the graph outputs, nearest
    the output first: a detector's decode tail (box maths, sigmoid, the Concat of boxes and scores,
    whose one int8 scale flattens 0..1 scores beside 0..640 px boxes). Empty for a model whose
    output comes straight from a compute op."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=bytes(model))
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    ops = it._get_ops_details()
    producer = {t: op for op in ops for t in op["outputs"]}
    todo, seen, out = [d["index"] for d in it.get_output_details()], set(), []
    while todo:
        op = producer.get(todo.pop(0))
        if op is None or op["index"] in seen or op["op_name"] in COMPUTE_OPS:
            continue
        seen.add(op["index"])
        out.append((names[op["outputs"][0]], op["op_name"]))
        todo.extend(int(i) for i in op["inputs"] if i >= 0)
    return out


def graph_nodes(model: bytes) -> tuple[list[tuple], list[str]]:
    """A TFLite model's ops as ``(output tensor name, op, [input tensor names], [output tensor
    names])`` (the op's name is its first output's: the name ``denylisted_nodes`` takes) and its
    output tensor names."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=bytes(model))
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    nodes = [(names[op["outputs"][0]], op["op_name"], [names[i] for i in op["inputs"] if i >= 0],
              [names[o] for o in op["outputs"]]) for op in it._get_ops_details() if len(op["outputs"])]
    return nodes, [names[d["index"]] for d in it.get_output_details()]


# the element-wise ops of a map model that stay float with keep_float=auto (HardSwish, SE, FPN Resize/Add/Concat)
MAP_FLOAT_OPS = ("ADD", "MUL", "HARD_SWISH", "MEAN", "RELU_0_TO_1", "HARD_SIGMOID", "RESIZE_NEAREST_NEIGHBOR",
                 "RESIZE_BILINEAR", "CONCATENATION", "LOGISTIC")


def keep_float_region(model: bytes, mode: str, task: str | None) -> dict:
    """The ops of a (calibrated) TFLite model that stay float in the int8 model: ``ekit.keep_float``'s
    region (mode "auto": a detector's decode tail + head convs and what follows them; a probability
    map's tail + its element-wise ops, ``MAP_FLOAT_OPS``: only its convs int8; else the tail; "tail";
    "none"), by output tensor name."""
    from ekit.keep_float import float_region

    if mode == "none":
        return {"tail": [], "head": [], "float": []}
    nodes, outputs = graph_nodes(model)
    region = float_region(nodes, outputs, COMPUTE_OPS, mode == "auto" and task == "detect")
    if mode == "auto" and task == "map":  # a probability map: only the compute ops int8
        from ekit.keep_float import elementwise

        region["elementwise"] = elementwise(nodes, MAP_FLOAT_OPS)
        region["float"] = list(dict.fromkeys(region["float"] + region["elementwise"]))
    return region


class Recovery:
    """One calibration (the debugger's), then any number of re-quantizations with layers float."""

    def __init__(self, conv, debug_samples: np.ndarray, batch: int, int8_io: str):
        import tensorflow as tf

        self.tf = tf
        self.int8_io = int8_io
        data = np.asarray(debug_samples, np.float32)

        def gen():
            for i in range(0, data.shape[0] - data.shape[0] % batch, batch):
                yield [data[i:i + batch]]

        self.metrics = {"error": layer_error}
        t = time.perf_counter()
        self.debugger = tf.lite.experimental.QuantizationDebugger(
            converter=conv, debug_dataset=gen,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(layer_direct_compare_metrics=self.metrics))
        self.calibration_seconds = round(time.perf_counter() - t, 2)

    def sensitivity(self, tail_first: bool) -> list[dict]:
        """[{"layer": output tensor name, "op", "sensitivity", "rmse_per_scale"[, "tail"]}]: with
        ``tail_first`` (detectors, maps) the decode tail first (``tail``: an error the per-op cosine
        cannot see, scores sharing one scale with boxes), then the compute ops, most sensitive first."""
        self.debugger.run()
        buf = io.StringIO()
        self.debugger.layer_statistics_dump(buf)
        measured = {}
        for r in csv.DictReader(io.StringIO(buf.getvalue())):
            scale = float(r["scale"]) or 1.0
            measured[r["tensor_name"]] = {"layer": r["tensor_name"], "op": r["op_name"],
                                          "sensitivity": max(0.0, float(r["error"])),
                                          "rmse_per_scale": float(np.sqrt(float(r["mean_squared_error"]))) / scale}
        head = [dict(measured.get(name) or {"layer": name, "op": op, "sensitivity": 0.0}, tail=True)
                for name, op in (tail(self.debugger.calibrated_model) if tail_first else [])]
        first = {r["layer"] for r in head}
        rows = [r for r in measured.values() if r["op"] in COMPUTE_OPS and r["layer"] not in first]
        return head + sorted(rows, key=lambda r: -r["sensitivity"])

    def build(self, layers, dest: Path) -> Path:
        """The int8 model with ``layers`` (output tensor names) float, integer I/O as asked where
        the edge layers are int8 -> ``dest``."""
        from tensorflow.lite.python.util import modify_model_io_type  # what TFLiteConverter itself calls

        tf = self.tf
        self.debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=list(layers) or None, layer_direct_compare_metrics=self.metrics)
        blob = self.debugger.get_nondebug_quantized_model()
        if self.int8_io != "float32":
            io_type = {"uint8": tf.uint8, "int8": tf.int8}[self.int8_io]
            blob = modify_model_io_type(blob, io_type, io_type)
        dest = Path(dest)
        dest.write_bytes(blob)
        return dest


def keep_float(conv, artifact: Path, mode: str, task: str | None, batch: int, int8_io: str,
               notes: list) -> dict | None:
    """Build the int8 ``artifact`` with ``keep_float_region`` float (the debugger calibrates ``conv``
    once, ``denylisted_nodes`` re-quantizes). -> the ``quantization`` record, or None when nothing
    stays float (the caller then builds plain full integer)."""
    t = time.perf_counter()
    rec = Recovery(conv, np.zeros((0,), np.float32), batch, int8_io)
    region = keep_float_region(rec.debugger.calibrated_model, mode, task)
    if not region["float"]:
        return None
    rec.build(region["float"], artifact)
    table = macs(rec.debugger.calibrated_model)
    share = mac_share(table, region["float"])
    share = 1.0 if share is None else share
    seconds = round(time.perf_counter() - t, 1)
    notes.append(f"int8 with {len(region['float'])} op(s) kept float (denylisted_nodes, --option "
                 f"keep_float={mode}; {share:.1%} of MACs int8; not full integer): the decode tail"
                 + (f" and the head's last convs {', '.join(region['head'])}" if region["head"] else "")
                 + (f" and {len(region['elementwise'])} element-wise op(s) of the map model (only its convs int8)"
                    if region.get("elementwise") else ""))
    ekit.log(f"int8: {len(region['float'])} op(s) float ({len(region['head'])} head conv(s)), "
             f"{share:.1%} of MACs int8, {seconds} s")
    return {"keep_float": mode, "float_ops": region["float"], "float_head": region["head"],
            "float_tail": region["tail"], "int8_mac_share": round(share, 4), "seconds": seconds}


def recover(make_converter, artifact: Path, built: dict, ref: dict, spec: dict, fold: bool, batch: int, int8_io: str,
            thresholds: dict, opts, notes: list, base=()) -> dict:
    """--recover for a built int8 .tflite (``make_converter()``: a fresh TFLiteConverter set up like the
    one that built it, for the debugger to calibrate; ``built``: ekit_tf.build_and_describe's answer, updated
    in place): measure it, and when it misses ``thresholds`` keep its most sensitive compute layers
    float (``artifact`` is replaced by the best try that does better than plain int8; ``notes``
    get what stays float). -> the ``recovery`` record (ekit_recover.record + TFLite specifics)."""
    threads = int(opts["threads"])
    feed_mode = built["feed_mode"]
    names = [d["name"] for d in ekit_tf.ordered_outputs(ekit_tf.interpreter(artifact, 1))]

    def run(path):
        it = ekit_tf.interpreter(path, threads)
        return ekit_tf.reference_outputs(it, ekit_tf.reference_feeds(it, ref, spec, feed_mode), batch, ref)[0]

    before = ekit_recover.measure(ref, run(artifact), names)
    missed = ekit_recover.misses(before, thresholds)
    if not missed:
        ekit.log("recover: the plain int8 model meets its thresholds; nothing kept float")
        return {"attempted": False, "passed": True, "float_layers": [], "int8_mac_share": None,
                "reason": "the plain int8 model meets its thresholds"}
    ekit.log(f"recover: plain int8 misses {'; '.join(missed)}; ranking layers")
    t0 = time.perf_counter()
    n = min(len(ref["x"]), 8)
    samples = ekit_tf.pixels_from_x(ref["x"][:n], spec) if fold else ekit_tf.model_input_nhwc(ref["x"][:n], spec)
    rec = Recovery(make_converter(), samples, batch, int8_io)
    # a detector's / map's decode tail is tried first: measured on YOLOv8n (bench/results/
    # recover_rpi_jetson.md) its final Concat, one uint8 scale for boxes and scores, is what breaks it
    base = list(base)  # already float in the artifact (keep_float): every try keeps them float too
    ranked = [r for r in rec.sensitivity(tail_first=before.get("task") in ("detect", "segment", "map") and not base)
              if r["layer"] not in set(base)]
    t_sens = time.perf_counter() - t0
    ekit.log("recover: most sensitive: " + ", ".join(f"{r['op']} {r['layer'][:60]} {r['sensitivity']:.3g}"
                                                   for r in ranked[:5]) + f" ({t_sens:.1f} s)")
    table = macs(rec.debugger.calibrated_model)  # the calibrated float model: the names the ranking uses
    # the floor (issue 19, as the region search): every try leaves >= 85 % of the MACs int8, counting the ops
    # keep_float already keeps float (the head convs); a layer that would cross it is passed over
    within, below = within_floor([r["layer"] for r in ranked], table, base)
    if below:
        ekit.log(f"recover: {len(below)} layer(s) passed over: float they would leave less than "
                 f"{MIN_INT8_MACS:.0%} of the MACs int8 ({', '.join(n[:40] for n in below[:4])})")
    ranked_all, ranked = ranked, [r for r in ranked if r["layer"] in set(within)]

    def share(layers):
        value = mac_share(table, base + list(layers))
        return 1.0 if value is None else value

    trial = artifact.with_name(artifact.name + ".recover")
    found = ekit_recover.search(ranked, lambda layers: rec.build(base + list(layers), trial.with_suffix(f".{len(layers)}.tflite")),
                                run, ref, thresholds, int(opts["recover_max_float_layers"]),
                                ekit_recover.time_budget(opts, t0 - ekit.STARTED, time.perf_counter() - t0),
                                names, share=share, min_share=MIN_INT8_MACS)
    record = ekit_recover.record(found, ranked_all, table, before, thresholds, time.perf_counter() - t0, t_sens)
    record["int8_mac_share"] = round(share(found.get("float_layers") or []), 4)  # the head convs float count
    record["min_int8_macs"] = MIN_INT8_MACS
    record["below_floor"] = below
    record["method"] = ("TFLite QuantizationDebugger: per-op error added (1 - cos of the int8 op vs its float "
                        "twin on the same input; a detector's/map's decode tail first), top-k kept float with "
                        "denylisted_nodes, k = 1, 2, 3, ...")
    record["calibration_seconds"] = rec.calibration_seconds
    record["plain_int8_seconds"] = round(t0 - ekit.STARTED, 2)  # the step until recovery began (onnx2tf + converter)
    if found.get("artifact") and found["score"] > ekit_recover.score(before, thresholds):
        os.replace(found["artifact"], artifact)
    else:
        record["float_layers"], record["int8_mac_share"] = [], round(share([]), 4)
        record["after"] = {"misses": missed, "summary": "no try did better than plain int8"}
    for f in artifact.parent.glob(artifact.name + ".recover.*"):
        f.unlink()
    ekit.log(f"recover: {'passes' if record['passed'] else 'still misses'} with {len(record['float_layers'])} "
             f"layer(s) float, {record['int8_mac_share']:.1%} of MACs int8, {record['seconds']} s")
    if record["float_layers"]:
        built.update(ekit_tf.describe(artifact, fold, int8_io, notes))
        notes += io_note(record, built["io"], int8_io)
    return record


def io_note(record: dict | None, io_spec: dict, int8_io: str) -> list[str]:
    """Notes for the manifest: which layers stay float, and any I/O that a float edge layer left
    float32 instead of the integer I/O asked for."""
    if not record or not record.get("float_layers"):
        return []
    notes = [f"int8 with {len(record['float_layers'])} layer(s) kept float by --recover "
             f"({record['int8_mac_share']:.1%} of MACs int8; not full integer): "
             + ", ".join(r["layer"] for r in record["float_layers"])]
    if int8_io != "float32":
        stayed = [t["name"] for t in io_spec["inputs"] + io_spec["outputs"] if t["dtype"] != int8_io]
        if stayed:
            notes.append(f"--recover: {', '.join(stayed)} (I/O) left float32 instead of {int8_io}: "
                         "the layer next to it is kept float, so the model converts there itself")
    return notes
