"""Which order --recover tries layers float in (option recover_rank), measured: the same plain int8
model, the same per-layer sensitivities, two orders — "sensitivity" (the error a layer adds) and
"per_mac" (that error per multiply-accumulate: cheapest fix first) — each tried k = 1, 2, ...
(onnx, linear) or 1, 2, 4, 8, 16 (intel, doubling) until the artifact's gate passes.
Same options, calibration and reference images as the build (read from the kept job's step
params). Models: MobileNetV2 demo (gate min_top1_agreement 1.0) and YOLOv8n (onnx: min_det_f1 0.95 /
min_det_recall 0.9, its defaults; intel: min_det_f1 0.75 / min_det_recall 0.6, the gate the
integration test uses: NNCF int8 keeps 4 of 8 boxes, so 0.95 is out of reach for both orders).

    .venv/bin/python bench/recover_rank.py     -> bench/results/recover_rank.{json,md}
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from recover_onnx_intel import build, models  # noqa: E402

TRY = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
runtime, thresholds, orders = sys.argv[2], json.loads(sys.argv[3]), sys.argv[4].split(",")
import numpy as np
import ekit
from ekit import recover as ekit_recover
params = json.loads(next((ekit.work().parent / "steps").glob(f"*-{runtime}-int8-convert.json")).read_text())
opts = params["options"]
src = ekit.work() / "source"
calib, ref = np.load(src / "calib.npy"), ekit.read_reference(src / "reference.npz")
if runtime == "onnx":
    import os, onnx, ekit_onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    quant_pre_process(str(src / "model.onnx"), "pre.onnx", skip_symbolic_shape=False)
    model = onnx.load("pre.onnx")
    for i, n in enumerate(model.graph.node):
        n.name = n.name or f"{n.op_type}_{i}"
    onnx.save(model, "pre.onnx")
    head = ekit_onnx.head_nodes(model) if opts["keep_float"] != "none" else []
    Q = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    cache = {"calibration_cache_path": "calib.cache.json"}
    def build(layers):
        dest = f"try{len(layers)}.onnx"
        quantize_static("pre.onnx", dest, ekit_onnx.calibration_reader(model.graph.input[0].name, calib), **cache,
                        quant_format=QuantFormat.QDQ, per_channel=bool(opts["per_channel"]),
                        activation_type=Q[opts["quant_activation"]], weight_type=Q[opts["quant_weight"]],
                        calibrate_method=CalibrationMethod.Percentile, nodes_to_exclude=head + list(layers),
                        extra_options={"CalibPercentile": float(opts["calibration_percentile"])})
        return dest
    def run(path):
        return ekit_onnx.ort_run(ekit_onnx.ort_session(path), ref["x"].astype(np.float32))
    plain = build([])
    rows = [r for r in ekit_recover.onnx_sensitivity(model, onnx.load(plain), ref["x"]) if r["layer"] not in head]
    mac_table, names, sched = ekit_recover.macs(model), None, "linear"
    size = lambda a: os.path.getsize(a)
else:
    import openvino as ov, nncf, ekit_ov, ekit_ov_recover
    model = ov.convert_model(str(src / "model.onnx"))
    head = ekit_ov.head_names(model, src / "model.onnx") if opts["keep_float"] != "none" else []
    kw = ekit_ov.nncf_kwargs(nncf, ekit.Options(opts, ignored_scopes=list(opts["ignored_scopes"]) + head))
    kw["subset_size"] = min(int(opts["subset_size"]), len(calib))
    ds = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
    def build(layers):
        return nncf.quantize(model, ds, **dict(kw, ignored_scope=nncf.IgnoredScope(names=head + list(layers), validate=False)))
    def run(m):
        c = ekit_ov.compile_model(ov, ov.Core(), m, "CPU", "f32")
        return ekit_ov.run_batches(c.create_infer_request(), ref["x"], 1, len(c.outputs), list(c.outputs))
    plain = build([])
    rows = [r for r in ekit_ov_recover.sensitivity(ov, model, plain, ref["x"]) if r["layer"] not in head]
    mac_table, names, sched = ekit_ov_recover.macs(model), [o.get_any_name() for o in model.outputs], "doubling"
    size = lambda a: None
before = ekit_recover.measure(ref, run(plain), names)
out = {"plain": ekit_recover.text(before), "plain_misses": ekit_recover.misses(before, thresholds), "orders": {}}
for order in orders:
    ranked = ekit_recover.rank(rows, mac_table, order)
    tries = []
    for k in ekit_recover.schedule(min(int(sys.argv[5]), len(ranked)), sched):
        layers = [r["layer"] for r in ranked[:k]]
        t = time.perf_counter()
        art = build(layers)
        m = ekit_recover.measure(ref, run(art), names)
        miss = ekit_recover.misses(m, thresholds)
        tries.append({"k": k, "summary": ekit_recover.text(m), "passed": not miss, "size_bytes": size(art),
                      "int8_mac_share": ekit_recover.int8_share(mac_table, layers), "seconds": round(time.perf_counter() - t, 1),
                      "layers": layers})
        print(order, tries[-1]["k"], tries[-1]["summary"], tries[-1]["passed"], file=sys.stderr, flush=True)
        if not miss:
            break
    out["orders"][order] = tries
print(json.dumps(out))
"""

