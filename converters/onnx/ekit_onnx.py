"""ekit_onnx — ONNX and ONNX Runtime helpers for converter scripts (copied next to them, beside
ekit.py, ekit_tf.py and ekit_ov.py). onnx / onnxruntime / the simplifiers are imported inside the
functions: only environments that have them call these.

* model facts: ``onnx_io``, ``node_count``; saving as one file: ``save_onnx``;
* running: ``ort_session``, ``ort_run``; simplifying: ``simplify_onnx``;
* quantizing: ``calibration_reader`` (ONNX Runtime's data reader over a calib.npy array).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ekit import fail


def onnx_io(model) -> dict:
    """``{"inputs": [...], "outputs": [...]}`` of a ModelProto: name, shape (int, or the
    symbolic name / None for a dynamic dim) and numpy dtype name. Initializers are not inputs."""
    import onnx

    inits = {i.name for i in model.graph.initializer}

    def one(v):
        t = v.type.tensor_type
        dims = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        try:
            dt = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
        except Exception:
            dt = str(t.elem_type)
        return {"name": v.name, "shape": dims, "dtype": dt}

    return {"inputs": [one(v) for v in model.graph.input if v.name not in inits],
            "outputs": [one(v) for v in model.graph.output]}


def node_count(model) -> int:
    return len(model.graph.node)


def ort_session(model, threads: int | None = None, optimization: str = "all"):
    """An onnxruntime CPU session for a path, bytes or ModelProto."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    so.log_severity_level = 3
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def ort_run(sess, x: np.ndarray, batch: int = 1, input_name: str | None = None) -> list:
    """Run ``x`` ([N, ...]) through a session ``batch`` samples at a time; outputs stacked on
    axis 0 (one array per model output)."""
    name = input_name or sess.get_inputs()[0].name
    outs: list[list[np.ndarray]] = []
    for i in range(0, x.shape[0], batch):
        ys = sess.run(None, {name: x[i:i + batch]})
        if not outs:
            outs = [[] for _ in ys]
        for k, y in enumerate(ys):
            outs[k].append(np.asarray(y))
    return [np.concatenate(o, axis=0) for o in outs]


def calibration_reader(name: str, x: np.ndarray):
    """An ``onnxruntime.quantization.CalibrationDataReader`` feeding ``x`` ([N, ...]) one sample at a
    time to input ``name`` (rewindable: some calibrators read the data twice)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(x):
                return None
            self.i += 1
            return {name: x[self.i - 1:self.i].astype(np.float32)}

        def rewind(self):
            self.i = 0

    return Reader()


def simplify_onnx(model, tool: str):
    """Simplify with ``tool`` ("onnxslim" | "onnxsim" | "none"). Never raises: on any failure
    the original model comes back and ``info["error"]`` says why.
    -> (model, {"tool", "applied", "nodes_before", "nodes_after", "seconds", "error"})."""
    import onnx

    info = {"tool": tool, "applied": False, "nodes_before": node_count(model),
            "nodes_after": node_count(model), "seconds": 0.0, "error": None}
    if tool in (None, "", "none"):
        return model, info
    t = time.perf_counter()
    try:
        if tool == "onnxslim":
            import onnxslim

            out = onnxslim.slim(model)
        elif tool == "onnxsim":
            import onnxsim

            out, ok = onnxsim.simplify(model)
            if not ok:
                raise RuntimeError("onnxsim's own check failed")
        else:
            raise ValueError(f"unknown simplifier {tool!r} (onnxslim|onnxsim|none)")
        if out is None:
            raise RuntimeError("the simplifier returned nothing")
        onnx.checker.check_model(out)
    except ImportError as e:
        info["error"] = f"{tool} is not installed in this environment ({e})"
        return model, info
    except Exception as e:  # a simplifier bug must not lose the model
        info["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
        info["seconds"] = round(time.perf_counter() - t, 3)
        return model, info
    info.update(applied=True, nodes_after=node_count(out), seconds=round(time.perf_counter() - t, 3))
    return out, info


def save_onnx(model, path) -> Path:
    """Save a ModelProto as ONE file (no external data); ``unsupported`` above protobuf's 2 GB."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() >= 2 ** 31 - 1:
        fail("unsupported", f"the model is {model.ByteSize() / 2**30:.1f} GB: a single-file "
                            "ONNX is limited to 2 GB")
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(model, os.fspath(tmp), save_as_external_data=False)
    os.replace(tmp, path)
    return path


COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
SHAPE_ONLY = ("Shape", "Size")  # read a tensor's shape, not its values: the walk stops there


def _initializers(model) -> dict:
    import onnx.numpy_helper as nh

    out = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:  # Constant nodes hold weights in some exports
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = a.t
    return out, nh


