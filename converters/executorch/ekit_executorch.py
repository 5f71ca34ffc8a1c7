"""ExecuTorch helpers (images/executorch): the PyTorch module a .pte program is lowered from, the
XNNPACK lowering (fp32, fp16, int8 via PT2E with the XNNPACK quantizer) and the runtime.

PyTorch sources are lowered from the user's own module (``ekit_torch.load_model``). ONNX sources
go through onnx2torch; its graph does not torch.export as it is (measured on YOLOv8n: Reshape,
Resize and Slice take their shape/scales/starts as tensors and call ``.tolist()`` on them, a data-dependent value
torch.export refuses), so ``static_shapes`` runs the module once on the fixed input shape and
replaces those calls by the same ops with the recorded sizes baked in. Executorch programs have
fixed shapes anyway.
"""

from __future__ import annotations

import sys
import types

import numpy as np


def _torchvision_stand_in():
    """onnx2torch imports torchvision for its NMS and RoiAlign converters only. torchvision's wheel
    on the index is the CUDA build, which does not import beside the CPU torch wheel; a stand-in
    that refuses those two ops keeps every other converter usable (a model with NMS/RoiAlign fails
    with the message below)."""
    if "torchvision" in sys.modules:
        return
    tv = types.ModuleType("torchvision")
    tv.ops = types.ModuleType("torchvision.ops")

    def refuse(*args, **kwargs):
        raise NotImplementedError("NonMaxSuppression/RoiAlign inside the model: not supported by the "
                                  "ExecuTorch target (export the model without them)")

    tv.ops.nms = tv.ops.roi_align = tv.ops.box_convert = refuse
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.ops"] = tv.ops


def from_onnx(onnx_path, example):
    """ONNX -> torch.fx GraphModule (onnx2torch) with static Reshape/Resize sizes."""
    _torchvision_stand_in()
    import onnx
    from onnx2torch import convert

    module = convert(onnx.load(str(onnx_path))).eval()
    return static_shapes(module, example)


def static_shapes(gm, example):
    """Replace onnx2torch's Reshape/Resize/Slice calls that take their sizes as tensors by the
    same ops with the sizes they get on ``example`` (the fixed input shape) baked in."""
    import torch
    from onnx2torch.node_converters.reshape import OnnxReshape
    from onnx2torch.node_converters.resize import OnnxResize, OnnxResizeV10, _onnx_mode_to_torch_mode
    from onnx2torch.node_converters.slice import OnnxSlice, _do_slice, _get_slices

    def plain(v):
        return [plain(e) for e in v] if isinstance(v, (list, tuple)) else \
            slice(plain(v.start), plain(v.stop), plain(v.step)) if isinstance(v, slice) else \
            v if v is None or v is Ellipsis else int(v)

    seen = {}  # module name -> (args, output shape) of its call on the example

    def record(name):
        def hook(mod, args, out):
            seen[name] = ([a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args],
                          tuple(out.shape))
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in gm.named_modules()
             if isinstance(m, (OnnxReshape, OnnxResize, OnnxResizeV10, OnnxSlice))]
    with torch.no_grad():
        gm(example)
    for h in hooks:
        h.remove()
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_module" or node.target not in seen:
            continue
        mod, (args, shape) = gm.get_submodule(node.target), seen[node.target]
        with graph.inserting_after(node):
            if isinstance(mod, OnnxReshape):
                new = graph.call_function(torch.reshape, (node.args[0], shape))
            elif isinstance(mod, OnnxSlice):
                while len(args) < 5:
                    args.append(None)
                flip, pos, neg = _get_slices(*args[1:5])
                new = graph.call_function(_do_slice, (node.args[0], plain(flip), plain(pos), plain(neg)))
            else:
                inner = mod._resize if isinstance(mod, OnnxResizeV10) else mod
                mode = _onnx_mode_to_torch_mode(inner.onnx_mode, len(shape) - 2)
                new = graph.call_function(torch.nn.functional.interpolate, (node.args[0],),
                                          {"size": shape[2:], "mode": mode,
                                           "align_corners": inner.align_corners})
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.recompile()
    return gm


