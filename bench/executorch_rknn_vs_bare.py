"""The executorch and rknn targets measured on the project's real models, each beside the runtime's
own tool run bare on the same source model, calibration and reference images, in the same run.

Models: the demo MobileNetV2 (state dict + zoo arch; 20 ImageNet photos calibrating, their mirror
images validating) and the YOLOv8n detector (nudenet's 320n.onnx, letterbox 320; the 29 task
photos). edgekiln builds go through the CLI (local runner, kept jobs); the bare runs use the kept
job's data and are scored with the validate steps' own metrics (bench/_bare_*.py).

  rknn        edgekiln int8 (calib.npy folded back to pixels, quantized_algorithm = the target's)
              and fp16; bare = rknn-toolkit2's documented flow (dataset.txt of the photo files, the
              toolkit resizes them, mean/std in config, defaults otherwise); the int8 algorithms
              normal / kl_divergence on edgekiln's calibration, and build(auto_hybrid=True) (the
              toolkit keeps layers fp16 where int8 strays), to choose the default. mmse is left out:
              over 10 minutes per model on this shared 2-core machine.
              All numbers from the x86 SIMULATOR (not the NPU); its latency is not a device figure.
  executorch  edgekiln fp32 and int8 (PT2E + XNNPACK quantizer, per-channel); bare = ExecuTorch's
              documented snippet on the MobileNetV2 module (get_symmetric_quantization_config()
              default: per-tensor). ExecuTorch has no ONNX importer: for YOLOv8n (ONNX only)
              there is no bare ExecuTorch tool to compare with; edgekiln goes through onnx2torch.

    .venv/bin/python bench/executorch_rknn_vs_bare.py [--only rknn,executorch] [--models mobilenet,yolo]

Writes bench/results/executorch_rknn_vs_bare.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MOBILENET = ["--arch", "mobilenet_v2", "--input-shape", "1,3,224,224",
             "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]
PRECISIONS = {"rknn": "int8,fp16", "executorch": "fp32,int8"}


def models(tmp: Path) -> dict:
    from edgekiln.demo import mobilenet_weights, photo_folders, task_photo_folders, yolov8n_onnx

    yolo = tmp / "yolov8n.onnx"
    shutil.copy(yolov8n_onnx(), yolo)
    (tmp / "yolov8n.onnx.edgekiln.toml").write_text('shape = [1, 3, 320, 320]\nresize = "letterbox"\n')
    return {"mobilenet": ("MobileNetV2 demo", [str(mobilenet_weights()), *MOBILENET],
                          [str(p) for p in photo_folders(tmp / "photos")]),
            "yolo": ("YOLOv8n detector", [str(yolo)], [str(p) for p in task_photo_folders()])}


def build(target, model_args, photos, out: Path) -> tuple[Path, float, int]:
    from _common import cli_build

    return cli_build(target, PRECISIONS[target], model_args, photos, out)


def rows(job: Path, target: str) -> list[dict]:
    found = []
    for precision in PRECISIONS[target].split(","):
        rep_path = job / "work" / target / precision / "report.json"
        if not rep_path.is_file():
            continue
        rep = json.loads(rep_path.read_text())
        conv = json.loads(next((job / "work" / "results").glob(f"*-{target}-{precision}-convert.json")).read_text())
        m = rep["metrics"]
        found.append({"variant": f"edgekiln {precision}", "cosine": m.get("cosine"),
                      "top1_agreement": m.get("top1_agreement"), "accuracy": m.get("accuracy"),
                      "source_accuracy": m.get("source_accuracy"), "det_f1": m.get("det_f1"),
                      "det_recall": m.get("det_recall"), "det_boxes": m.get("det_boxes"),
                      "det_boxes_source": m.get("det_boxes_source"), "size_bytes": rep["size_bytes"],
                      "latency_ms": rep["latency_ms"]["median"], "convert_seconds": conv.get("seconds"),
                      "calls": conv.get("calls")})
    return found


def run_in(image: str, job: Path, argv: list[str], calib: str) -> dict:
    from edgekiln.runners.local import LocalRunner

    python = LocalRunner().prepare(image).ref
    from _common import flat_helpers

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([".", flat_helpers()]), EKIT_PATHS=json.dumps({"model": None, "calib": calib, "val": None}))
    proc = subprocess.run([python, *argv], capture_output=True, text=True, cwd=job, env=env)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bare_rknn(job: Path, calib: str) -> list[dict]:
    spec = json.loads((job / "work" / "source" / "io.json").read_text())["input_spec"]
    out = []
    # mmse is left out: over 10 minutes per model on this shared 2-core machine (stopped)
    for mode, algo in (("bare-int8", "normal"), ("tuned-int8", "normal"), ("tuned-int8", "kl_divergence"),
                       ("tuned-int8", "normal+auto_hybrid")):
        r = run_in("rknn", job, [str(HERE / "_inside_rknn_bare.py"), json.dumps(spec), mode, algo], calib)
        label = "bare rknn-toolkit2 (photo files, defaults)" if mode == "bare-int8" else \
            (f"int8 {algo}, everything int8 (build())" if "+" not in algo else
             f"int8 {algo.split('+')[0]}, build(auto_hybrid=True)")
        out.append({"variant": label, **{k: v for k, v in r.items() if k not in ("mode", "algorithm")},
                    "convert_seconds": r.get("seconds")})
    return out


def bare_executorch(job: Path, weights: str, calib: str) -> list[dict]:
    out = []
    for precision in ("fp32", "int8"):
        r = run_in("executorch", job, [str(HERE / "_inside_executorch_bare.py"), weights, precision], calib)
        out.append({"variant": f"bare ExecuTorch snippet {precision}", **{k: v for k, v in r.items() if k != "mode"},
                    "convert_seconds": r.get("seconds")})
    return out


def fmt(v, f=".4f"):
    return "-" if v is None else format(v, f) if isinstance(v, float) else str(v)


def markdown(res: dict) -> str:
    lines = ["# executorch and rknn targets (bench/executorch_rknn_vs_bare.py)", "",
             f"Run {res['date']} on {res['machine']}; a busy shared 2-core machine: latencies are noisy. "
             "rknn numbers are from rknn-toolkit2's x86 SIMULATOR, not an NPU: its latency is the "
             "simulator's on this CPU, not a device figure.", ""]
    for key, entry in res["runs"].items():
        lines += [f"## {entry['target']} — {entry['model']}", "",
                  f"edgekiln build wall time {entry['build_seconds']} s (exit {entry['exit']}; 10 = a gate refused it).", "",
                  "| variant | cosine (min) | top-1 agree | accuracy | det F1 | det recall | boxes (src) | size | latency ms | convert s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in entry["rows"]:
            if r.get("error"):
                lines.append(f"| {r['variant']} | error: {r['error']} |||||||||")
                continue
            boxes = "-" if r.get("det_boxes") is None else f"{r['det_boxes']} ({r.get('det_boxes_source')})"
            size = "-" if r.get("size_bytes") is None else f"{r['size_bytes'] / 1e6:.2f} MB"
            lines.append(f"| {r['variant']} | {fmt(r.get('cosine'))} | {fmt(r.get('top1_agreement'), '.2f')} | "
                         f"{fmt(r.get('accuracy'), '.2f')} | {fmt(r.get('det_f1'), '.3f')} | "
                         f"{fmt(r.get('det_recall'), '.3f')} | {boxes} | {size} | {fmt(r.get('latency_ms'), '.1f')} | "
                         f"{fmt(r.get('convert_seconds'), '.1f')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def stamp() -> dict:
    """When and where a bench ran (both bench scripts of this issue)."""
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="rknn,executorch")
    ap.add_argument("--models", default="mobilenet,yolo")
    args = ap.parse_args()
    res = {**stamp(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="new-runtimes-b-") as tmp:
        ms = models(Path(tmp))
        for target in args.only.split(","):
            for key in args.models.split(","):
                label, model_args, photos = ms[key]
                job, seconds, code = build(target, model_args, photos, Path(tmp) / f"{target}-{key}")
                found = rows(job, target)
                if target == "rknn":
                    found += bare_rknn(job, photos[0])
                elif key == "mobilenet":
                    found += bare_executorch(job, model_args[0], photos[0])
                res["runs"][f"{target}/{key}"] = {"target": target, "model": label, "build_seconds": seconds,
                                                  "exit": code, "rows": found}
                print(json.dumps({f"{target}/{key}": found}, default=str), flush=True)
    results = HERE / "results"
    previous = results / "executorch_rknn_vs_bare.json"
    if previous.is_file():  # a partial run (--only/--models) keeps the other rows of the last one
        res["runs"] = {**json.loads(previous.read_text()).get("runs", {}), **res["runs"]}
    (results / "executorch_rknn_vs_bare.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    (results / "executorch_rknn_vs_bare.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