def is_dfl(node, model, producer=None, inits=None) -> bool:
    """Is ``node`` a fixed expectation over a softmax (Ultralytics' DFL: ``dfl.conv``, a bias-free
    1x1 Conv with ONE output channel whose weights are 0, 1, ..., C-1, fed through Softmax), i.e.
    decode arithmetic that happens to be a Conv, not a learned layer? Recognised by structure:
    weights exactly ``arange(C)``, or one output channel, no bias and a Softmax within three
    Reshape/Transpose hops upstream."""
    if node.op_type != "Conv":
        return False
    inits, nh = _initializers(model) if inits is None else inits
    w = inits.get(node.input[1]) if len(node.input) > 1 else None
    if w is None or len(w.dims) != 4 or w.dims[0] != 1:
        return False
    arr = np.asarray(nh.to_array(w), np.float64).ravel()
    if arr.size > 1 and np.array_equal(arr, np.arange(arr.size, dtype=np.float64)):
        return True
    if len(node.input) > 2 and node.input[2]:
        return False
    producer = producer or {o: n for n in model.graph.node for o in n.output}
    name = node.input[0]
    for _ in range(4):
        p = producer.get(name)
        if p is None:
            return False
        if p.op_type == "Softmax":
            return True
        if p.op_type not in ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"):
            return False
        name = p.input[0]
    return False


