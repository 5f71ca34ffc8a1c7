"""--recover for rknn int8 (issue 19): tensors of the toolkit's own hybrid-quantization config set
to float16, ranked by the noise of the toolkit's own int8 scales.

rknn-toolkit2's hybrid quantization calibrates once (``hybrid_quantization_step1`` writes
``model.quantization.cfg``: every activation tensor's scale and zero point, and the
``custom_quantize_layers`` that run in float16); ``hybrid_quantization_step2`` builds from that config
without calibrating again. A try here is one step2 with more tensors float16 plus the simulator on
the reference images: the unit is the tensor (its producer computes in float16 and the consumers read
it unquantized), the region unit of ekit/regions.py in the toolkit's own terms.

Ranking, one float ONNX Runtime run of the source on a few reference images: each int8 activation's
local noise under the config's own scale and zero point, ||DQ(Q(x)) - x||^2 / ||x||^2 (the noise
rknn's quantizer adds there). YOLOv8n: the top two are /model.1/conv and /model.2/cv1/conv's outputs
(pre-SiLU, a [-198, 190] range at scale 1.52): the same two regions the onnx target's task-aware
search keeps float. The real metric (the validate step's gate, ekit.recover.measure) verifies
k = 1, 2, 3, ... tensors, within ``recover_time_factor`` x the plain int8 time (its build plus its
simulator run) and above the int8 MAC floor (ekit.keep_float.MIN_INT8_MACS); a try that does not
score above plain int8 is never kept.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import ekit
from ekit import recover as ekit_recover
from ekit.keep_float import MIN_INT8_MACS

METHOD = ("rknn hybrid quantization: the activation tensors whose int8 scale adds the most noise "
          "(||DQ(Q(x)) - x||^2 / ||x||^2 under the toolkit's own scale, float activations of the source on "
          "4 reference images) set to float16 in the toolkit's quantization config, k = 1, 2, 3, ...; one "
          "calibration, each try a hybrid_quantization_step2 and a simulator run")


def read_cfg(path: Path) -> dict:
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(path.read_text())


def write_cfg(text: str, tensors, dest: Path) -> Path:
    """The config ``text`` with ``tensors`` added to custom_quantize_layers as float16, written to
    ``dest``. Edited as text: step2 refuses a config whose scales were re-printed ("is not allowed to
    be modified"), so every other line stays byte for byte."""
    lines = text.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if line.startswith("custom_quantize_layers:")), None)
    if at is None:
        lines[:0] = ["custom_quantize_layers:\n"]
        at = 0
    else:
        lines[at] = "custom_quantize_layers:\n"  # "custom_quantize_layers: {}" when step1 kept nothing float
    lines[at + 1:at + 1] = [f"    {t}: float16\n" for t in tensors]
    dest.write_text("".join(lines))
    return dest


def tensor_noise(onnx_path: Path, params: dict, x: np.ndarray, skip=()) -> list[dict]:
    """Per int8 activation of the config that the source graph names (per-tensor scales), the
    relative noise of its quantization on ``x``; most noisy first: [{"layer": tensor, "op":
    producer op type, "sensitivity": noise, "node": producer name}]."""
    import onnx

    import ekit_onnx

    model = onnx.load(str(onnx_path))
    producer = {o: n for n in model.graph.node for o in n.output}
    names = [t for t, p in params.items() if t in producer and t not in set(skip) and str(p.get("dtype")) == "int8"
             and len(p.get("scale") or []) == 1]
    have = {o.name for o in model.graph.output}
    for t in names:
        if t not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=t))
    sess = ekit_onnx.ort_session(model)
    wanted = [o.name for o in sess.get_outputs()]
    acts = {n: [] for n in wanted}
    for i in range(len(x)):
        for n, y in zip(wanted, sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1].astype(np.float32)})):
            acts[n].append(y)
    rows = []
    for t in names:
        a = np.concatenate(acts[t]).astype(np.float64)
        s, z = float(params[t]["scale"][0]), float(params[t]["zero_point"][0])
        if s <= 0:
            continue
        d = (np.clip(np.round(a / s) + z, -128, 127) - z) * s
        rows.append({"layer": t, "op": producer[t].op_type, "node": producer[t].name or t,
                     "sensitivity": float(((d - a) ** 2).sum() / max(float((a ** 2).sum()), 1e-12))})
    rows.sort(key=lambda r: -r["sensitivity"])
    return rows


ACTIVATIONS = ("Relu", "Sigmoid", "HardSwish", "HardSigmoid", "Clip", "LeakyRelu", "Tanh", "Mul", "Gelu")


