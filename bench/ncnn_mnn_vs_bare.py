"""Benchmark of the ncnn and mnn targets: edgekiln's builds of the real MobileNetV2 (ImageNet,
calibrated on the 20 foolbox photos, judged on their 20 mirror images) and the real YOLOv8n
detector (320x320, letterbox; 29 photos, judged on their mirror images), per precision, side by
side with each runtime's own tool run BARE on the same source ONNX in the same run (pnnx with its
defaults; MNNConvert with its defaults and --fp16; MNN's quantizer with its documented image
config on the raw photos), plus the MNN int8 activation-range methods (KL / EMA / ADMM) that
choose the target's default.

    python bench/ncnn_mnn_vs_bare.py [--models mobilenet,yolo] [--out bench/results]

Metrics: cosine (minimum over images), top-1 agreement / detection F1 against the source model's
outputs (converters/ekit_task.py), size, conversion seconds (edgekiln: the convert step's wall
time, with the step's process start; bare: the tool call), and latency measured INTERLEAVED in one
process per runtime (rounds of one run of every variant, 2 threads), on this busy 2-core machine:
compare rows with each other, not with a phone. Writes bench/results/ncnn_mnn_vs_bare.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MOBILENET = ["--arch", "mobilenet_v2", "--input-shape", "1,3,224,224", "--mean", "0.485,0.456,0.406",
             "--std", "0.229,0.224,0.225"]


def cli(*args) -> tuple[int, dict, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgekiln", *map(str, args), "--json", "--runner", "local",
                           "--keep-job"], capture_output=True, text=True, cwd=ROOT)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit(f"edgekiln {' '.join(map(str, args))} failed: {proc.stderr[-2000:]}")
    return proc.returncode, data, time.perf_counter() - t0


from _common import env_python as python_for, flat_helpers, newest_job  # noqa: E402,F401  (shared by the studies)


def edgekiln_rows(job: Path, target: str, label_suffix: str = "") -> dict:
    """Every artifact of a kept job (published or refused): metrics, size, convert seconds."""
    rows = {}
    for report in sorted((job / "work" / target).glob("*/report.json")):
        precision = report.parent.name
        rep = json.loads(report.read_text())
        conv = next((job / "work" / "results").glob(f"*-{target}-{precision}-convert.json"))
        rows[f"edgekiln {precision}{label_suffix}"] = {
            "folder": str(report.parent), "metrics": rep["metrics"], "size_bytes": rep["size_bytes"],
            "convert_s": json.loads(conv.read_text()).get("convert_seconds")}
    return rows


def model_inputs(name: str, tmp: Path):
    from edgekiln.demo import mobilenet_weights, photo_folders, task_photo_folders, yolov8n_onnx

    if name == "mobilenet":
        calib, val = photo_folders()
        return mobilenet_weights(), MOBILENET + ["--name", "mobilenet_v2"], calib, val
    calib, val = task_photo_folders()
    model = tmp / "yolov8n.onnx"
    shutil.copy(yolov8n_onnx(), model)
    (tmp / "yolov8n.onnx.edgekiln.toml").write_text('shape = [1, 3, 320, 320]\nresize = "letterbox"\n')
    return model, [], calib, val


def bench_model(name: str, tmp: Path) -> dict:
    model, spec_args, calib, val = model_inputs(name, tmp)
    out = tmp / f"dist-{name}"
    common = ["--calib", calib, "--val", val, "--out", out]
    rc, data, seconds = cli("build", "--target", "ncnn,mnn", "--model", model, *spec_args,
                            "--precision", "fp32,fp16", *common)
    job = newest_job(out)
    result = {"build_seconds_fp32_fp16_both_targets": seconds, "ncnn": edgekiln_rows(job, "ncnn"),
              "mnn": edgekiln_rows(job, "mnn")}
    spec = json.loads((job / "work" / "source" / "io.json").read_text())["input_spec"]
    onnx_model = tmp / f"{name}.onnx"
    shutil.copy(job / "work" / "source" / "model.onnx", onnx_model)
    spec_flags = ["--input-shape", ",".join(map(str, spec["shape"])), "--resize", spec["resize"]]
    if spec.get("mean"):
        spec_flags += ["--mean", ",".join(map(str, spec["mean"])), "--std", ",".join(map(str, spec["std"]))]
    for method in ("KL", "EMA", "ADMM"):
        rc, data, seconds = cli("build", "--target", "mnn", "--model", onnx_model, *spec_flags, "--precision", "int8",
                                "--option", f"feature_quantize_method={method}", "--name", f"{name}-{method}",
                                *common)
        int8_job = newest_job(out)
        rows = edgekiln_rows(int8_job, "mnn", f" ({method})")
        if not rows:
            result["mnn"][f"edgekiln int8 ({method})"] = {"failed": True, "error": (data.get("error") or {}).get("message")}
        for label, row in rows.items():
            row["published"] = rc == 0
            row["error"] = (data.get("error") or {}).get("message") if rc else None
            result["mnn"][label] = row
    for runtime in ("ncnn", "mnn"):
        spec_file = tmp / f"{name}-spec.json"
        spec_file.write_text(json.dumps(spec))
        res_file = tmp / f"{name}-{runtime}.json"
        arts = [f"--artifact={label}={row['folder']}" for label, row in result[runtime].items() if row.get("folder")]
        env = dict(os.environ, PYTHONPATH=flat_helpers())
        for var in ("PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(var, None)
        extra = ["--photos", str(calib)] if runtime == "mnn" else []
        proc = subprocess.run([python_for(runtime), str(ROOT / "bench" / "_inside_ncnn_mnn.py"), runtime,
                               str(spec_file), str(res_file), *extra, *arts], cwd=job, env=env,
                              capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"worker {runtime} failed: {proc.stderr[-3000:]}")
        for label, row in json.loads(res_file.read_text()).items():
            merged = result[runtime].setdefault(label, {})
            merged.update({k: v for k, v in row.items() if k not in merged or k == "latency_ms"})
            if label.startswith("edgekiln"):
                merged["metrics"] = merged.get("metrics") or row.get("metrics")
    return result


def fmt(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def markdown(results: dict) -> str:
    lines = ["# ncnn and MNN targets: edgekiln vs the runtimes' own tools (bench/ncnn_mnn_vs_bare.py)", "",
             f"{results['when']}, {results['machine']}. Latency: interleaved, 2 threads, batch 1, busy "
             "shared 2-core x86 machine (compare rows, not devices). cosine: minimum over the validation "
             "images; agreement: top-1 vs the source (classifier); det F1: boxes vs the source's "
             "(detector, IoU 0.5); convert: seconds of the conversion (edgekiln: its whole convert step).", ""]
    for model, res in results["models"].items():
        for runtime in ("ncnn", "mnn"):
            lines += [f"## {model} on {runtime}", "",
                      "| variant | cosine | top-1 agr. | det F1 | boxes (src) | size MB | latency median / min ms | convert s | notes |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for label, row in res[runtime].items():
                if row.get("failed") and not row.get("metrics"):
                    lines.append(f"| {label} | - | - | - | - | - | - | - | failed: {row.get('error') or row.get('rc')} |")
                    continue
                m, lat = row.get("metrics") or {}, row.get("latency_ms") or {}
                note = "refused: " + row["error"][:80] if row.get("error") else ""
                boxes = f"{m.get('det_boxes')} ({m.get('det_boxes_source')})" if m.get("det_f1") is not None else "-"
                lines.append(f"| {label} | {fmt(m.get('cosine'))} | {fmt(m.get('top1_agreement'), '.2f')} | "
                             f"{fmt(m.get('det_f1'), '.3f')} | {boxes} | {fmt(row.get('size_bytes', 0) / 1e6, '.2f')} | "
                             f"{fmt(lat.get('median'), '.1f')} / {fmt(lat.get('min'), '.1f')} | "
                             f"{fmt(row.get('convert_s'), '.1f')} | {note} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mobilenet,yolo")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    results = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores", "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-new-runtimes-") as tmp:
        for name in args.models.split(","):
            results["models"][name] = bench_model(name, Path(tmp))
            print(f"{name}: done", flush=True)
    for res in results["models"].values():
        for runtime in ("ncnn", "mnn"):
            for row in res[runtime].values():
                row.pop("folder", None)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ncnn_mnn_vs_bare.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "ncnn_mnn_vs_bare.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
