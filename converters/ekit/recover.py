"""Int8 accuracy recovery, shared by the runtimes' convert steps (issue 11).

When an int8 model misses its artifact's thresholds, keep the layers that break it in float:

1. measure the int8 model against the source on the reference images with the SAME metrics the
   validate step computes (``ekit.compare`` + ``ekit_task.evaluate``) and the artifact's thresholds
   (``params["thresholds"]``, the ones the host gate applies);
2. rank the compute layers (Conv/Gemm/MatMul) by sensitivity: the error each layer ADDS, i.e.
   (1 - cosine) of its output minus (1 - cosine) of its input, int8 vs float activations on a
   few reference images. One run of each model with the intermediate tensors exposed: no extra
   quantization. (Measured against quantize-one-layer-at-a-time, which needs one calibration
   per layer: bench/results/recover_onnx_intel.md.)
3. re-quantize with the k most sensitive layers float, k = 1, 2, 3, ... up to
   ``recover_max_float_layers`` (the runtime reuses its calibration: a try costs one
   re-quantization and one run on the reference images); stop at the first configuration that passes; otherwise keep
   the best one reached (the host gate then refuses it and names the result).

A runtime supplies only ``build(float_layers) -> artifact`` and ``run(artifact) -> outputs``;
``search`` does the rest. Sensitivities come from ``onnx_sensitivity`` (any runtime whose int8
is a QDQ ONNX model, or that can quantize the same ONNX graph in ORT as a proxy).
"""

import time

import numpy as np

import ekit
from . import task as ekit_task

COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# --------------------------------------------------------------------------- gates

def gate(name: str) -> tuple[str, str]:
    """Threshold name -> (metric, "min"|"max"), as edgekiln/plan.py GATES reads them."""
    special = {"max_accuracy_drop": "accuracy_drop", "max_prob_tv": "prob_tv"}
    if name in special:
        return special[name], "max"
    if name.startswith("min_"):
        return name[4:], "min"
    return name, "max"


def misses(metrics: dict, thresholds: dict) -> list[str]:
    """The thresholds ``metrics`` miss (a metric that cannot be computed is not a miss here: the
    host gate reports it "not applicable")."""
    m = dict(metrics)
    if m.get("accuracy") is not None and m.get("source_accuracy") is not None:
        m["accuracy_drop"] = (m["source_accuracy"] - m["accuracy"]) * 100.0
    if m.get("task") in (None, "raw"):  # min_raw_cosine: only where no task metric judges
        m["raw_cosine"] = m.get("cosine")
    out = ["finite_outputs"] if m.get("nonfinite") else []
    for name, limit in (thresholds or {}).items():
        metric, kind = gate(name)
        v = m.get(metric)
        if v is None:
            continue
        slack = 1e-9 * max(1.0, abs(limit))
        if (v < limit - slack) if kind == "min" else (v > limit + slack):
            out.append(f"{name} {limit:g}: got {v:.4g}")
    return out


def text(m: dict) -> str:
    """One line of the metrics that decide (task metrics; top-1 agreement for a classifier)."""
    line = ekit_task.summary(m)
    if m.get("top1_agreement") is not None:
        line += f" top1_agreement {m['top1_agreement']:.4f}"
    return line


def measure(ref: dict, outputs, names=None) -> dict:
    """The validate step's metrics of ``outputs`` against the reference."""
    m = ekit.compare(ref["y"], outputs, ref["labels"])
    m.update(ekit_task.evaluate(ref, outputs, names))
    return m


def score(metrics: dict, thresholds: dict) -> float:
    """How close to passing (0: passes; higher is better): minus the summed relative shortfall
    over the gates, value/limit below 1 for a min_ gate, limit/value for a max_ gate."""
    m = dict(metrics)
    if m.get("accuracy") is not None and m.get("source_accuracy") is not None:
        m["accuracy_drop"] = (m["source_accuracy"] - m["accuracy"]) * 100.0
    total = -1.0 if m.get("nonfinite") else 0.0
    for name, limit in (thresholds or {}).items():
        metric, kind = gate(name)
        v = m.get(metric)
        if v is None:
            continue
        if kind == "min":
            r = v / limit if limit else (1.0 if v >= 0 else 0.0)
        else:
            r = limit / v if v > limit else 1.0
        total += min(0.0, r - 1.0)
    return float(total)