def _walk_tail(model, limit: int):
    """(tail nodes, boundary compute nodes, too_big): a walk back from the graph outputs through
    every non-compute node (and through a DFL Conv, ``is_dfl``), stopping at Conv/Gemm/MatMul and
    at Shape/Size (they read a shape, not data)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = _initializers(model)
    found, bounds, todo, seen = [], [], [o.name for o in model.graph.output], set()
    while todo:
        name = todo.pop()
        n = producer.get(name)
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if n.op_type in COMPUTE_OPS and not is_dfl(n, model, producer, inits):
            bounds.append(n)
            continue
        found.append(n)
        if len(found) > limit:
            return [], [], True
        if n.op_type not in SHAPE_ONLY:
            todo.extend(i for i in n.input if i)
    order = {id(n): i for i, n in enumerate(model.graph.node)}
    return (sorted(found, key=lambda n: order[id(n)]), sorted(bounds, key=lambda n: order[id(n)]), False)


def head(model, limit: int = 200) -> list:
    """The nodes between the last compute layers (Conv/Gemm/MatMul) and the graph outputs: a
    detector's decode tail (DFL softmax and its fixed-weight Conv, sigmoid, box arithmetic, the
    Concat of boxes and scores, the shape arithmetic of the anchors). Quantizing that tail makes
    box coordinates (0..640) and class scores (0..1) share one int8 scale, which crushes the
    scores; a classifier's tail (Gemm -> output) is empty. More than ``limit`` nodes: [] (not a
    small tail). -> NodeProtos, in graph order."""
    return _walk_tail(model, limit)[0]


def head_convs(model, limit: int = 200) -> list:
    """The last learned compute layer of each output branch: the Conv/Gemm/MatMul nodes that feed
    the ``head`` tail (or a graph output) directly. Found by structure, not by name: Ultralytics
    YOLOv8n gives its six 1x1 head convs ``cv2.{0,1,2}.2`` (box DFL logits) and ``cv3.{0,1,2}.2``
    (class logits) -- the DFL Conv (``is_dfl``) is decode, part of the tail; PP-OCR det its last
    ConvTranspose; a classifier its final Gemm (or Conv). The caller decides by task what to do
    with them (the int8 recipes keep them at higher precision for detectors only: a classifier's
    Gemm holds a third of MobileNetV2's weights). A tail of more than ``limit`` nodes: [].
    -> NodeProtos, in graph order."""
    return _walk_tail(model, limit)[1]


def head_nodes(model, limit: int = 200) -> list[str]:
    """Names of the ``head`` nodes (for ORT's nodes_to_exclude; unnamed nodes are skipped)."""
    return [n.name for n in head(model, limit) if n.name]


def head_conv_names(model, limit: int = 200) -> list[str]:
    """Names of the ``head_convs`` (for nodes_to_exclude / ignored scopes)."""
    return [n.name for n in head_convs(model, limit) if n.name]


def head_outputs(model, limit: int = 200) -> set[str]:
    """The tensors the ``head`` nodes produce (to find them again after another converter)."""
    return {o for n in head(model, limit) for o in n.output}


def keep_float(value, task: str | None) -> tuple[bool, bool]:
    """The ``keep_float`` option of the ONNX-graph runtimes (onnx, intel, jetson/x86-gpu), named and
    valued as on mnn/rpi/executorch/rknn: ``auto`` (the decode tail after the last compute op stays
    float, and for a detector also the last conv of each head branch), ``tail`` (the tail only) or
    ``none`` (every op int8). -> (tail float?, head convs float?); any other value: a usage error."""
    mode = str(value).lower()
    if mode not in ("auto", "tail", "none"):
        fail("usage", f"option keep_float={value!r} is not one of auto, tail, none")
    return mode != "none", mode == "auto" and task == "detect"


def quant_op_types(value, task: str | None) -> str:
    """The ``quant_op_types`` option of onnx and intel: ``auto`` ("compute" for a probability map, task
    "map", else "all"), ``all`` or ``compute`` (int8 on the compute ops only). -> "all" | "compute";
    any other value: a usage error."""
    mode = str(value).lower()
    if mode not in ("auto", "all", "compute"):
        fail("usage", f"option quant_op_types={value!r} is not one of auto, all, compute")
    return ("compute" if task == "map" else "all") if mode == "auto" else mode


def task_kind() -> str | None:
    """The source step's task (work/source/task.json: "detect", "classify", "map", ...), None when it
    wrote none: what the int8 recipes decide the head convs by."""
    import json

    from ekit import task as ekit_task

    path = ekit_task.task_file()
    try:
        return json.loads(path.read_text()).get("task") if path.is_file() else None
    except (OSError, ValueError):
        return None


def _fixed_input(model, input_shape):
    """A copy of ``model`` with its first input's dims set to ``input_shape`` (symbolic dims: a
    batch of 1 when not given)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    first = True
    for v in m.graph.input:
        if v.name in inits:
            continue
        dims = v.type.tensor_type.shape.dim
        for k, d in enumerate(dims):
            if first and input_shape is not None and k < len(input_shape):
                d.Clear()
                d.dim_value = int(input_shape[k])
            elif not d.HasField("dim_value") and k == 0:
                d.Clear()
                d.dim_value = 1
        first = False
    del m.graph.value_info[:]
    return m


def macs(model, input_shape=None) -> dict:
    """Multiply-accumulates per image of every Conv/ConvTranspose/Gemm/MatMul (by node name, else
    its first output), from inferred shapes; ``input_shape`` fixes the first input's dims (a model
    with symbolic H/W needs it for true counts: an unknown dim counts 1)."""
    import onnx

    m = _fixed_input(model, input_shape)
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:
        pass
    shapes = {}
    for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        shapes[v.name] = [d.dim_value if d.dim_value > 0 else 1 for d in v.type.tensor_type.shape.dim]
    for i in m.graph.initializer:
        shapes[i.name] = list(i.dims)
    dq_src = {n.output[0]: n.input[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    res = {}
    for n in m.graph.node:
        if n.op_type not in COMPUTE_OPS:
            continue
        out, a = shapes.get(n.output[0]), shapes.get(n.input[0])
        w = None
        if len(n.input) > 1:
            w = shapes.get(n.input[1]) or shapes.get(dq_src.get(n.input[1], ""))
        count = 0
        if out and w:
            if n.op_type == "Conv":
                count = int(np.prod(out[1:])) * int(np.prod(w[1:]))
            elif n.op_type == "ConvTranspose":
                count = int(np.prod(a[1:])) * int(np.prod(w[1:])) if a else 0
            elif n.op_type == "Gemm":
                trans_b = any(at.name == "transB" and at.i for at in n.attribute)
                count = int(np.prod(out[1:])) * int(w[1] if trans_b else w[0])
            else:  # MatMul: output elements x K
                count = int(np.prod(out[1:])) * int(a[-1] if a else 0)
        res[n.name or n.output[0]] = count
    return res


def int8_compute_nodes(qdq_model) -> set[str]:
    """The compute nodes of a QDQ model that run int8: their data input AND their weight come out
    of a DequantizeLinear (what ORT / TensorRT fuse into an integer kernel)."""
    dq = {n.output[0] for n in qdq_model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name or n.output[0] for n in qdq_model.graph.node
            if n.op_type in COMPUTE_OPS and len(n.input) > 1 and n.input[0] in dq and n.input[1] in dq}


def float_compute_nodes(qdq_model) -> list[str]:
    """The compute nodes of a QDQ model that do NOT run int8 (``int8_compute_nodes``' complement)."""
    q = int8_compute_nodes(qdq_model)
    return [n.name or n.output[0] for n in qdq_model.graph.node
            if n.op_type in COMPUTE_OPS and (n.name or n.output[0]) not in q]


def int8_mac_fraction(model, float_node_names=None, input_shape=None) -> float:
    """The fraction of the Conv/Gemm/MatMul multiply-accumulates that run int8 (the issue's goal:
    >= 0.85). ``float_node_names`` None: ``model`` is the QDQ model and it is read off it
    (``int8_compute_nodes``); given: ``model`` is the float source and every compute node but those
    is taken as int8. A model without compute nodes: 1.0."""
    table = macs(model, input_shape)
    total = sum(table.values())
    if not total:
        return 1.0
    if float_node_names is None:
        q = int8_compute_nodes(model)
        return sum(v for k, v in table.items() if k in q) / total
    floats = set(float_node_names)
    return (total - sum(v for k, v in table.items() if k in floats)) / total


def ensure_opset(model, minimum: int = 13):
    """Upgrade the default-domain opset to ``minimum`` (per-channel QDQ needs DequantizeLinear's
    ``axis``, opset 13). -> (model, note or None); raises ValueError when the converter cannot."""
    import onnx
    from onnx import version_converter

    current = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if current >= minimum:
        return model, None
    try:
        upgraded = version_converter.convert_version(model, minimum)
        onnx.checker.check_model(upgraded)
    except Exception as e:  # the converter lacks an adapter for some op
        raise ValueError(f"opset {current} -> {minimum} failed: {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}") from None
    return upgraded, f"opset upgraded {current} -> {minimum} (per-channel int8 needs opset 13)"
