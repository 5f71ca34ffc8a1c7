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


def head(model, limit: int = 80) -> list:
    """The nodes between the last compute layers (Conv/Gemm/MatMul) and the graph outputs: a
    detector's decode tail (sigmoid, box arithmetic, the Concat of boxes and scores).
    Quantizing that tail makes box coordinates (0..640) and class scores (0..1) share one int8
    scale, which crushes the scores; a classifier's tail (Gemm -> output) is empty. More than
    ``limit`` nodes: [] (not a small tail). -> NodeProtos."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found, todo, seen = [], [o.name for o in model.graph.output], set()
    while todo:
        name = todo.pop()
        n = producer.get(name)
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if n.op_type in COMPUTE_OPS:
            continue
        found.append(n)
        todo.extend(i for i in n.input if i)
        if len(found) > limit:
            return []
    return found


def head_nodes(model, limit: int = 80) -> list[str]:
    """Names of the ``head`` nodes (for ORT's nodes_to_exclude; unnamed nodes are skipped)."""
    return [n.name for n in head(model, limit) if n.name]


def head_outputs(model, limit: int = 80) -> set[str]:
    """The tensors the ``head`` nodes produce (to find them again after another converter)."""
    return {o for n in head(model, limit) for o in n.output}


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
