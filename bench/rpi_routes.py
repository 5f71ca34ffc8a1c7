"""rpi: the two routes for PyTorch sources measured side by side: onnx2tf (edgekiln's route today:
torch.onnx.export -> onnx2tf -> TFLiteConverter) and litert-torch 0.10 (Google's PyTorch -> LiteRT
converter), on the demo MobileNetV2 and the YOLOv8n detector (ONNX only: its PyTorch module is
onnx2torch's, with static shapes, as the executorch target makes it). Per route: ops in the
.tflite, agreement with the source on the real reference images, LiteRT latency (2 threads, this
busy x86 machine), conversion time. fp32 only.

litert-torch needs its own environment (jax, transformers, litert-converter, ai-edge-quantizer:
2.1 GB installed): pass its python (a venv with torch==2.13.0+cpu litert-torch==0.10.0 onnx2torch
onnx), e.g.  .venv/bin/python bench/rpi_routes.py --litert-python /tmp/lt/bin/python

Writes bench/results/rpi_routes.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from executorch_rknn_vs_bare import models, stamp  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--litert-python", required=True)
    ap.add_argument("--models", default="mobilenet,yolo")
    args = ap.parse_args()
    res = {**stamp(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="rpi-routes-") as tmp:
        ms = models(Path(tmp))
        for key in args.models.split(","):
            label, model_args, photos = ms[key]
            out = Path(tmp) / key
            cmd = [sys.executable, "-m", "edgekiln", "build", "--target", "rpi", "--precision", "fp32",
                   "--model", *model_args, "--calib", photos[0], "--val", photos[1], "--out", str(out),
                   "--runner", "local", "--keep-job"]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            build_s = round(time.perf_counter() - t, 1)
            job = max((out / ".edgekiln" / "jobs").iterdir(), key=lambda p: p.stat().st_mtime)
            conv = json.loads(next((job / "work" / "results").glob("*-rpi-fp32-convert.json")).read_text())
            argv = [str(HERE / "_inside_litert_torch.py"), "mobilenet", model_args[0]] if key == "mobilenet" else \
                [str(HERE / "_inside_litert_torch.py"), "onnx"]
            shutil.copy(ROOT / "converters" / "executorch" / "ekit_executorch.py", job / "ekit_executorch.py")
            run = subprocess.run([args.litert_python, *argv], capture_output=True, text=True, cwd=job,
                                 env=dict(os.environ, PYTHONPATH="."))
            if run.returncode:
                r = {"error": run.stderr.strip().splitlines()[-1][:300]}
            else:
                r = json.loads(run.stdout.strip().splitlines()[-1])
                # onnx2tf (ONNX -> SavedModel) + TFLiteConverter; the torch.onnx.export of the source step not counted
                r["onnx2tf"]["convert_seconds"] = round((conv.get("onnx2tf") or {}).get("seconds", 0)
                                                        + (conv.get("convert_seconds") or 0), 1)
            res["models"][key] = {"model": label, "edgekiln_exit": proc.returncode, "edgekiln_build_seconds": build_s,
                                  **r}
            print(json.dumps({key: res["models"][key]}, default=str), flush=True)
    (HERE / "results" / "rpi_routes.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    lines = ["# rpi: onnx2tf vs litert-torch for PyTorch sources (bench/rpi_routes.py)", "",
             f"Run {res['date']} on {res['machine']} (busy, shared): fp32, LiteRT 2 threads.", "",
             "| model | route | cosine (min) | top-1 agree | det F1 | ops (count) | latency ms (min) | size | convert s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in res["models"].values():
        for route in ("onnx2tf", "litert_torch"):
            r = m.get(route) or {"error": m.get("error")}
            if r.get("error"):
                lines.append(f"| {m['model']} | {route} | error: {r['error']} | | | | | | {r.get('convert_seconds', '-')} |")
                continue
            ops = ", ".join(f"{k} {v}" for k, v in sorted(r["ops"].items()))
            lines.append(f"| {m['model']} | {route} | {r['cosine']:.6f} | {r.get('top1_agreement') or '-'} | "
                         f"{r.get('det_f1') if r.get('det_f1') is not None else '-'} | {ops} | "
                         f"{r['latency_ms']:.1f} ({r['latency_min_ms']:.1f}) | {r['size_bytes'] / 1e6:.1f} MB | "
                         f"{r.get('convert_seconds') or '-'} |")
    (HERE / "results" / "rpi_routes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
