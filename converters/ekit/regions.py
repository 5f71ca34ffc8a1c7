"""Int8 recovery on the unit that breaks: quantization REGIONS (issue 19), for any runtime whose int8 is
a Q/DQ ONNX model (onnx: ONNX Runtime QDQ; jetson / x86-gpu: modelopt explicit Q/DQ).

A region is one activation tensor's QuantizeLinear and the DequantizeLinear(s) behind it. Dropping it
(``drop_regions``: consumers read the float tensor) is activation-only fallback: no re-calibration,
the other scales stay, the weights stay int8 (a Conv whose input region is dropped runs in float with
its dequantized weights: ``int8_mac_fraction`` counts it). Keeping a Conv float instead leaves the
Q/DQ on the tensors around it and un-fuses Conv + activation, the wrong unit (the issue's HardSwish
classifier got worse with every float Conv).

The search (``search``) looks at what the task metric sees, cheaply, then verifies a few:
1. local noise of every region, one run of the int8 model on a few calibration images (the relative
   error its own Q/DQ adds: ||DQ(Q(x)) - x||^2 / ||x||^2);
2. the top ``candidates`` by noise and the regions feeding the head convs (``ekit_onnx.head_convs``),
   each dropped alone, scored by ``task_proxy`` against the float
   model's outputs on those images: a detector counts the anchors whose score crosses the deployment
   threshold int8 vs float (plus the score change weighted by closeness to it), a probability map the
   pixels crossing its foreground threshold (per source foreground pixel), a classifier its top-1
   flips and probability change, anything else 1 - cosine; one run per candidate;
3. the real metric (``ekit.recover.measure`` on the reference images, the validate step's gate) on the
   top-1, top-2, ... regions by proxy gain, at most ``verify`` tries; the first try that passes wins,
   else the best one, and never one that scores below plain int8.
"""

from __future__ import annotations

import json
import time

import numpy as np

import ekit
from .keep_float import MIN_INT8_MACS

COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def qdq_regions(model) -> list[dict]:
    """The activation regions of a Q/DQ model: ``[{"tensor", "quantize", "dequantize": [...],
    "consumers": [op types], "compute": [compute node names fed by it]}]`` (weights, stored int8
    behind a DequantizeLinear alone, are not regions)."""
    inits = {i.name for i in model.graph.initializer}
    users: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    out = []
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in inits:
            continue
        dqs = [u for u in users.get(q.output[0], []) if u.op_type == "DequantizeLinear"]
        consumers = [c for d in dqs for c in users.get(d.output[0], [])]
        out.append({"tensor": q.input[0], "quantize": q.name or q.output[0],
                    "dequantize": [d.output[0] for d in dqs],
                    "consumers": sorted({c.op_type for c in consumers}),
                    "compute": [c.name or c.output[0] for c in consumers if c.op_type in COMPUTE]})
    return out