# --------------------------------------------------------------------------- ONNX graphs

def macs(model) -> dict:
    """Multiply-accumulates per image of every named Conv/ConvTranspose/Gemm/MatMul of an ONNX
    model, from its (inferred) shapes. Unknown shapes count 0."""
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        pass
    shapes = {}
    for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in v.type.tensor_type.shape.dim]
        shapes[v.name] = dims
    for i in model.graph.initializer:
        shapes[i.name] = list(i.dims)
    res = {}
    for n in model.graph.node:
        if n.op_type not in COMPUTE:
            continue
        out, a = shapes.get(n.output[0]), shapes.get(n.input[0])
        w = shapes.get(n.input[1]) if len(n.input) > 1 else None
        count = 0
        if out and w:
            per_out = int(np.prod(out[1:]))
            if n.op_type == "Conv":
                count = per_out * int(np.prod(w[1:]))
            elif n.op_type == "ConvTranspose":
                count = int(np.prod(a[1:])) * int(np.prod(w[1:])) if a else 0
            elif n.op_type == "Gemm":
                trans_b = any(at.name == "transB" and at.i for at in n.attribute)
                count = int(np.prod(out[1:])) * int(w[1] if trans_b else w[0])
            else:  # MatMul: out elements x K
                count = int(np.prod(out[1:])) * int(a[-1] if a else 0)
        res[n.name or n.output[0]] = count
    return res


def int8_share(mac_table: dict, float_layers) -> float:
    total = sum(mac_table.values())
    kept = sum(v for k, v in mac_table.items() if k in set(float_layers))
    return 1.0 if not total else (total - kept) / total


def _expose(model, names):
    import onnx

    have = {o.name for o in model.graph.output}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in names:
        if t and t not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=t))
            have.add(t)
    return m


def _err(a, b) -> float:
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)
    return float(np.mean(1.0 - np.clip(cos, -1, 1)))


def added_error(layer: str, op: str, f_in, f_out, q_in, q_out) -> dict:
    """One layer's row of a sensitivity ranking from its input and output activations in the
    float (f_) and int8 (q_) model: the error it ADDS, (1 - cos) of its output minus that of its
    input (any runtime that can expose intermediate tensors)."""
    e_in, e_out = _err(f_in, q_in), _err(f_out, q_out)
    return {"layer": layer, "op": op, "sensitivity": max(0.0, e_out - e_in), "error_in": e_in, "error_out": e_out}


def onnx_sensitivity(float_model, int8_model, x: np.ndarray, images: int = 4, ops=COMPUTE) -> list[dict]:
    """Per compute layer, on ``images`` reference images: the error its int8 version adds,
    (1 - cos) of its output minus that of its input, int8 QDQ graph vs float graph (node names
    match: ORT's quantizer keeps them). -> [{"layer", "op", "sensitivity", "error_in",
    "error_out"}], most sensitive first."""
    import ekit_onnx

    fnodes = {n.name: n for n in float_model.graph.node if (ops is None or n.op_type in ops) and n.name}
    qnodes = {n.name: n for n in int8_model.graph.node if n.name in fnodes}
    pairs = [(name, fnodes[name], qnodes[name]) for name in fnodes if name in qnodes]
    xs = x[:images].astype(np.float32)

    def acts(model, tensors):
        m = _expose(model, tensors)
        sess = ekit_onnx.ort_session(m)
        names = [o.name for o in sess.get_outputs()]
        got = {n: [] for n in names}
        for i in range(len(xs)):
            for n, y in zip(names, sess.run(None, {sess.get_inputs()[0].name: xs[i:i + 1]})):
                got[n].append(y)
        return {n: np.concatenate(v) for n, v in got.items()}

    fa = acts(float_model, [t for _, f, _ in pairs for t in (f.input[0], f.output[0])])
    qa = acts(int8_model, [t for _, _, q in pairs for t in (q.input[0], q.output[0])])
    rows = [added_error(name, f.op_type, fa[f.input[0]], fa[f.output[0]], qa[q.input[0]], qa[q.output[0]])
            for name, f, q in pairs]
    rows.sort(key=lambda r: -r["sensitivity"])
    return rows


