"""Benchmark of the rpi (TFLite / LiteRT) target: per precision size ratio to fp32, top-1 accuracy,
top-1 agreement with the source model, LiteRT latency — side by side with onnx2tf's own default
outputs (``onnx2tf -oiqt``, same model, same calibration tensors, same run).

    python bench/rpi_vs_onnx2tf.py [--models mobilenet,fmnist] [--threads 1] [--out bench/results]

Models: torchvision's ImageNet MobileNetV2 (ONNX route; calibrated on the 20 foolbox photos,
judged on their 20 mirror images) and a Keras CNN trained here on real Fashion-MNIST (TF route,
judged on the full 10k test set; plus a tfmot QAT fine-tune -> int8). onnx2tf's variants are fed
exactly like edgekiln's (the same validate template: its float models take the normalized NHWC
tensor, its integer ones the quantized normalized tensor). Latency is LiteRT on THIS machine
(batch 1, ``--threads``), not on a Pi, measured interleaved (every variant in turn, several rounds,
in one process) so that the load of a shared machine hits all of them alike: compare the rows
with each other, not with a Pi.
Writes bench/results/rpi_vs_onnx2tf.json and .md.
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
CONVERTERS = ROOT / "converters"
FIXTURES = ROOT / "tests" / "integration" / "rpi_fixtures.py"
IMAGENET = {"name": None, "shape": [1, 3, 224, 224], "layout": "nchw", "color": "rgb", "scale": 255.0,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": "crop",
            "dynamic_batch": False}
FMNIST = {"name": None, "shape": None, "layout": "nhwc", "color": "rgb", "scale": 255.0, "mean": None,
          "std": None, "resize": "stretch", "dynamic_batch": False}
ONNX2TF_VARIANTS = {  # onnx2tf -oiqt file suffix -> what it is
    "float32": "onnx2tf fp32", "float16": "onnx2tf fp16",
    "dynamic_range_quant": "onnx2tf dynamic-range",
    "integer_quant": "onnx2tf int8 (float I/O)",
    "full_integer_quant": "onnx2tf full int8 (int8 I/O)",
    "integer_quant_with_int16_act": "onnx2tf int16-act (float I/O)",
    "full_integer_quant_with_int16_act": "onnx2tf full int16-act",
}


def python_for(image: str, var: str) -> str:
    if os.environ.get(var):
        return os.environ[var]
    from _common import env_python

    return env_python(image)


class Job:
    def __init__(self, root: Path, python: str, paths: dict, threads: int):
        from edgekiln.render import copy_support

        self.root, self.python, self.paths, self.n = root, python, paths, 0
        self.options = {"int8_io": "uint8", "int8_input": "pixels", "int8_float_fallback": False,
                        "calib_count": 200, "calib_warn_below": 100, "threads": threads,
                        "latency_runs": 50, "latency_warmup": 5, "onnx2tf_args": [],
                        "onnx2tf_timeout": 1800, "recover": False, "recover_max_float_layers": 10,
                        "recover_max_seconds": 600}
        (root / "steps").mkdir(parents=True, exist_ok=True)
        (root / "work" / "results").mkdir(parents=True, exist_ok=True)
        copy_support(CONVERTERS, root)

    def step(self, template, kind, label, precision=None, **params):
        from edgekiln.render import render_text

        self.n += 1
        sid = f"{self.n:02d}-{label}"
        params = dict(params, step=sid, kind=kind, target=None if kind == "source" else "rpi",
                      precision=precision)
        if kind != "source":
            params.update(artifacts=["model.tflite"], out_dir=f"work/rpi/{precision}")
        text = render_text(template, {"params": params, "step": sid, "kind": kind,
                                      "target": params["target"], "precision": precision}, CONVERTERS)
        (self.root / "steps" / f"{sid}.py").write_text(text)
        (self.root / "steps" / f"{sid}.json").write_text(json.dumps(params, indent=2))
        env = dict(os.environ, PYTHONPATH=str(self.root), EKIT_PATHS=json.dumps(self.paths),
                   TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
        t = time.monotonic()
        proc = subprocess.run([self.python, f"steps/{sid}.py"], cwd=self.root, env=env, capture_output=True,
                              text=True, timeout=3600)
        if proc.returncode:
            raise SystemExit(f"{sid} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        print(f"  {sid}: {time.monotonic() - t:.1f} s", flush=True)
        return time.monotonic() - t

    def source(self, template, fmt, spec, **kw):
        return self.step(template, "source", "source", source_format=fmt, model_name="m", input=spec,
                         options=kw.pop("options", {}), **kw)

    def build(self, template, precision, fmt, spec, **options):
        common = dict(source_format=fmt, model_name="m", input=spec, options=dict(self.options, **options),
                      source_step="01-source")
        secs = self.step(template, "convert", f"rpi-{precision}-convert", precision, **common) if template else None
        self.step("tflite/validate.py.jinja", "validate", f"rpi-{precision}-validate", precision, **common)
        rep = json.loads((self.root / "work" / "rpi" / precision / "report.json").read_text())
        rep["convert_seconds"] = secs
        return rep

    def onnx2tf_defaults(self, spec):
        """onnx2tf -oiqt on a copy of work/source/model.onnx with the same calibration tensors."""
        import numpy as np

        src = self.root / "work" / "source"
        o2t = self.root / "onnx2tf-defaults"
        o2t.mkdir()
        shutil.copy(src / "model.onnx", o2t / "model.onnx")
        calib = np.load(src / "calib.npy").astype(np.float32)
        nhwc = calib.transpose(0, 2, 3, 1) if spec["layout"] == "nchw" else calib
        np.save(o2t / "calib.npy", nhwc)
        np.save(o2t / "calibration_image_sample_data_20x128x128x3_float32.npy", nhwc[:20])
        c = nhwc.shape[-1]
        cmd = [self.python, "-m", "onnx2tf", "-i", "model.onnx", "-o", "out", "-oiqt", "-v", "error",
               "-cind", "input", "calib.npy", json.dumps([[[[0.0] * c]]]), json.dumps([[[[1.0] * c]]])]
        t = time.monotonic()
        subprocess.run(cmd, cwd=o2t, check=True, capture_output=True, timeout=3600,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1"))
        secs = time.monotonic() - t
        print(f"  onnx2tf -oiqt: {secs:.1f} s, files: {sorted(p.name for p in (o2t / 'out').glob('*.tflite'))}")
        reports = {}
        for suffix, label in ONNX2TF_VARIANTS.items():
            f = o2t / "out" / f"model_{suffix}.tflite"
            if not f.exists():
                continue
            name = f"onnx2tf-{suffix}"
            (self.root / "work" / "rpi" / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, self.root / "work" / "rpi" / name / "model.tflite")
            runs = 5 if "int16" in suffix else 50
            reports[name] = self.build(None, name, "onnx", spec, latency_runs=runs, latency_warmup=1)
            reports[name]["label"] = label
        return reports, secs


LATENCY = r"""
import json, sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
files, threads, rounds = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
its = {}
for name, path in files.items():
    it = Interpreter(model_path=path, num_threads=threads)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    for _ in range(3):
        it.invoke()
    its[name] = it
