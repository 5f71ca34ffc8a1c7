"""Which ONNX Runtime int8 settings keep the fp32 answers and give the speed-up?

Quantizes one fp32 ONNX image classifier with every combination of
  activations uint8 (U8S8) | int8 (S8S8)  x  calibration minmax | percentile | entropy
  x  last layer quantized | kept fp32
(static QDQ, quant_pre_process first, per-channel int8 weights — what converters/onnx_convert
does), then measures on held-out labelled image folders: top-1 agreement with fp32, accuracy,
min/mean cosine vs fp32, size, and CPU latency (median of N single-image runs, batch 1, all
variants interleaved round-robin so machine noise hits them alike).

Run in an environment with onnx + onnxruntime + numpy + pillow (images/onnx):

    python bench/onnx_quant_choices.py --model model.onnx --calib CALIB_DIR \
        --val VAL_DIR [--val VAL2_DIR ...] [--runs 50] [--threads 1]

Preprocessing follows the InputSpec options (default: ImageNet, 224, crop). Writes
bench/results/onnx_quant_choices.{json,md} (or --out PREFIX).
"""

from __future__ import annotations

ENV = 'onnx'  # the converter environment this study runs in (bench/_common.py, invoke bench)

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
from _common import flat_helpers  # noqa: E402

sys.path.insert(0, flat_helpers())  # the converter helpers, flat (as a job holds them)
import ekit  # noqa: E402
import ekit_onnx  # noqa: E402


