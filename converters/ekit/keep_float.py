"""Which ops of a quantized model stay at higher precision (float/fp16), decided on the graph's
structure alone, the same way for every runtime's own graph (MNN vars, TFLite ops, a torch.fx
graph, ONNX nodes): pure Python, no framework import.

* the decode tail: the ops between the last compute ops (conv/matmul) and the graph outputs. In a
  detector it puts box coordinates (0..640 px) and class scores (0..1) into one tensor (the Concat),
  whose one int8 scale flattens the scores (TFLite #1695, XNNPACK's shared-scale ``cat``, RKNN);
* for a detector also the head: the compute ops at the tail's border (the last 1x1 conv of each head
  branch, ``cv2.*.2`` / ``cv3.*.2`` and the DFL conv in Ultralytics; under 3 % of YOLOv8n's MACs)
  and everything downstream of them. NVIDIA's yolov7 Q/DQ recipe, Qualcomm's mixed int16, Hailo,
  the Rockchip zoo and ESP-DL keep exactly these at higher precision (research: int8-detectors §0).

A classifier's tail (Gemm -> output) is empty: nothing stays float there.
"""

from __future__ import annotations


SHAPE_OPS = ("Shape", "Size", "Rank", "SHAPE", "RANK", "sym_size", "sym_numel")


def float_region(nodes, outputs, compute_ops, detector: bool, limit: int = 120) -> dict:
    """``nodes``: ``[(name, op_type, [input names], [output names])]`` of one graph (names of ops
    and tensors may coincide, as in MNN); ``outputs``: the graph's output tensor names;
    ``compute_ops``: the op types that are compute layers. -> ``{"tail": [op names], "head": [op
    names], "float": [op names, graph order]}``: ``head`` (detectors only) the compute ops at the
    tail's border, ``float`` the tail plus (detectors) the head and everything downstream of it.
    A "tail" of more than ``limit`` ops is no tail: all empty. The walk does not go through ops
    that read only a shape (``SHAPE_OPS``: a Flatten's shape arithmetic is not the data path)."""
    nodes = list(nodes)
    producer = {o: n for n in nodes for o in n[3]}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n[2]:
            consumers.setdefault(i, []).append(n)
    tail, border, seen, todo = [], [], set(), list(outputs)
    while todo:
        n = producer.get(todo.pop())
        if n is None or n[0] in seen:
            continue
        seen.add(n[0])
        if n[1] in compute_ops:
            border.append(n[0])
            continue
        tail.append(n[0])
        if n[1] not in SHAPE_OPS:
            todo.extend(n[2])
        if len(tail) > limit:
            return {"tail": [], "head": [], "float": []}
    keep = set(tail)
    head = []
    if detector and tail:
        head = [n[0] for n in nodes if n[0] in set(border)]
        todo, done = [n for n in nodes if n[0] in set(head) | keep], set()
        while todo:  # everything downstream of the head (the DFL between the head convs and the tail)
            n = todo.pop()
            if n[0] in done:
                continue
            done.add(n[0])
            keep.add(n[0])
            for o in n[3]:
                todo.extend(consumers.get(o, []))
    order = [n[0] for n in nodes if n[0] in keep]
    return {"tail": [n[0] for n in nodes if n[0] in set(tail)], "head": head, "float": order}


def elementwise(nodes, op_types) -> list:
    """Names of the ops of ``nodes`` (as ``float_region`` takes them) whose type is in ``op_types``, in
    graph order: what a probability map keeps float besides its tail (only its compute ops int8: on
    PP-OCRv4 det the Q/DQ between HardSwish, SE and the FPN's Resize/Add/Concat lost text regions)."""
    wanted = set(op_types)
    return [n[0] for n in nodes if n[1] in wanted]


# issue 19: never below 85 % of the MACs int8, counting what the recipe keeps float already (the head convs);
# the floor of every recovery (regions.rank_and_verify, the TFLite layer search: ``within_floor``)
MIN_INT8_MACS = 0.85


def within_floor(layers, macs: dict, already=(), floor: float = MIN_INT8_MACS) -> tuple[list, list]:
    """Walk ``layers`` (names, most wanted first) keeping each one that, float together with ``already``
    and the ones kept before it, still leaves at least ``floor`` of the MACs (``{op name: MACs}``) int8.
    -> (kept, skipped): every prefix of ``kept`` is within the floor (the top-k tries of a search)."""
    total = sum(macs.values())
    floating = set(already)
    kept, skipped = [], []
    for name in layers:
        share = mac_share(macs, floating | {name})
        if total and share < floor - 1e-12:
            skipped.append(name)
            continue
        kept.append(name)
        floating.add(name)
    return kept, skipped


def mac_share(macs: dict, floating) -> float | None:
    """Share of the multiply-accumulates (``{op name: MACs}``) in ops NOT in ``floating``."""
    total = sum(macs.values())
    if not total:
        return None
    kept = set(floating)
    return sum(v for k, v in macs.items() if k not in kept) / total