times = {n: [] for n in its}
names = list(its)
for r in range(rounds):  # interleaved, rotating order: every variant sees the same machine load
    for name in names[r % len(names):] + names[:r % len(names)]:
        it = its[name]
        for _ in range(2 if "int16" in name else 10):
            t = time.perf_counter(); it.invoke(); times[name].append((time.perf_counter() - t) * 1000)
print(json.dumps({n: {"median": float(np.median(v)), "min": float(np.min(v)), "n": len(v)}
                  for n, v in times.items()}))
"""


def interleaved_latency(job: Job, names, threads: int, rounds: int = 12) -> dict:
    files = {n: str(job.root / "work" / "rpi" / n / "model.tflite") for n in names}
    out = subprocess.run([job.python, "-c", LATENCY, json.dumps(files), str(threads), str(rounds)],
                         capture_output=True, text=True, check=True, timeout=3600,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def with_latency(reports: dict, lat: dict) -> dict:
    for name, r in reports.items():
        r["latency_validate_ms"] = r["latency_ms"]
        r["latency_ms"] = dict(r["latency_ms"], median=lat[name]["median"], min=lat[name]["min"],
                               runs=lat[name]["n"], method="interleaved")
    return reports


def row(name, r, fp32):
    m = r["metrics"]
    inp = r["io"]["inputs"][0]
    return {"variant": name, "label": r.get("label", name), "size_mb": round(r["size_bytes"] / 1e6, 3),
            "size_ratio": round(r["size_bytes"] / fp32["size_bytes"], 3),
            "top1_acc": m["accuracy"], "source_acc": m["source_accuracy"],
            "agreement": m["top1_agreement"], "cosine": round(m["cosine"], 5),
            "latency_ms": round(r["latency_ms"]["median"], 3), "latency_min_ms": round(r["latency_ms"]["min"], 3),
            "speedup_vs_fp32": round(fp32["latency_ms"]["median"] / r["latency_ms"]["median"], 2),
            "input": f"{inp['dtype']} {inp['shape']}" + (f" q={inp['quantization']['scale'][0]:.4g}/"
                                                         f"{inp['quantization']['zero_point'][0]}"
                                                         if inp["quantization"] else ""),
            "convert_s": None if r.get("convert_seconds") is None else round(r["convert_seconds"], 1)}


def bench_mobilenet(tmp: Path, tfpy: str, threads: int) -> dict:
    from edgekiln.demo import mobilenet_weights, photo_folders

    torchpy = python_for("torch", "EDGEKILN_TORCH_PYTHON")
    calib, val = photo_folders(tmp / "photos")
    onnx_path = tmp / "mobilenet_v2.onnx"
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); from zoo.mobilenet_v2 import mobilenet_v2; "
            "m = mobilenet_v2(); m.load_state_dict(torch.load(sys.argv[2], map_location='cpu')); m.eval(); "
            "torch.onnx.export(m, torch.zeros(1, 3, 224, 224), sys.argv[3], dynamo=False, opset_version=17, "
            "input_names=['input'], output_names=['logits'])")
    subprocess.run([torchpy, "-c", code, CONVERTERS, mobilenet_weights(), onnx_path], check=True, timeout=600)
    job = Job(tmp / "job-mnv2", tfpy, {"model": str(onnx_path), "calib": str(calib), "val": str(val)}, threads)
    job.source("onnx/source.py.jinja", "onnx", IMAGENET, options={"simplify": "onnxsim"})
    ours = {p: job.build("tflite/convert.py.jinja", p, "onnx", IMAGENET)
            for p in ("fp32", "fp16", "dynamic", "int8")}
    theirs, o2t_secs = job.onnx2tf_defaults(IMAGENET)
    lat = interleaved_latency(job, list(ours) + list(theirs), threads)
    with_latency(ours, lat)
    with_latency(theirs, lat)
    fp32 = ours["fp32"]
    return {"model": "MobileNetV2 (torchvision ImageNet weights, ONNX route)",
            "data": "calibration: 20 foolbox ImageNet photos; judged on their 20 mirror images",
            "onnx2tf_oiqt_seconds": round(o2t_secs, 1),
            "edgekiln": [row(p, r, fp32) for p, r in ours.items()],
            "onnx2tf_defaults": [row(p, r, fp32) for p, r in theirs.items()]}


def bench_fmnist(tmp: Path, tfpy: str, threads: int) -> dict:
    data = tmp / "fmnist"
    subprocess.run([tfpy, FIXTURES, "fmnist", data, "--train", "30000", "--test", "10000", "--calib", "200",
                    "--epochs", "2"], check=True, capture_output=True, timeout=3600)
    info = json.loads((data / "fmnist.json").read_text())
    out = {"model": "Keras CNN (2 conv + 2 dense), trained here on 30k real Fashion-MNIST images, 2 epochs",
           "data": "calibration: 200 training images; judged on the full 10k test set", "training": info}
    job = Job(tmp / "job-fm", tfpy, {"model": str(data / "cnn.keras"), "calib": str(data / "calib"),
                                      "val": str(data / "val")}, threads)
    job.source("tflite/source_tf.py.jinja", "keras", FMNIST, reference_limit=10000)
    ours = {p: job.build("tflite/convert_from_tf.py.jinja", p, "keras", FMNIST) for p in ("fp32", "fp16", "dynamic", "int8")}
    qjob = Job(tmp / "job-qat", tfpy, {"model": str(data / "qat.h5"), "calib": None, "val": str(data / "val")},
               threads)
    qjob.source("tflite/source_tf.py.jinja", "keras", FMNIST, reference_limit=10000)
    q = qjob.build("tflite/convert_from_tf.py.jinja", "int8", "keras", FMNIST)
    (job.root / "work" / "rpi" / "qat-int8").mkdir(parents=True, exist_ok=True)
    shutil.copy(qjob.root / "work" / "rpi" / "int8" / "model.tflite", job.root / "work" / "rpi" / "qat-int8")
    lat = interleaved_latency(job, list(ours) + ["qat-int8"], threads, rounds=20)
    with_latency(ours, lat)
    with_latency({"qat-int8": q}, lat)
    fp32 = ours["fp32"]
    out["edgekiln"] = [row(p, r, fp32) for p, r in ours.items()] + [row("qat-int8", q, fp32)]
    out["note"] = ("qat-int8: agreement/accuracy against the QAT Keras model itself "
                   f"(Keras accuracy {info['qat_accuracy']:.3f} on its first {info['n_test']} test images); "
                   "onnx2tf is not run for a TF source (the rpi target converts TF directly)")
    return out


def markdown(result: dict) -> str:
    lines = [f"# TFLite (rpi) benchmark — {result['date']}", "",
             f"Machine: {result['machine']}; LiteRT {result['litert']}, {result['threads']} thread(s), batch 1. "
             "Latency: median of interleaved runs on this x86 machine (shared, 2 cores), not a Pi.", ""]
    for m in result["models"]:
        lines += [f"## {m['model']}", "", m["data"], ""]
        if "onnx2tf_oiqt_seconds" in m:
            lines += [f"onnx2tf -oiqt (all seven files) took {m['onnx2tf_oiqt_seconds']} s.", ""]
        lines += ["| variant | size MB | × fp32 | top-1 | source top-1 | agreement | cosine | median ms | × fp32 speed | input |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in m["edgekiln"] + m.get("onnx2tf_defaults", []):
            acc = "-" if r["top1_acc"] is None else f"{r['top1_acc']:.3f}"
            src = "-" if r["source_acc"] is None else f"{r['source_acc']:.3f}"
            lines.append(f"| {r['label'] if r['variant'].startswith('onnx2tf') else 'edgekiln ' + r['variant']} | "
                         f"{r['size_mb']} | {r['size_ratio']} | {acc} | {src} | {r['agreement']} | {r['cosine']} | "
                         f"{r['latency_ms']} | {r['speedup_vs_fp32']} | {r['input']} |")
        if m.get("note"):
            lines += ["", m["note"]]
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mobilenet,fmnist")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--keep", action="store_true", help="keep the work folders")
    args = ap.parse_args()
    tfpy = python_for("tflite", "EDGEKILN_TFLITE_PYTHON")
    tmp = Path(tempfile.mkdtemp(prefix="tflite-bench-"))
    litert = subprocess.run([tfpy, "-c", "import importlib.metadata as m; print(m.version('ai-edge-litert'))"],
                            capture_output=True, text=True).stdout.strip()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "litert": litert, "threads": args.threads, "models": []}
    try:
        for name in args.models.split(","):
            print(f"== {name}", flush=True)
            result["models"].append({"mobilenet": bench_mobilenet, "fmnist": bench_fmnist}[name](tmp, tfpy, args.threads))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rpi_vs_onnx2tf.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "rpi_vs_onnx2tf.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
