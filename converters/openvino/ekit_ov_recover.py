"""ekit_ov_recover — the intel target's int8 recovery (--recover): the measure / gate / record around
both units — regions (``recover_unit = "region"``, the default: activation FakeQuantizes dropped,
ekit_ov_regions) and layers (which OpenVINO ops cost the most accuracy, and NNCF re-quantizations with
the chosen ones kept float (ignored_scope), by the shared search of ekit.recover). ``ov`` / ``nncf`` are
passed in (importable without OpenVINO)."""

from __future__ import annotations

import time

import numpy as np

import ekit
import ekit_ov

# --------------------------------------------------------------------------- int8 recovery

COMPUTE = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")


def compute_ops(model) -> dict:
    """{friendly name: op} of the model's Convolution/GroupConvolution/ConvolutionBackpropData/
    MatMul ops (the names NNCF's ignored_scope takes)."""
    return {op.get_friendly_name(): op for op in model.get_ordered_ops() if op.get_type_name() in COMPUTE}


def macs(model) -> dict:
    """{friendly name: multiply-accumulates per image} of the compute ops, from static shapes
    (a dynamic dimension counts 1)."""
    def dims(port):
        ps = port.get_partial_shape()
        return [d.get_length() if d.is_static else 1 for d in ps] if ps.rank.is_static else []

    res = {}
    for name, op in compute_ops(model).items():
        out, w, a = dims(op.output(0)), dims(op.input(1)), dims(op.input(0))
        kind = op.get_type_name()
        if kind == "Convolution":  # weights [Co, Ci, k...]
            n = int(np.prod(out[1:])) * int(np.prod(w[1:])) if out and w else 0
        elif kind == "GroupConvolution":  # weights [G, Co/G, Ci/G, k...]
            n = int(np.prod(out[1:])) * int(np.prod(w[2:])) if out and w else 0
        elif kind == "ConvolutionBackpropData":  # weights [Ci, Co, k...]: every input element
            n = int(np.prod(a[1:])) * int(np.prod(w[1:])) if a and w else 0
        else:  # MatMul: output elements x the reduced dimension
            ta = bool(op.get_attributes().get("transpose_a"))
            k = (a[-2] if ta else a[-1]) if len(a) >= 2 else (a[-1] if a else 0)
            n = int(np.prod(out[1:])) * int(k) if out else 0
        res[name] = n
    return res


def sensitivity(ov, float_model, int8_model, x: np.ndarray, images: int = 4) -> list[dict]:
    """ekit_recover's per-layer ranking for an OpenVINO int8 model: for each compute op of the
    float model that the NNCF-quantized one holds under the same friendly name, the error it adds
    ((1 - cos) of its output minus that of its input, int8 vs float activations) on ``images``
    reference images, both models run at f32 with the ops' inputs and outputs exposed.
    -> [{"layer", "op", "sensitivity", "error_in", "error_out"}], most sensitive first."""
    from ekit import recover as ekit_recover

    fops, qops = compute_ops(float_model), compute_ops(int8_model)
    names = [n for n in fops if n in qops]
    xs = x[:images].astype(np.float32)

    def acts(model, ops):
        m = model.clone()  # ports named (op friendly name, output index) to reach the clone's
        keys = []
        for n in names:
            src = ops[n].input_value(0)
            keys += [(src.get_node().get_friendly_name(), src.get_index()), (n, 0)]
        unique = list(dict.fromkeys(keys))
        results = [o.get_node().get_friendly_name() for o in m.outputs]
        added = m.add_outputs(unique)  # a port exposed twice (or already an output) has one Result
        results = [o.get_node().get_friendly_name() for o in m.outputs]
        where = {k: results.index(o.get_node().get_friendly_name()) for k, o in zip(unique, added)}
        compiled = ekit_ov.compile_model(ov, ov.Core(), m, "CPU", "f32")
        req = compiled.create_infer_request()
        got = {k: [] for k in unique}
        for i in range(len(xs)):
            res = req.infer({0: xs[i:i + 1]})
            for k in unique:
                got[k].append(np.asarray(res[compiled.outputs[where[k]]]).copy())
        return [np.concatenate(got[k]) for k in keys]

    fa, qa = acts(float_model, fops), acts(int8_model, qops)
    rows = []
    for i, name in enumerate(names):
        rows.append(ekit_recover.added_error(name, fops[name].get_type_name(), fa[2 * i], fa[2 * i + 1],
                                             qa[2 * i], qa[2 * i + 1]))
    rows.sort(key=lambda r: -r["sensitivity"])
    return rows


