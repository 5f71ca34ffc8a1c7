"""int8 accuracy recovery (--recover) on TFLite (rpi) and TensorRT Q/DQ (jetson), measured on the
real models the project uses: fp32 vs plain int8 vs recovered int8 (edgekiln builds through the
CLI, local runner) and the bare tools' defaults on the same source model, calibration and
reference images, in the same run:

  rpi      bare TFLiteConverter full-int8 as its guide writes it (Optimize.DEFAULT, a representative
           dataset of the calibration tensors, TFLITE_BUILTINS_INT8, uint8 I/O) on the same onnx2tf
           SavedModel; LiteRT (XNNPACK) runs everything.
  jetson   bare modelopt ``quantize(model, quantize_mode="int8", calibration_data=..., calibration_eps=["cpu"])``
           (its other defaults) on the source ONNX. Every jetson number is the ONNX Runtime CPU proxy
           of the Q/DQ ONNX: its latency is NOT a TensorRT figure (no engine is built here).

Models and the gate recovery aims at (the same as bench/recover_onnx_intel.py): MobileNetV2 demo
min_top1_agreement 1.0; YOLOv8n min_det_f1 0.95; PP-OCRv4 det min_region_f1 0.90.

    .venv/bin/python bench/recover_rpi_jetson.py [--only mobilenet,yolo,ppocr] [--runtimes rpi,jetson]

Writes bench/results/recover_rpi_jetson.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from recover_onnx_intel import GOALS_HEAD, checks, fmt, models, ort_measure  # noqa: E402  (the same models, photos and gates)
from _common import flat_helpers  # noqa: E402

GATES = {"top1_agreement": "min_top1_agreement 1.0", "det_f1": "min_det_f1 0.95", "region_f1": "min_region_f1 0.90"}


def build(target, model_args, photos, out: Path, precision: str, extra) -> Path:
    """One CLI build (kept job); -> the job folder (passed or refused)."""
    from _common import cli_build

    return cli_build(target, precision, model_args, photos, out, extra)[0]


def row(job: Path, target: str, precision: str, metric: str, label: str) -> dict:
    rep = json.loads((job / "work" / target / precision / "report.json").read_text())
    conv = json.loads(next((job / "work" / "results").glob(f"*-{target}-{precision}-convert.json")).read_text())
    rec = (conv.get("quantization") or {}).get("recovery") or {}
    if target == "rpi":  # TFLiteConverter + the onnx2tf step it needs (0 when the SavedModel was reused)
        plain = (conv.get("convert_seconds") or 0) + ((conv.get("onnx2tf") or {}).get("seconds") or 0)
    else:
        plain = (conv.get("tensorrt") or {}).get("plain_int8_seconds") or (conv.get("tensorrt") or {}).get("seconds")
    m = rep["metrics"]
    return {"variant": label, metric: m.get(metric), "top1_agreement": m.get("top1_agreement"),
            "cosine": m.get("cosine"), "size_bytes": rep["size_bytes"], "latency_ms": rep["latency_ms"]["median"],
            "latency_min_ms": rep["latency_ms"].get("min"),
            "float_layers": [r["layer"] for r in rec.get("float_layers") or []],
            "int8_mac_share": rec.get("int8_mac_share") if rec.get("attempted") else (1.0 if precision == "int8" else 0.0),
            "convert_seconds": round(plain + (rec.get("seconds") or 0), 2) if precision == "int8" else None,
            "plain_int8_seconds": round(plain, 2), "recovery_seconds": rec.get("seconds"),
            "sensitivity_seconds": rec.get("sensitivity_seconds"),
            "recovered": rec.get("passed") if rec.get("attempted") else None, "tries": rec.get("tries"),
            "io": [t["dtype"] for t in rep["io"]["inputs"] + rep["io"]["outputs"]]}


BARE_TFLITE = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, tensorflow as tf
import ekit, ekit_tf
from ekit import recover as ekit_recover
src = ekit.work() / "source"
spec = json.loads((src / "io.json").read_text()).get("input_spec") or json.loads(sys.argv[2])
saved = next((ekit.work() / "rpi" / "_onnx2tf").glob("*/saved_model"))
calib = ekit_tf.model_input_nhwc(np.load(src / "calib.npy")[:200], spec).astype(np.float32)
ref = ekit.read_reference(src / "reference.npz")
t = time.perf_counter()
conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
conv.optimizations = [tf.lite.Optimize.DEFAULT]
conv.representative_dataset = lambda: ([c[None]] for c in calib)
conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
conv.inference_input_type = tf.uint8
conv.inference_output_type = tf.uint8
open("bare.tflite", "wb").write(conv.convert())
seconds = time.perf_counter() - t
it = ekit_tf.interpreter("bare.tflite", 4)
feeds = ekit_tf.reference_feeds(it, ref, spec, "quantized_tensor")
ys, _ = ekit_tf.reference_outputs(it, feeds, 1, ref)
it.set_tensor(it.get_input_details()[0]["index"], feeds[:1])
lat = ekit.latency(it.invoke, 50, 5)
met = ekit_recover.measure(ref, ys)
print(json.dumps({"metrics": ekit.jsonable(met), "size_bytes": os.path.getsize("bare.tflite"),
                  "latency_ms": lat["median"], "latency_min_ms": lat.get("min"), "seconds": round(seconds, 2)}))
"""