def blocks(onnx_path: Path, rows: list[dict], params: dict) -> list[dict]:
    """The ranked tensors grouped into blocks, the unit a try sets to float16: a compute node's
    output and the activation outputs computed from it (YOLOv8n's Conv -> Sigmoid -> Mul is three
    tensors of the config). float16 on the conv output alone made YOLOv8n worse (mAP50 0.900 ->
    0.875: the SiLU output is quantized again at the same place); the block keeps the activation
    unquantized. -> rows ``{"layer": the compute output, "tensors": [...], "op", "node",
    "sensitivity": the block's noisiest tensor}``, noisiest first; a tensor outside any block is a
    block of its own."""
    import onnx

    model = onnx.load(str(onnx_path))
    producer = {o: n for n in model.graph.node for o in n.output}
    users: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)

    def root(t: str) -> str:
        n = producer.get(t)
        if n is not None and n.op_type in ACTIVATIONS:
            for i in n.input:
                if i in producer and producer[i].op_type in ekit_recover.COMPUTE:
                    return i
        return t

    def members(r: str) -> list[str]:
        acts = [u for u in users.get(r, []) if u.op_type in ACTIVATIONS]
        acts += [v for a in acts if a.op_type == "Sigmoid" for v in users.get(a.output[0], [])
                 if v.op_type == "Mul" and r in v.input]
        outs = [o for a in acts for o in a.output if o in params and o != r]
        return [r] + list(dict.fromkeys(outs))

    out: dict[str, dict] = {}
    for row in rows:
        r = root(row["layer"])
        if r not in out:
            n = producer.get(r)
            out[r] = {"layer": r, "tensors": [t for t in members(r) if t in params] or [row["layer"]],
                      "op": n.op_type if n is not None else row["op"], "node": (n.name or r) if n is not None else r,
                      "sensitivity": row["sensitivity"]}
        else:
            out[r]["sensitivity"] = max(out[r]["sensitivity"], row["sensitivity"])
    return sorted(out.values(), key=lambda b: -b["sensitivity"])


def recover(plain_session, plain_outs, ref: dict, thresholds: dict, opts, *, work_dir: Path, onnx_path: Path,
            float_convs, plain_seconds: float, step2, simulate, release):
    """-> (session, outputs, recovery record). ``step2(cfg_path) -> session`` builds from a config,
    ``simulate(session) -> outputs`` runs the reference images, ``release(session)`` frees one. The
    plain session comes back unless a try scored higher; every other session is released."""
    import onnx

    import ekit_onnx

    before = ekit_recover.measure(ref, plain_outs)
    missed = ekit_recover.misses(before, thresholds)
    if not missed:
        ekit.log("recover: the plain int8 model meets its thresholds; nothing set to float16")
        return plain_session, plain_outs, {"attempted": False, "passed": True, "float_layers": [],
                                           "int8_mac_share": None, "reason": "the plain int8 model meets its thresholds"}
    ekit.log(f"recover: plain int8 misses {'; '.join(missed)}; ranking the config's int8 tensors")
    t0 = time.perf_counter()
    cfg_text = (work_dir / "model.quantization.cfg").read_text()
    cfg = read_cfg(work_dir / "model.quantization.cfg")
    custom = dict(cfg.get("custom_quantize_layers") or {})
    ranked = blocks(onnx_path, tensor_noise(onnx_path, cfg["quantize_parameters"], ref["x"][:4], skip=custom),
                    {t: p for t, p in cfg["quantize_parameters"].items() if t not in custom})
    tensors_of = {b["layer"]: b["tensors"] for b in ranked}
    t_sens = time.perf_counter() - t0
    ekit.log("recover: noisiest blocks: " + ", ".join(f"{r['layer']} {r['sensitivity']:.4f}" for r in ranked[:5])
             + f" ({t_sens:.1f} s)")
    model = onnx.load(str(onnx_path))
    by_node = ekit_recover.macs(model)
    convs = {r["layer"]: r["node"] for r in ranked if r["node"] in by_node}
    mac_table = {t: by_node[n] for t, n in convs.items()}

    def share(tensors) -> float:
        return ekit_onnx.int8_mac_fraction(model, list(float_convs) + [convs[t] for t in tensors if t in convs])

    sessions = []

    def build(tensors):  # the blocks' roots
        names = [t for b in tensors for t in tensors_of[b]]
        session = step2(write_cfg(cfg_text, names, work_dir / f"model.recover.{len(tensors)}.cfg"))
        sessions.append(session)
        return session, simulate(session)

    budget = ekit_recover.time_budget(opts, plain_seconds, time.perf_counter() - t0)
    found = ekit_recover.search(ranked, build, lambda a: a[1], ref, thresholds,
                                int(opts["recover_max_float_layers"]), budget, share=share, min_share=MIN_INT8_MACS)
    record = ekit_recover.record(found, ranked, mac_table, before, thresholds, time.perf_counter() - t0, t_sens,
                                 method=METHOD)
    layers = found.get("float_layers") or []
    for row in record["float_layers"]:
        row["tensors"] = tensors_of[row["layer"]]
    record.update(unit="block", plain_int8_seconds=round(plain_seconds, 2), budget_seconds=round(budget, 2),
                  min_int8_macs=MIN_INT8_MACS, int8_mac_share=round(share(layers), 4),
                  plain_int8_mac_fraction=round(share([]), 4))
    kept = found.get("artifact") if found.get("artifact") and \
        found["score"] > ekit_recover.score(before, thresholds) else None
    for s in sessions:
        if kept is None or s is not kept[0]:
            release(s)
    for f in work_dir.glob("model.recover.*.cfg"):
        f.unlink()
    if kept is None:
        record["float_layers"], record["int8_mac_share"] = [], record["plain_int8_mac_fraction"]
        record["after"] = {"misses": missed, "summary": "no try did better than plain int8"}
        ekit.log("recover: no try did better than plain int8; plain int8 kept")
        return plain_session, plain_outs, record
    release(plain_session)
    ekit.log(f"recover: {'passes' if record['passed'] else 'still misses'} with {len(layers)} block(s) float16, "
             f"{record['int8_mac_share']:.1%} of MACs int8, {record['seconds']} s")
    return kept[0], kept[1], record