def drop_regions(model, tensors):
    """A copy of ``model`` without the Q/DQ of ``tensors`` (their consumers read the float tensor)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    wanted = set(tensors)
    users: dict[str, list] = {}
    for n in m.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    drop, rename = set(), {}
    for q in m.graph.node:
        if q.op_type == "QuantizeLinear" and q.input[0] in wanted:
            dqs = [u for u in users.get(q.output[0], []) if u.op_type == "DequantizeLinear"]
            if len(dqs) != len(users.get(q.output[0], [])):
                continue  # a quantized tensor read as int8 elsewhere: not a droppable region
            drop.add(id(q))
            for d in dqs:
                drop.add(id(d))
                rename[d.output[0]] = q.input[0]
    keep = [n for n in m.graph.node if id(n) not in drop]
    for n in keep:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    for o in m.graph.output:  # a DQ that was a graph output: the graph now ends on an Identity
        if o.name in rename:
            keep.append(onnx.helper.make_node("Identity", [rename[o.name]], [o.name]))
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m


def _session(model):
    import ekit_onnx

    return ekit_onnx.ort_session(model, optimization="none")


def _runs(model, x, names=None):
    """Outputs (or the named tensors) of ``model`` on ``x``, one image at a time, fake-quant semantics."""
    import onnx

    m = model
    if names:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        have = {o.name for o in m.graph.output}
        for t in names:
            if t not in have:
                m.graph.output.append(onnx.ValueInfoProto(name=t))
                have.add(t)
    sess = _session(m)
    want = names or [o.name for o in sess.get_outputs()]
    got = {n: [] for n in want}
    inp = sess.get_inputs()[0].name
    for i in range(len(x)):
        for n, y in zip(want, sess.run(want, {inp: x[i:i + 1].astype(np.float32)})):
            got[n].append(np.asarray(y))
    return [np.concatenate(got[n]) for n in want]


def region_noise(model, regions: list[dict], x) -> dict:
    """{tensor: relative error its own Q/DQ adds} on ``x`` (one run of the int8 model)."""
    pairs = [(r["tensor"], r["dequantize"][0]) for r in regions if r["dequantize"]]
    names = list(dict.fromkeys(t for p in pairs for t in p))
    vals = dict(zip(names, _runs(model, x, names)))
    out = {}
    for t, d in pairs:
        a, b = vals[t].astype(np.float64), vals[d].astype(np.float64)
        den = float((a * a).sum())
        out[t] = float(((a - b) ** 2).sum() / den) if den > 0 else 0.0
    return out


def read_task() -> dict | None:
    from . import task as ekit_task

    path = ekit_task.task_file()
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def task_proxy(task: dict | None, ref, out, window: float = 0.1) -> float:
    """How far ``out`` is from ``ref`` in what the task metric sees (0: the same; lower is better).
    detect: anchors whose best class score is on the other side of the score threshold, plus the score
    change weighted by exp(-((s - threshold) / window)^2); map: per image, the pixels on the other side of
    the foreground threshold plus the probability change weighted the same way, over the source's
    foreground pixels; classify: top-1 flips plus the mean total variation of the probabilities;
    otherwise the mean (1 - cosine) over images."""
    kind = (task or {}).get("task")
    ref = [np.asarray(r, np.float64) for r in ref]
    out = [np.asarray(o, np.float64) for o in out]
    if not all(np.isfinite(o).all() for o in out):
        return float("inf")
    if kind == "detect":
        from .measure import _one_image

        p = dict(task.get("params") or {})
        thr = float(p.get("score_threshold", 0.25))
        total = 0.0
        try:
            for i in range(len(ref[0])):
                _, s_ref, _ = _one_image(ref, i, p)
                _, s_out, _ = _one_image(out, i, p)
                total += float(np.sum((s_ref >= thr) != (s_out >= thr)))
                total += float(np.sum(np.abs(s_ref - s_out) * np.exp(-(((s_ref - thr) / window) ** 2))))
            return total
        except (ValueError, IndexError, KeyError):
            pass
    if kind == "map":  # pixels on the other side of the foreground threshold, plus the change near it
        p = dict(task.get("params") or {})
        thr = float(p.get("threshold", 0.3))
        r, o = ref[0].reshape(len(ref[0]), -1), out[0].reshape(len(out[0]), -1)
        if r.shape == o.shape:
            flips = np.sum((r > thr) != (o > thr), axis=1)
            near = np.sum(np.abs(r - o) * np.exp(-(((r - thr) / window) ** 2)), axis=1)
            # per image, over the source's foreground (at least 100 px): a small text line counts like a big one
            fg = np.maximum(np.sum(r > thr, axis=1), 100.0)
            return float(np.sum((flips + near) / fg))
    if kind == "classify":
        from .comparison import prob_tv  # the gate's own probability distance

        r, o = ref[0].reshape(len(ref[0]), -1), out[0].reshape(len(out[0]), -1)
        flips = float(np.sum(r.argmax(1) != o.argmax(1)))
        return flips + float(np.mean(prob_tv(r, o)))
    total = 0.0
    for r, o in zip(ref, out):
        a, b = r.reshape(len(r), -1), o.reshape(len(o), -1)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1), 1.0)
        total += float(np.mean(1 - cos))
    return total


def search(int8_model, float_model, calib, ref: dict, thresholds: dict, *, save, run, max_seconds: float,
           names=None, candidates: int = 8, verify: int = 3, images: int = 6, min_int8_macs: float = MIN_INT8_MACS,
           input_shape=None) -> dict:
    """The region search (module doc) of a Q/DQ ONNX model. ``save(model, k) -> artifact path``,
    ``run(path) -> outputs`` on the reference images (the runtime's own execution). No step starts past
    ``max_seconds``. -> {"passed", "regions", "metrics", "misses", "artifact", "score", "tries", "ranked",
    "budget_spent", "ranking_seconds"}."""
    import ekit_onnx

    t0 = time.perf_counter()
    x = np.asarray(calib[:images], np.float32)
    regions = qdq_regions(int8_model)
    heads = {n.name or n.output[0] for n in ekit_onnx.head_convs(float_model)}
    return rank_and_verify(
        regions, region_noise(int8_model, regions, x), heads, _runs(float_model, x), _runs(int8_model, x),
        lambda keys: _runs(drop_regions(int8_model, keys), x), lambda keys: drop_regions(int8_model, keys),
        ekit_onnx.macs(float_model, input_shape), set(ekit_onnx.float_compute_nodes(int8_model)), ref, thresholds,
        save=save, run=run, max_seconds=max_seconds, started=t0, names=names, candidates=candidates,
        verify=verify, min_int8_macs=min_int8_macs)


def rank_and_verify(regions: list[dict], noise: dict, heads: set, f_out, q_out, outputs_without, model_without,
                    table: dict, already: set, ref: dict, thresholds: dict, *, save, run, max_seconds: float,
                    started: float | None = None, names=None, candidates: int = 8, verify: int = 3,
                    min_int8_macs: float = MIN_INT8_MACS) -> dict:
    """Steps 2 and 3 of the search for any runtime's regions (``[{"tensor": key, "consumers", "compute"}]``,
    ``noise`` {key: local error}, ``heads`` the head-conv names whose regions are candidates whatever their
    noise): ``outputs_without(keys)`` -> the model's outputs on the ranking images with those regions
    dropped (``f_out`` / ``q_out``: the float / plain int8 outputs there), ``model_without(keys)`` -> the
    model to ``save``; ``table`` {compute name: MACs}, ``already`` the compute ops float before."""
    from . import recover as R

    t0 = time.perf_counter() if started is None else started
    task = read_task()
    base = task_proxy(task, f_out, q_out)
    total = sum(table.values()) or 1
    by_noise = sorted(regions, key=lambda r: -noise.get(r["tensor"], 0.0))
    # the regions feeding the head convs (what the task metric reads first) are candidates whatever their noise
    prior = [r for r in by_noise if set(r["compute"]) & heads]
    pool = list({r["tensor"]: r for r in prior + by_noise[:candidates]}.values())
    scored, spent = [], False
    for r in pool:
        if time.perf_counter() - t0 > max_seconds / 2:  # the ranking gets at most half the budget
            spent = True
            break
        proxy = task_proxy(task, f_out, outputs_without([r["tensor"]]))
        made_float = [c for c in r["compute"] if c not in already]
        scored.append(dict(r, noise=noise.get(r["tensor"], 0.0), proxy=proxy, gain=base - proxy,
                           macs=int(sum(table.get(c, 0) for c in made_float))))
    ranked = sorted([s for s in scored if s["gain"] > 0], key=lambda s: -s["gain"])
    t_rank = time.perf_counter() - t0
    ekit.log(f"recover: {len(regions)} quantization regions; task proxy plain {base:.3f}; best alone: "
             + (", ".join(f"{s['tensor']} {s['gain']:+.3f}" for s in ranked[:4]) or "none helps")
             + f" ({t_rank:.1f} s)")
    tries, best, chosen = [], None, []
    for s in ranked:
        if len(tries) >= verify:
            break
        floats = set(already) | {n for c in chosen for n in c["compute"]} | set(s["compute"])
        share = (total - sum(table.get(c, 0) for c in floats)) / total
        if share < min_int8_macs:
            continue  # this region would leave less than min_int8_macs of the MACs int8
        estimate = max([t["seconds"] for t in tries], default=0.0)
        if tries and time.perf_counter() - t0 + estimate > max_seconds:
            spent = True
            break
        chosen.append(s)
        t = time.perf_counter()
        artifact = save(model_without([c["tensor"] for c in chosen]), len(chosen))
        row = R.attempt(ref, run(artifact), names, thresholds, t, f"{len(chosen)} region(s) without Q/DQ",
                        regions=[c["tensor"] for c in chosen], artifact=artifact, int8_mac_share=round(share, 4))
        tries.append(row)
        best = R.better(best, row)
        if row["passed"]:
            break
    res = dict(best or {"passed": False, "regions": [], "metrics": {}, "misses": [], "artifact": None,
                        "score": None, "int8_mac_share": None})
    res.update(budget_spent=spent, ranking_seconds=round(t_rank, 2), proxy_plain=base,
               ranked=[{k: (round(v, 6) if isinstance(v, float) else v) for k, v in s.items()
                        if k in ("tensor", "consumers", "compute", "noise", "proxy", "gain", "macs")} for s in ranked[:10]],
               candidates=len(scored), regions_total=len(regions),
               tries=[{k: v for k, v in r.items() if k not in ("metrics", "artifact")}
                      | {"summary": R.text(r["metrics"]), "top1_agreement": r["metrics"].get("top1_agreement")}
                      for r in tries])
    return res


def record(found: dict, before: dict, thresholds: dict, seconds: float, int8_model=None, table=None) -> dict:
    """The ``recovery`` entry of a convert step's result for a region search (the shape of
    ``ekit.recover.record``: ``float_layers`` holds the regions, ``unit`` says so)."""
    from . import recover as R

    by = {r["tensor"]: r for r in found.get("ranked", [])}
    regions = found.get("regions") or []
    return {
        "attempted": True,
        "unit": "region",
        "passed": bool(found.get("passed")),
        "method": ("quantization regions (an activation's Q/DQ) ranked by their own quantization noise, the top "
                   f"{found.get('candidates')} of {found.get('regions_total')} scored by a task proxy (detector: scores "
                   "crossing the threshold int8 vs float; classifier: top-1 flips + probability change) on calibration "
                   "images, the best verified with the real metric; a dropped region's consumers read float"),
        "budget_spent": bool(found.get("budget_spent")),
        "float_layers": [{"layer": t, "op": "activation Q/DQ -> " + "/".join(by.get(t, {}).get("consumers", [])),
                          "sensitivity": round(by.get(t, {}).get("gain", 0.0), 6), "macs": by.get(t, {}).get("macs", 0),
                          "compute_float": by.get(t, {}).get("compute", [])} for t in regions],
        "int8_mac_share": found.get("int8_mac_share") if regions else 1.0,
        "before": {"misses": R.misses(before, thresholds), "summary": R.text(before),
                   "top1_agreement": before.get("top1_agreement"), "metrics": R.key_metrics(before)},
        "after": {"misses": found.get("misses") or [], "summary": R.text(found.get("metrics") or {}),
                  "top1_agreement": (found.get("metrics") or {}).get("top1_agreement"),
                  "metrics": R.key_metrics(found.get("metrics") or {})},
        "tries": found.get("tries", []),
        "seconds": round(seconds, 2),
        "sensitivity_seconds": found.get("ranking_seconds"),
        "proxy_plain": found.get("proxy_plain"),
        "top_sensitivities": [{"layer": r["tensor"], "sensitivity": r["gain"]} for r in found.get("ranked", [])],
    }
