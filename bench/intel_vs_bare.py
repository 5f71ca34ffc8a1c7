"""Benchmark the intel (OpenVINO) target against the plain tools, in one run, on one machine.

edgekiln: the target's own templates (converters/openvino/*.py.jinja, options from
targets/intel.toml), rendered and run as a build would run them.
plain: what a user types by hand — `ovc model.onnx` (fp16 weights, its default),
`ovc --compress_to_fp16=False` (fp32) and `nncf.quantize(model, nncf.Dataset(calib))` with
every default, `ov.save_model` with its default.

All six IRs are then measured by the same harness in the same process, interleaved so a busy
machine hurts all of them alike: top-1 on the labelled validation photos, top-1 agreement and
cosine with the PyTorch reference, size, latency (sync, LATENCY hint, batch 1; median and min
over interleaved rounds) and throughput (AsyncInferQueue, THROUGHPUT hint; the best of 5
interleaved 1 s windows). Every number is taken at INFERENCE_PRECISION_HINT=f32 (int8: quantized
layers int8, the rest f32).

    python bench/intel_vs_bare.py                       # envs from images/*/requirements.txt
    python bench/intel_vs_bare.py --python ~/.cache/edgekiln/probe-openvino/bin/python \
        --source /path/to/work/source                    # an existing work/source

Writes bench/results/intel_vs_bare.json and bench/results/intel_vs_bare.md.
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

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "fp16", "int8")


# --------------------------------------------------------------------------- host side

def build_source(dest: Path, torch_python: str | None) -> None:
    sys.path.insert(0, str(ROOT))
    from edgekiln.demo import mobilenet_weights, photo_folders

    if torch_python is None:
        from edgekiln.runners.local import LocalRunner

        torch_python = LocalRunner().prepare("torch").ref
    calib, val = photo_folders()
    subprocess.run([torch_python, str(ROOT / "bench" / "_mobilenet_source.py"), str(dest),
                    "--weights", str(mobilenet_weights()), "--calib", str(calib), "--val", str(val)],
                   check=True)


def render_and_run(job: Path, ov_python: str, precision: str, options: dict | None = None,
                   tag: str | None = None) -> dict:
    """Render the intel convert + validate templates for ``precision`` into ``job`` (the layout of
    converters/README.md) and run them; returns {"convert_s", "validate_s", "report", "result"}."""
    sys.path.insert(0, str(ROOT))
    from edgekiln.render import copy_support, render_text
    from edgekiln.targets import load_target

    target = load_target(ROOT / "targets" / "intel.toml")
    spec = json.loads((job / "work" / "source" / "spec.json").read_text())
    copy_support(ROOT / "converters", job)
    (job / "steps").mkdir(exist_ok=True)
    tag = tag or precision
    timings, result = {}, {}
    for n, (kind, template) in enumerate((("convert", target.convert), ("validate", target.validate))):
        step = f"{2 + n:02d}-intel-{tag}-{kind}"
        params = {"step": step, "kind": kind, "target": "intel", "precision": precision,
                  "source_format": "onnx", "model_name": "mobilenet_v2", "input": spec,
                  "options": dict(target.options, **(options or {})),
                  "artifacts": list(target.artifacts), "out_dir": f"work/intel/{tag}",
                  "source_step": "01-source"}
        text = render_text(template, {"params": params, "step": step, "kind": kind,
                                      "target": "intel", "precision": precision}, ROOT / "converters")
        (job / "steps" / f"{step}.py").write_text(text)
        (job / "steps" / f"{step}.json").write_text(json.dumps(params, indent=2))
        env = dict(os.environ, PYTHONPATH=str(job), PYTHONUNBUFFERED="1",
                   EKIT_PATHS=json.dumps({"model": None, "calib": None, "val": None}))
        t0 = time.perf_counter()
        proc = subprocess.run([ov_python, f"steps/{step}.py"], cwd=job, env=env, text=True,
                              capture_output=True)
        timings[f"{kind}_s"] = round(time.perf_counter() - t0, 2)
        if proc.returncode != 0:
            raise SystemExit(f"{step} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        result[kind] = json.loads((job / "work" / "results" / f"{step}.json").read_text())
    report = json.loads((job / "work" / "intel" / tag / "report.json").read_text())
    return {**timings, "report": report, "result": result}


def fmt_mb(n):
    return f"{n / 1e6:.2f}"


def write_markdown(data: dict, path: Path) -> None:
    m = data["measured"]
    rows = []
    hdr = ("| IR | size MB | x fp32 | top-1 | agreement | min cosine | latency median ms | latency min ms "
           "| speed-up vs fp32 (median) | throughput img/s | build s |")
    rows.append(hdr)
    rows.append("|" + "|".join(["---"] * (hdr.count("|") - 1)) + "|")
    for key in data["order"]:
        r = m[key]
        rows.append(f"| {key} | {fmt_mb(r['size_bytes'])} | {r['size_vs_fp32']:.3f} | "
                    f"{r['correct']}/{r['n']} | {r['agree']}/{r['n']} | {r['cosine']:.5f} | "
                    f"{r['latency_median_ms']:.2f} | {r['latency_min_ms']:.2f} | "
                    f"{r['speedup_vs_fp32']:.2f}x | {r['throughput_fps']:.1f} | {r['build_s']:.1f} |")
    g = data["goals"]
    lines = [
        "# OpenVINO (intel target) — edgekiln vs plain ovc + nncf defaults",
        "",
        f"Model: real ImageNet MobileNetV2 (torchvision weights), ONNX opset 17, dynamic batch. "
        f"Calibration: {data['calibration_images']} ImageNet photos; validation: their "
        f"{data['validation_images']} mirror images (held out), labelled. PyTorch top-1 on them: "
        f"{data['source_correct']}/{data['validation_images']}.",
        f"Machine: {data['cpu']}, {data['cores']} cores (shared: other jobs ran during the "
        f"benchmark; latency: interleaved rounds, median and min; throughput: best of 5 "
        f"interleaved 1 s windows — throughput is the noisiest number here; 1-min load average "
        f"at the end: {data.get('load_average_1m', float('nan')):.1f}). "
        f"OpenVINO {data['versions']['openvino']}, NNCF {data['versions']['nncf']}. "
        f"Every number at INFERENCE_PRECISION_HINT=f32 (the plugin default here: "
        f"{data['default_precision']}).",
        "",
        *rows,
        "",
        f"edgekiln int8 options: {json.dumps(data['int8_options'])}.",
        "",
        "## Goals",
        "",
        *(f"- {k}: {'met' if v['met'] else 'NOT met'} ({v['value']})" for k, v in g.items()),
        "",
        "Caveat: 20 validation images: one image is 5 points of top-1. 'agreement' is top-1 "
        "agreement with the PyTorch reference outputs.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", help="the openvino environment's python (default: the local "
                                     "runner's env from images/openvino/requirements.txt)")
    ap.add_argument("--torch-python", help="python with torch + onnx, to build the source")
    ap.add_argument("--source", type=Path, help="an existing work/source (with spec.json)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--keep", action="store_true", help="keep the job folder")
    args = ap.parse_args(argv)
    ov_python = args.python
    if ov_python is None:
        sys.path.insert(0, str(ROOT))
        from edgekiln.runners.local import LocalRunner

        ov_python = LocalRunner().prepare("openvino").ref
    job = Path(tempfile.mkdtemp(prefix="ov-bench-"))
    try:
        src = job / "work" / "source"
        if args.source:
            shutil.copytree(args.source, src)
        else:
            build_source(src, args.torch_python)
        if not (src / "spec.json").is_file():
            raise SystemExit(f"{src} has no spec.json (the InputSpec); make it with bench/_mobilenet_source.py")
        ours = {}
        for p in PRECISIONS:
            print(f"edgekiln {p} ...", flush=True)
            ours[p] = render_and_run(job, ov_python, p)
        print("plain ovc + nncf defaults, and measuring ...", flush=True)
        cfg = {"job": str(job), "rounds": args.rounds,
               "irs": {f"edgekiln {p}": str(job / "work" / "intel" / p / "model.xml") for p in PRECISIONS}}
        cfg_path = job / "bench.json"
        cfg_path.write_text(json.dumps(cfg))
        proc = subprocess.run([ov_python, __file__, "--measure", str(cfg_path)], text=True)
        if proc.returncode:
            raise SystemExit("measuring failed")
        data = json.loads((job / "measured.json").read_text())
        for p in PRECISIONS:
            data["measured"][f"edgekiln {p}"]["build_s"] = ours[p]["convert_s"]
            data["measured"][f"edgekiln {p}"]["validate_report"] = {
                k: ours[p]["report"][k] for k in ("metrics", "latency_ms", "throughput_fps",
                                                  "inference_precision", "size_bytes")}
        data["int8_options"] = {k: v for k, v in ours["int8"]["report"].get("quantization", {}).items()}
        m = data["measured"]
        e8, p8, e32 = m["edgekiln int8"], m["plain int8"], m["edgekiln fp32"]
        drop_pt = (e32["correct"] - e8["correct"]) / e8["n"] * 100
        data["goals"] = {
            "int8 top-1 drop <= 0.5 pt": {"met": drop_pt <= 0.5, "value": f"{drop_pt:.1f} pt"},
            "int8 >= 1.8x faster than fp32 IR (median latency)": {
                "met": e8["speedup_vs_fp32"] >= 1.8, "value": f"{e8['speedup_vs_fp32']:.2f}x"},
            "int8 <= 0.3x fp32 size": {"met": e8["size_vs_fp32"] <= 0.3,
                                       "value": f"{e8['size_vs_fp32']:.3f}x"},
            "int8 never worse than plain defaults (top-1, agreement)": {
                "met": e8["correct"] >= p8["correct"] and e8["agree"] >= p8["agree"],
                "value": f"edgekiln {e8['correct']}/{e8['agree']} vs plain {p8['correct']}/{p8['agree']}"},
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "intel_vs_bare.json").write_text(json.dumps(data, indent=2) + "\n")
        write_markdown(data, args.out / "intel_vs_bare.md")
        print((args.out / "intel_vs_bare.md").read_text())
    finally:
        if args.keep:
            print(f"job kept: {job}")
        else:
            shutil.rmtree(job, ignore_errors=True)
    return 0


# --------------------------------------------------------------------------- inside the env

def measure(cfg_path: str) -> int:
    """Runs in the openvino environment: make the plain IRs, then measure all IRs alike."""
    from importlib import metadata

    import numpy as np
    import nncf
    import openvino as ov

    cfg = json.loads(Path(cfg_path).read_text())
    job = Path(cfg["job"])
    src = job / "work" / "source"
    plain = job / "plain"
    ovc = str(Path(sys.executable).parent / "ovc")
    irs = dict(cfg["irs"])
    build_s = {}
    for p, flags in (("fp32", ["--compress_to_fp16=False"]), ("fp16", [])):
        out = plain / p / "model.xml"
        t0 = time.perf_counter()
        subprocess.run([ovc, str(src / "model.onnx"), "--output_model", str(out), *flags], check=True,
                       stdout=subprocess.DEVNULL)
        build_s[f"plain {p}"] = time.perf_counter() - t0
        irs[f"plain {p}"] = str(out)
    calib = np.load(src / "calib.npy")
    t0 = time.perf_counter()
    core = ov.Core()
    q = nncf.quantize(core.read_model(irs["plain fp32"]),
                      nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]))
    ov.save_model(q, str(plain / "int8" / "model.xml"))
    build_s["plain int8"] = time.perf_counter() - t0
    irs["plain int8"] = str(plain / "int8" / "model.xml")

    with np.load(src / "reference.npz") as z:
        x, y0, labels = z["x"], z["y0"], z["labels"]
    order = [f"{w} {p}" for w in ("edgekiln", "plain") for p in PRECISIONS]
    cfg_lat = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    cfg_tp = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32"}
    res, reqs = {}, {}
    for key in order:
        xml = Path(irs[key])
        compiled = core.compile_model(core.read_model(str(xml)), "CPU", cfg_lat)
        req = compiled.create_infer_request()
        out = np.concatenate([np.asarray(req.infer({0: x[i:i + 1]})[compiled.outputs[0]])
                              for i in range(len(x))])
        cos = (out * y0).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(y0, axis=1))
        res[key] = {"size_bytes": xml.stat().st_size + xml.with_suffix(".bin").stat().st_size,
                    "n": int(len(x)), "correct": int((out.argmax(1) == labels).sum()),
                    "agree": int((out.argmax(1) == y0.argmax(1)).sum()),
                    "cosine": float(cos.min()), "max_abs": float(np.abs(out - y0).max()),
                    "build_s": build_s.get(key, 0.0), "lat": []}
        reqs[key] = (compiled, req)
    sample = np.ascontiguousarray(x[:1])
    for key in order:  # warm-up
        for _ in range(10):
            reqs[key][1].infer({0: sample})
    for _ in range(int(cfg["rounds"])):
        for key in order:
            req = reqs[key][1]
            for _ in range(25):
                t = time.perf_counter()
                req.infer({0: sample})
                res[key]["lat"].append((time.perf_counter() - t) * 1e3)
    del reqs
    tp = {k: [] for k in order}
    for _ in range(int(cfg.get("tp_rounds", 5))):
        for key in order:
            compiled = core.compile_model(core.read_model(irs[key]), "CPU", cfg_tp)
            n = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            queue = ov.AsyncInferQueue(compiled, n)
            for _ in range(n):
                queue.start_async({0: sample})
            queue.wait_all()
            done, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 1.0:
                for _ in range(n):
                    queue.start_async({0: sample})
                done += n
            queue.wait_all()
            tp[key].append(done / (time.perf_counter() - t0))
            del queue, compiled
    fp32_med = float(np.median(res["edgekiln fp32"]["lat"]))
    fp32_size = res["edgekiln fp32"]["size_bytes"]
    for key in order:
        lat = np.asarray(res[key].pop("lat"))
        res[key].update(latency_median_ms=float(np.median(lat)), latency_min_ms=float(lat.min()),
                        latency_p90_ms=float(np.percentile(lat, 90)), latency_runs=int(lat.size),
                        speedup_vs_fp32=fp32_med / float(np.median(lat)),
                        size_vs_fp32=res[key]["size_bytes"] / fp32_size,
                        throughput_fps=float(max(tp[key])), throughput_rounds=tp[key])
    plain_default = core.compile_model(core.read_model(irs["plain fp32"]), "CPU")
    data = {"order": order, "measured": res,
            "versions": {d: metadata.version(d) for d in ("openvino", "nncf", "numpy")},
            "cpu": str(core.get_property("CPU", "FULL_DEVICE_NAME")), "cores": os.cpu_count(),
            "default_precision": plain_default.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            "calibration_images": int(len(calib)), "validation_images": int(len(x)),
            "source_correct": int((y0.argmax(1) == labels).sum()),
            "load_average_1m": os.getloadavg()[0],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (job / "measured.json").write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        raise SystemExit(measure(sys.argv[2]))
    raise SystemExit(main())