CASES = [("onnx", "mobilenet", {"min_top1_agreement": 1.0}, 10),
         ("onnx", "yolo", {"min_det_f1": 0.95, "min_det_recall": 0.9}, 12),
         ("intel", "yolo", {"min_det_f1": 0.75, "min_det_recall": 0.6}, 16)]


def main() -> None:
    from edgekiln.runners.local import LocalRunner

    res = {"command": "python bench/recover_rank.py", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = models(tmp)
        helpers = tmp / "helpers"  # the helpers alone: converters/torch/ would shadow torch
        from _common import flat_helpers

        flat_helpers(helpers)
        for runtime, key, thresholds, limit in CASES:
            label, model_args, photos, extra, _ = table[key]
            job = build(model_args, photos, tmp / f"{runtime}-{key}", "int8", [], runtime)
            python = LocalRunner().prepare("openvino" if runtime == "intel" else "onnx").ref
            proc = subprocess.run([python, "-c", TRY, str(helpers), runtime, json.dumps(thresholds),
                                   "sensitivity,per_mac", str(limit)], capture_output=True, text=True, cwd=job)
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            case = dict(json.loads(proc.stdout.strip().splitlines()[-1]), runtime=runtime, model=label,
                        gate=thresholds)
            res["cases"].append(case)
            (HERE / "results" / "recover_rank.json").write_text(json.dumps(res, indent=2) + "\n")
            (HERE / "results" / "recover_rank.md").write_text(markdown(res))
            print(f"{runtime} {label}: done", flush=True)


def markdown(res: dict) -> str:
    lines = ["# --recover: which order layers are tried float in (recover_rank)", "",
             f"`{res['command']}` ({res['date']}); same plain int8 model, same sensitivities, two orders.", ""]
    for c in res["cases"]:
        gate = ", ".join(f"{k} {v}" for k, v in c["gate"].items())
        lines += [f"## {c['runtime']}: {c['model']} — gate {gate}", "", f"Plain int8: {c['plain']}", "",
                  "| order | k float | result | passes | MACs int8 | size MB | try s |", "|---|---|---|---|---|---|---|"]
        for order, tries in c["orders"].items():
            for t in tries:
                size = "-" if t["size_bytes"] is None else f"{t['size_bytes'] / 1e6:.2f}"
                lines.append(f"| {order} | {t['k']} | {t['summary'].split(': ', 1)[-1]} | {'yes' if t['passed'] else 'no'} "
                             f"| {t['int8_mac_share']:.1%} | {size} | {t['seconds']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