def rank(rows: list[dict], mac_table: dict, by: str = "per_mac") -> list[dict]:
    """The order layers are kept float in. "sensitivity": the error each adds, largest first.
    "per_mac": that error per multiply-accumulate, largest first: the cheapest fix first, so a
    model that passes keeps the most MACs (and weights) int8 (bench/results/recover_onnx_intel.md:
    MobileNetV2 passes with 98.8 % of MACs int8 instead of 84.9 %). A layer whose MACs are
    unknown (0) comes after the ones that are known."""
    if by == "sensitivity":
        return sorted(rows, key=lambda r: -r["sensitivity"])
    if by != "per_mac":
        raise ValueError(f"recover_rank {by!r}: use per_mac or sensitivity")
    return sorted(rows, key=lambda r: (not mac_table.get(r["layer"]),
                                       -r["sensitivity"] / max(1, mac_table.get(r["layer"]) or 1)))


# --------------------------------------------------------------------------- search

def schedule(limit: int, kind: str = "linear") -> list[int]:
    """How many layers each try keeps float. "linear": 1, 2, 3, ... ``limit`` (one more each try:
    for a runtime whose try is cheap, and the fewest float layers keep the most MACs int8).
    "doubling": 1, 2, 4, 8, ... and ``limit`` last (a runtime whose try is a full re-quantization:
    few tries reach many layers)."""
    limit = max(0, limit)
    if kind == "linear":
        return list(range(1, limit + 1))
    out, k = [], 1
    while k < limit:
        out.append(k)
        k *= 2
    return out + [limit] if limit else out


def time_budget(opts, plain_seconds: float | None, spent: float) -> float:
    """Seconds left for tries: ``recover_max_seconds``, and, with the plain int8 time known, no more
    than ``recover_time_factor`` x the plain int8 time in all (``spent``: the recovery so far, e.g.
    the ranking). The issue's goal is recovery <= 3x the plain build; every target's default is 3."""
    budget = float(opts["recover_max_seconds"])
    if plain_seconds:
        budget = min(budget, (float(opts["recover_time_factor"]) - 1.0) * plain_seconds - spent)
    return max(0.0, budget)


def attempt(ref: dict, outputs, names, thresholds: dict, started: float, what: str, **row) -> dict:
    """One recovery try measured with the gates' metrics: ``row`` plus metrics, misses, passed,
    score and seconds (since ``started``); logged as ``recover: <what> -> ...``."""
    m = measure(ref, outputs, names)
    miss = misses(m, thresholds)
    row.update(metrics=m, misses=miss, passed=not miss, score=score(m, thresholds),
               seconds=round(time.perf_counter() - started, 2))
    ekit.log(f"recover: {what} -> {text(m)}; {'passes' if not miss else 'misses ' + '; '.join(miss)}")
    return row


def better(best: dict | None, row: dict) -> dict:
    """The try to keep: a passing one, else the higher score (the first of equals)."""
    return row if best is None or row["passed"] or row["score"] > best["score"] else best