COMPUTE = ("conv2d", "conv_transpose2d", "linear", "matmul", "mm", "bmm", "addmm")


def _kind(node) -> str:
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def _where(node) -> str:
    """The source module a node of an exported graph came from (onnx2torch names them after the
    ONNX nodes), else the node's own name."""
    stack = node.meta.get("nn_module_stack") or {}
    return (list(stack.values())[-1][0] if stack else "") or node.name


def keep_float_region(graph, mode: str, task: str | None) -> dict:
    """The nodes of an exported graph that stay float: ``ekit.keep_float.float_region`` (mode
    "auto": a detector's decode tail + head convs and what follows them, else the decode tail;
    "tail"; "none")."""
    from ekit.keep_float import float_region

    if mode == "none":
        return {"tail": [], "head": [], "float": []}
    nodes = [(n.name, _kind(n), [a.name for a in n.all_input_nodes], [n.name]) for n in graph.nodes
             if n.op == "call_function"]
    outs = [a.name for n in graph.nodes if n.op == "output" for a in n.all_input_nodes]
    return float_region(nodes, outs, COMPUTE, mode == "auto" and task == "detect")


def quantize_pt2e(module, example, calib: np.ndarray, per_channel: bool, keep_float: str = "auto",
                  task: str | None = None):
    """int8 (PT2E, XNNPACK quantizer: int8 symmetric weights, int8 activations) calibrated on
    ``calib`` (float32, model layout, one sample a row). The nodes of ``keep_float_region`` get no
    quantization annotation (they run float in the .pte; XNNPACK's ``cat`` annotator would give
    the box/score Concat ONE shared scale, and XNNPACKQuantizer 1.5's set_module_name(.., None)
    asserts). -> (converted module, the region with module names)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = torch.export.export(module, (example,)).module()
    region = keep_float_region(graph.graph, keep_float, task)
    floats = set(region["float"])

    class KeepFloat(XNNPACKQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            for n in model.graph.nodes:
                if n.name in floats:
                    n.meta.pop("quantization_annotation", None)
            return model

    quantizer = KeepFloat()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    where = {n.name: _where(n) for n in graph.graph.nodes}
    named = {k: [where.get(v, v) for v in vals] for k, vals in region.items()}
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(calib.shape[0]):
            prepared(torch.from_numpy(np.ascontiguousarray(calib[i:i + 1])))
    return convert_pt2e(prepared), named


def lower(module, example):
    """torch.export -> to_edge_transform_and_lower(XnnpackPartitioner) -> .pte bytes, plus the
    count of delegated (XNNPACK) and portable (CPU fallback) calls."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(module, (example,))
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    calls = {"xnnpack": 0, "portable": 0}
    for node in edge.exported_program().graph.nodes:
        if node.op == "call_function":
            name = str(node.target)
            if "executorch_call_delegate" in name:
                calls["xnnpack"] += 1
            elif not name.startswith("<built-in") and "getitem" not in name:
                calls["portable"] += 1
    return edge.to_executorch().buffer, calls


def load(path):
    """The .pte's forward method in the ExecuTorch runtime (the Python bindings of the C++ runtime)."""
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(path)).load_method("forward")


def run(method, x: np.ndarray, dtype) -> list[np.ndarray]:
    """One sample at a time, as a user feeds it; outputs float32 stacked on axis 0."""
    import torch

    outs: list[list[np.ndarray]] = []
    for i in range(x.shape[0]):
        ys = method.execute([torch.from_numpy(np.ascontiguousarray(x[i:i + 1])).to(dtype)])
        if not outs:
            outs = [[] for _ in ys]
        for k, y in enumerate(ys):
            outs[k].append(y.float().numpy())
    return [np.concatenate(o, axis=0) for o in outs]