BARE_MODELOPT = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import ekit, ekit_onnx
from ekit import recover as ekit_recover
from modelopt.onnx.quantization import quantize
src = ekit.work() / "source"
ref = ekit.read_reference(src / "reference.npz")
t = time.perf_counter()
quantize(str(src / "model.onnx"), quantize_mode="int8", calibration_data=np.load(src / "calib.npy")[:500],
         calibration_eps=["cpu"], output_path="bare.onnx")
seconds = time.perf_counter() - t
""" + ort_measure(20, 3)


def bare(job: Path, target: str, metric: str) -> dict:
    """The bare tool's defaults, in the environment the build used, on the job's own data."""
    from edgekiln.runners.local import LocalRunner

    image, code, label = (("tflite", BARE_TFLITE, "bare TFLiteConverter full-int8") if target == "rpi"
                          else ("trtprep", BARE_MODELOPT, "bare modelopt defaults"))
    params = json.loads(next((job / "steps").glob(f"*-{target}-int8-convert.json")).read_text())
    proc = subprocess.run([LocalRunner().prepare(image).ref, "-c", code, flat_helpers(),
                           json.dumps(params["input"])], capture_output=True, text=True, cwd=job)
    if proc.returncode:
        return {"variant": label, "error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else "?"}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    m = r["metrics"]
    return {"variant": label, metric: m.get(metric), "top1_agreement": m.get("top1_agreement"),
            "cosine": m.get("cosine"), "size_bytes": r["size_bytes"], "latency_ms": r["latency_ms"],
            "latency_min_ms": r["latency_min_ms"], "float_layers": [], "int8_mac_share": 1.0,
            "convert_seconds": r["seconds"]}


def goals(res: dict) -> list[str]:
    lines = list(GOALS_HEAD)
    for (rt, _), m in ((k.split("/", 1), v) for k, v in res["models"].items()):
        rows = {r["variant"]: r for r in m["rows"]}
        fp, plain, rec = rows["fp32"], rows["int8 (plain)"], rows["int8 --recover"]
        if "error" in rec or "error" in fp:
            continue
        # recovery's own seconds on top of the plain int8 conversion (the rpi --recover build ran onnx2tf
        # again where the plain one reused the fp32 step's SavedModel: its convert s column is not comparable)
        base = plain["convert_seconds"]
        total = base + (rec.get("recovery_seconds") or 0) if base else None
        ratio = total / base if base else None
        found = checks(m["metric"], fp, rec, " — ORT proxy, not TensorRT" if rt == "jetson" else "") + [
            ("recovery ≤ 3× plain int8 convert time", f"{fmt(ratio, '.1f')}× ({fmt(total, '.1f')} s vs {fmt(base, '.1f')} s)",
             ratio is not None and ratio <= 3.0)]
        lines += [f"| {rt} | {m['label']} | {g} | {v} | {'yes' if ok else '**no**'} |" for g, v, ok in found]
    return lines + [""]


def markdown(res: dict) -> str:
    lines = ["# int8 accuracy recovery on TFLite (rpi) and TensorRT Q/DQ (jetson): fp32 vs plain int8 vs "
             "recovered, and the bare tools' defaults", "",
             f"`{res['command']}` on {res['machine']} ({res['date']}). Latency: median of the validate step on a "
             "shared, busy 2-core x86 machine (noisy; min in brackets). rpi: LiteRT on x86, not a Raspberry Pi. "
             "jetson: every number is the ONNX Runtime CPU proxy of the Q/DQ ONNX — its latency is NOT a TensorRT "
             "figure (no engine is built here; check_engine measures the engine on the device). convert s: the "
             "int8 conversion plus recovery; rpi: TFLiteConverter, plus onnx2tf where that build ran it (the "
             "plain int8 reused the fp32 step's SavedModel, the --recover build did not), so the goal row compares "
             "the recovery's own seconds with the plain int8 conversion. Identical rpi models show different "
             "latencies (MobileNetV2 plain vs not-attempted recovery): that spread is the machine's load. The bare modelopt row keeps its "
             "defaults, among them high_precision_dtype fp16 (every op it leaves unquantized is fp16-typed, for "
             "TensorRT); ONNX Runtime's CPU kernels run that graph slowly and, here, wrongly, so its proxy numbers "
             "say little about its engine (edgekiln passes fp32 and dq_only).", ""]
    for key, m in res["models"].items():
        metric = m["metric"]
        lines += [f"## {key}: {m['label']} — gate {m['gate']}", "",
                  f"| variant | {metric} | top-1 agr. | cosine | size MB | × fp32 size | latency ms (min) | × faster than "
                  "fp32 | MACs int8 | float layers | I/O dtypes | convert s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        fp = next(r for r in m["rows"] if r["variant"] == "fp32")
        if "error" in fp:
            lines += [f"Not measured: {fp['error'][:300]}", ""]
            continue
        for r in m["rows"]:
            if "error" in r:
                lines.append(f"| {r['variant']} | error: {r['error'][:120]} ||||||||||")
                continue
            lines.append(f"| {r['variant']} | {fmt(r.get(metric))} | {fmt(r.get('top1_agreement'))} | "
                         f"{fmt(r.get('cosine'), '.4f')} | {r['size_bytes'] / 1e6:.2f} | "
                         f"{r['size_bytes'] / fp['size_bytes']:.2f} | "
                         f"{fmt(r['latency_ms'], '.2f')} ({fmt(r.get('latency_min_ms'), '.2f')}) | "
                         f"{fp['latency_min_ms'] / r['latency_min_ms']:.2f} | "
                         f"{fmt(r.get('int8_mac_share'), '.1%')} | {len(r.get('float_layers') or [])} | "
                         f"{'/'.join(sorted(set(r.get('io') or []))) or '-'} | {fmt(r.get('convert_seconds'), '.1f')} |")
        rec = next(r for r in m["rows"] if r["variant"] == "int8 --recover")
        if rec.get("recovery_seconds") is not None:
            lines += ["", f"Recovery: {'passed' if rec['recovered'] else 'did NOT reach the gate'}; "
                      f"{rec['recovery_seconds']:.1f} s on top of the plain int8 ({rec['plain_int8_seconds']:.1f} s), "
                      f"of which sensitivity {rec['sensitivity_seconds']:.1f} s; tries: "
                      + "; ".join(f"{len(t['float_layers'])} float → {t['summary'].split(': ', 1)[-1]}"
                                  for t in rec.get("tries") or [])]
            if rec["float_layers"]:
                lines += ["", "Float layers: " + ", ".join(f"`{n}`" for n in rec["float_layers"])]
        elif "error" not in rec:
            lines += ["", "Recovery: not attempted (the plain int8 meets the gate)."]
        lines.append("")
    notes = ["## Measured after this run", ""] + [f"- {n}" for n in res.get("notes", [])] + [""] if res.get("notes") else []
    return "\n".join(lines + goals(res) + notes) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="mobilenet,yolo,ppocr")
    ap.add_argument("--runtimes", default="rpi,jetson")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the .json")
    a = ap.parse_args()
    out = HERE / "results"
    if a.markdown_only:
        res = json.loads((out / "recover_rpi_jetson.json").read_text())
        (out / "recover_rpi_jetson.md").write_text(markdown(res))
        return
    res = {"command": "python bench/recover_rpi_jetson.py" + (f" --only {a.only}" if a.only != "mobilenet,yolo,ppocr" else "")
           + (f" --runtimes {a.runtimes}" if a.runtimes != "rpi,jetson" else ""),
           "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = models(tmp)
        for target in a.runtimes.split(","):
            for key in a.only.split(","):
                label, model_args, photos, extra, metric = table[key]
                name = f"{target}/{key}"
                try:
                    plain = build(target, model_args, photos, tmp / f"{target}-{key}-plain", "fp32,int8", extra)
                    recovered = build(target, model_args, photos, tmp / f"{target}-{key}-recover", "int8",
                                      extra + ["--recover"])
                    rows = [row(plain, target, "fp32", metric, "fp32"), row(plain, target, "int8", metric, "int8 (plain)"),
                            row(recovered, target, "int8", metric, "int8 --recover"), bare(plain, target, metric)]
                except (SystemExit, OSError, StopIteration, KeyError) as e:
                    rows = [{"variant": v, "error": str(e)[-300:]} for v in ("fp32", "int8 (plain)", "int8 --recover")]
                res["models"][name] = {"label": label, "metric": metric, "gate": GATES[metric], "rows": rows}
                print(f"{name}: " + ", ".join(f"{r['variant']} {r.get(metric, r.get('error'))}" for r in rows), flush=True)
                (out / "recover_rpi_jetson.json").write_text(json.dumps(res, indent=2) + "\n")  # partial results survive
    (out / "recover_rpi_jetson.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