def search(ranked: list[dict], build, run, ref: dict, thresholds: dict, limit: int,
           max_seconds: float, names=None, order: str = "linear", first_try_seconds: float | None = None,
           share=None, min_share: float | None = None) -> dict:
    """Re-quantize with the top-k ``ranked`` layers float (``build(layers) -> artifact``), measure
    (``run(artifact) -> outputs``), stop at the first pass or the budget: no try starts that would
    end past ``max_seconds`` (its length estimated from the longest try so far, the first from
    ``first_try_seconds``; without an estimate the first try always runs). -> {"passed",
    "float_layers", "metrics", "misses", "artifact", "tries": [...], "budget_spent"} for the
    passing try, else for the best one. ``share(layers)``: the share of MACs int8 with those layers
    float (each try records it); no try starts below ``min_share`` (the floor, keep_float.MIN_INT8_MACS)."""
    t0, tries, best, spent = time.perf_counter(), [], None, False
    for k in schedule(min(limit, len(ranked)), order):
        estimate = max([r["seconds"] for r in tries], default=first_try_seconds or 0.0)
        if (tries or first_try_seconds) and time.perf_counter() - t0 + estimate > max_seconds:
            ekit.log(f"recover: time budget {max_seconds:.1f} s: no room for another try after {len(tries)} "
                     f"(one takes ~{estimate:.1f} s)")
            spent = True
            break
        layers = [r["layer"] for r in ranked[:k]]
        extra = {} if share is None else {"int8_mac_share": round(share(layers), 4)}
        if min_share is not None and extra and extra["int8_mac_share"] < min_share:
            ekit.log(f"recover: {k} layer(s) float would leave {extra['int8_mac_share']:.1%} of MACs int8, "
                     f"below the {min_share:.0%} floor: no such try")
            break
        t = time.perf_counter()
        artifact = build(layers)
        row = attempt(ref, run(artifact), names, thresholds, t, f"{k} layer(s) float",
                      float_layers=layers, artifact=artifact, **extra)
        tries.append(row)
        best = better(best, row)
        if row["passed"]:
            break
    return dict(best or {"passed": False, "float_layers": [], "metrics": {}, "misses": [],
                         "artifact": None}, budget_spent=spent,
                tries=[{k: v for k, v in r.items() if k not in ("metrics", "artifact")}
                       | {"summary": text(r["metrics"]), "top1_agreement": r["metrics"].get("top1_agreement")}
                       for r in tries])


GATE_KEYS = ("det_map50", "det_map50_low", "det_band_f1", "det_band_f1_low", "det_f1", "top1_agreement",
             "top1_agreement_low", "prob_tv", "region_f1", "region_f1_low", "map_iou", "cosine")


def key_metrics(m: dict) -> dict:
    """The gate metrics of a measurement (what a recovery record keeps of plain int8 and of its best try)."""
    return {k: m.get(k) for k in GATE_KEYS if m.get(k) is not None}


def record(result: dict, ranked: list[dict], mac_table: dict, before: dict, thresholds: dict,
           seconds: float, sensitivity_seconds: float, method: str | None = None) -> dict:
    """The ``recovery`` entry of the convert step's result (the manifest carries it)."""
    sens = {r["layer"]: r for r in ranked}
    layers = result.get("float_layers") or []
    return {
        "attempted": True,
        "passed": bool(result.get("passed")),
        "method": method or "per-layer output error (int8 vs float activations), top-k kept float, k = 1, 2, 3, ...",
        "budget_spent": bool(result.get("budget_spent")),
        "float_layers": [{"layer": n, "op": sens[n]["op"], "sensitivity": round(sens[n]["sensitivity"], 6),
                          "macs": mac_table.get(n, 0)} for n in layers],
        "int8_mac_share": round(int8_share(mac_table, layers), 4),
        "total_macs": int(sum(mac_table.values())),
        "before": {"misses": misses(before, thresholds), "summary": text(before),
                   "top1_agreement": before.get("top1_agreement"), "metrics": key_metrics(before)},
        "after": {"misses": result.get("misses") or [], "summary": text(result.get("metrics") or {}),
                  "top1_agreement": (result.get("metrics") or {}).get("top1_agreement"),
                  "metrics": key_metrics(result.get("metrics") or {})},
        "tries": result.get("tries", []),
        "seconds": round(seconds, 2),
        "sensitivity_seconds": round(sensitivity_seconds, 2),
        "top_sensitivities": [{"layer": r["layer"], "sensitivity": round(r["sensitivity"], 6)} for r in ranked[:10]],
    }