def quantize(fp32: Path, out: Path, calib: np.ndarray, act: str, method: str, keep_last: bool,
             percentile: float) -> dict:
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    t = time.perf_counter()
    quant_pre_process(os.fspath(fp32), os.fspath(pre))
    m = onnx.load(os.fspath(pre))
    for i, n in enumerate(m.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    excluded = []
    if keep_last:
        producer = {o: n for n in m.graph.node for o in n.output}
        for go in m.graph.output:
            name = go.name
            for _ in range(8):
                n = producer.get(name)
                if n is None:
                    break
                if n.op_type in ("Gemm", "MatMul", "Conv"):
                    excluded.append(n.name)
                    break
                name = n.input[0]
    onnx.save(m, os.fspath(pre))
    name = ekit_onnx.onnx_io(m)["inputs"][0]["name"]

    reader = ekit_onnx.calibration_reader(name, calib)

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    extra = {"CalibPercentile": percentile} if method == "percentile" else {}
    qt = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    quantize_static(os.fspath(pre), os.fspath(out), reader, quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=qt[act], weight_type=QuantType.QInt8,
                    calibrate_method=methods[method], nodes_to_exclude=excluded,
                    extra_options=extra)
    pre.unlink(missing_ok=True)
    return {"quantize_s": round(time.perf_counter() - t, 1), "kept_fp32": excluded}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="fp32 ONNX (one float image input)")
    ap.add_argument("--calib", required=True)
    ap.add_argument("--val", action="append", required=True, help="labelled image folder(s)")
    ap.add_argument("--shape", default="1,3,224,224")
    ap.add_argument("--layout", default="nchw")
    ap.add_argument("--mean", default="0.485,0.456,0.406")
    ap.add_argument("--std", default="0.229,0.224,0.225")
    ap.add_argument("--scale", type=float, default=255.0)
    ap.add_argument("--resize", default="crop")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--percentile", type=float, default=99.999, help="for a bare 'percentile'")
    ap.add_argument("--acts", default="uint8,int8")
    ap.add_argument("--methods", default="minmax,percentile:99.9,percentile:99.99,"
                                         "percentile:99.999,entropy",
                    help="calibration methods; percentile:P sets the percentile")
    ap.add_argument("--out", default=str(HERE / "results" / "onnx_quant_choices"))
    a = ap.parse_args()

    import onnxruntime

    spec = {"name": None, "shape": [int(v) for v in a.shape.split(",")], "layout": a.layout,
            "color": "rgb", "scale": a.scale, "mean": [float(v) for v in a.mean.split(",")],
            "std": [float(v) for v in a.std.split(",")], "resize": a.resize,
            "dynamic_batch": False}
    calib = ekit.load_set(a.calib, spec, purpose="calibration")["x"]
    sets = {Path(v).name: ekit.load_set(v, spec) for v in a.val}
    fp32 = Path(a.model)
    tmp = Path(tempfile.mkdtemp(prefix="quant-bench-"))

    variants = [("fp32", None, None, None)]
    for act, method, keep in itertools.product(a.acts.split(","), a.methods.split(","),
                                               (False, True)):
        variants.append((f"{'U8S8' if act == 'uint8' else 'S8S8'} {method.replace(':', ' ')}"
                         f"{' last-fp32' if keep else ''}", act, method, keep))
    rows, sessions = [], {}
    for label, act, method, keep in variants:
        row = {"variant": label, "activation": act, "method": method, "keep_last_fp32": keep}
        pct = a.percentile
        if method and ":" in method:
            method, pct = method.split(":")[0], float(method.split(":")[1])
            row.update(method=method, percentile=pct)
        path = fp32
        if act:
            path = tmp / (label.replace(" ", "_").replace(".", "_") + ".onnx")
            print(f"quantizing {label} ...", flush=True)
            try:
                row.update(quantize(fp32, path, calib, act, method, keep, pct))
            except Exception as e:  # a variant that fails is a result too
                row["error"] = f"{type(e).__name__}: {e}"[:300]
                rows.append(row)
                continue
        row["size_bytes"] = path.stat().st_size
        sessions[label] = ekit_onnx.ort_session(path, threads=a.threads)
        rows.append(row)

    ref = {name: ekit_onnx.ort_run(sessions["fp32"], d["x"]) for name, d in sets.items()}
    for row in rows:
        if "error" in row:
            continue
        sess = sessions[row["variant"]]
        for name, d in sets.items():
            m = ekit.compare(ref[name], ekit_onnx.ort_run(sess, d["x"]), d["labels"])
            row[name] = {k: m[k] for k in ("top1_agreement", "accuracy", "cosine", "cosine_mean",
                                           "max_abs")}
    # latency: round-robin, 10 rounds of runs/10 per variant after a warm-up
    x1 = next(iter(sets.values()))["x"][0:1]
    live = [r for r in rows if "error" not in r]
    times = {r["variant"]: [] for r in live}
    iname = sessions["fp32"].get_inputs()[0].name
    for r in live:
        for _ in range(5):
            sessions[r["variant"]].run(None, {iname: x1})
    per_round = max(1, a.runs // 10)
    for _ in range(10):
        for r in live:
            s = sessions[r["variant"]]
            for _ in range(per_round):
                t = time.perf_counter()
                s.run(None, {iname: x1})
                times[r["variant"]].append((time.perf_counter() - t) * 1000)
    for r in live:
        v = np.asarray(times[r["variant"]])
        r["latency_ms"] = {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)),
                           "min": float(v.min()), "runs": int(v.size)}
    base = next(r for r in live if r["variant"] == "fp32")["latency_ms"]["median"]
    for r in live:
        r["speedup_vs_fp32"] = base / r["latency_ms"]["median"]

    meta = {"model": fp32.name, "calibration_images": int(len(calib)),
            "val_sets": {k: len(v["files"]) for k, v in sets.items()},
            "onnxruntime": onnxruntime.__version__, "threads": a.threads,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "runs": a.runs,
            "note": "latency: batch 1, CPUExecutionProvider, variants interleaved round-robin"}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ekit.write_json(out.with_suffix(".json"), {"meta": meta, "rows": rows})

    names = list(sets)
    head = ["variant", "size MB", "median ms", "p90 ms", "speed-up"]
    for n in names:
        head += [f"top-1 agr. {n}", f"acc. {n}", f"min cos {n}"]
    lines = [f"# ONNX Runtime int8 choices — {fp32.name}", "",
             f"onnxruntime {meta['onnxruntime']}, {meta['threads']} thread(s), "
             f"{meta['cores']} cores ({meta['cpu']}); calibration on {meta['calibration_images']} "
             f"images; held-out sets: " + ", ".join(f"{k} ({v})" for k, v in
                                                    meta["val_sets"].items())
             + f"; latency = {a.runs} single-image runs, interleaved.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error'][:80]} |")
            continue
        cells = [r["variant"], f"{r['size_bytes'] / 1e6:.2f}",
                 f"{r['latency_ms']['median']:.2f}", f"{r['latency_ms']['p90']:.2f}",
                 f"{r['speedup_vs_fp32']:.2f}x"]
        for n in names:
            m = r[n]
            cells += [f"{m['top1_agreement']:.2f}",
                      "-" if m["accuracy"] is None else f"{m['accuracy']:.2f}",
                      f"{m['cosine']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