def recover(ov, nncf, float_model, int8_model, calib_ds, kwargs: dict, params: dict, options, src,
            plain_seconds: float, calib=None, head_convs=()):
    """--recover for the intel target: when ``int8_model`` misses the artifact's thresholds on the
    reference images (the validate step's metrics, f32 for the float parts), rank the compute ops
    (``sensitivity``), re-quantize ``float_model`` with NNCF's ``ignored_scope`` holding the top-k
    on the same calibration (``kwargs``: the plain build's own arguments) and stop at the first
    passing k or the budget (ekit_recover.search). ``recover_unit = "region"`` (the default) instead
    drops activation FakeQuantizes from ``int8_model`` (ekit_ov_regions; ranked on ``calib``, the
    head convs' branches first): no re-quantization. -> (the model to ship, the manifest's
    ``recovery``)."""
    from ekit import recover as ekit_recover

    if options["recover_rank"] not in ("per_mac", "sensitivity"):
        ekit.fail("usage", f"option recover_rank={options['recover_rank']!r} is not one of per_mac, sensitivity")
    unit = str(options.get("recover_unit") or "layer")
    if unit not in ("region", "layer"):
        ekit.fail("usage", f"option recover_unit={unit!r} is not one of region, layer")
    t0 = time.perf_counter()
    ref = ekit.read_reference(src / "reference.npz")
    thresholds = params.get("thresholds") or {}
    names = [o.get_any_name() for o in float_model.outputs]

    def run(model):
        compiled = ekit_ov.compile_model(ov, ov.Core(), model, "CPU", "f32")
        return ekit_ov.run_batches(compiled.create_infer_request(), ref["x"], 1, len(compiled.outputs),
                           list(compiled.outputs))

    before = ekit_recover.measure(ref, run(int8_model), names)
    missed = ekit_recover.misses(before, thresholds)
    if not missed:
        ekit.log("recover: the plain int8 model meets its thresholds; nothing kept float")
        return int8_model, {"attempted": False, "passed": True, "float_layers": [], "int8_mac_share": None,
                            "reason": "the plain int8 model meets its thresholds"}
    ekit.log(f"recover: plain int8 misses {'; '.join(missed)}; ranking {unit}s")
    t1 = time.perf_counter()
    factor = float(options["recover_time_factor"])
    if unit == "region":
        import ekit_ov_regions
        from ekit import regions as ekit_regions

        budget = min(float(options["recover_max_seconds"]), max(0.0, (factor - 1.0) * plain_seconds - (t1 - t0)))
        found = ekit_ov_regions.search(ov, int8_model, float_model, calib, ref, thresholds, head_convs,
                                       max_seconds=budget, names=names)
        rec = ekit_regions.record(found, before, thresholds, time.perf_counter() - t1)
        rec.update(plain_int8_seconds=plain_seconds, budget_seconds=round(budget, 2),
                   plain_int8_mac_fraction=round(ekit_ov.int8_mac_fraction(int8_model)[0], 4))
        model, _ = _never_worse(found, int8_model, rec, before, thresholds, missed, "region(s)")
        return model, rec
    base = kwargs.get("ignored_scope")
    ignored = set(base.names) if base is not None else set()
    mac_table = macs(float_model)
    ranked = ekit_recover.rank([r for r in sensitivity(ov, float_model, int8_model, ref["x"]) if r["layer"] not in ignored],
                               mac_table, options["recover_rank"])
    t_sens = time.perf_counter() - t1
    ekit.log("recover: most sensitive: " + ", ".join(f"{r['layer']} {r['sensitivity']:.4f}" for r in ranked[:5])
             + f" ({t_sens:.1f} s)")

    def build(layers):
        scope = nncf.IgnoredScope(names=sorted(ignored) + list(layers), patterns=base.patterns if base else [],
                                  types=base.types if base else [], validate=False)
        return nncf.quantize(float_model, calib_ds, **dict(kwargs, ignored_scope=scope))

    budget = min(float(options["recover_max_seconds"]), max(0.0, (factor - 1.0) * plain_seconds - (t1 - t0) - t_sens))
    found = ekit_recover.search(ranked, build, run, ref, thresholds, int(options["recover_max_float_layers"]),
                                budget, names, order="doubling", first_try_seconds=plain_seconds)
    rec = ekit_recover.record(found, ranked, mac_table, before, thresholds, time.perf_counter() - t1, t_sens,
                              method=f"per-layer output error (int8 vs float activations), ranked "
                                     f"{options['recover_rank']}; the top-k ops "
                                     "re-quantized float with NNCF ignored_scope, k = 1, 2, 4, 8, ... "
                                     "(each try is a full NNCF quantization)")
    rec.update(plain_int8_seconds=plain_seconds, budget_seconds=round(budget, 2))
    model, better = _never_worse(found, int8_model, rec, before, thresholds, missed, "layer(s)")
    if better:
        rec["ignored_scope"] = sorted(ignored) + list(found["float_layers"])
    return model, rec


def _never_worse(found, int8_model, rec, before, thresholds, missed, unit):
    """-> (the model to keep, whether it is the try): recovery's best try only when it scores better
    than plain int8, else plain int8 with a record that says so. Logs the outcome."""
    from ekit import recover as ekit_recover

    better = found.get("artifact") is not None and found["score"] > ekit_recover.score(before, thresholds)
    if not better:
        rec["float_layers"], rec["int8_mac_share"] = [], 1.0
        rec["after"] = {"misses": missed, "summary": "no try did better than plain int8"}
    ekit.log(f"recover: {'passes' if rec['passed'] else 'still misses'} with {len(rec['float_layers'])} "
             f"{unit} float, {rec['int8_mac_share']:.1%} of MACs int8, {rec['seconds']} s")
    return (found["artifact"] if better else int8_model), better
