"""int8 per x86 kernel path (issue 18): the same int8 files run natively on this machine and under
QEMU user mode as an AVX2 CPU without VNNI (``qemu-x86_64 -cpu Haswell-noTSX``: numbers identical to
native AVX2), on a classifier (the demo MobileNetV2, 20 photos) and a detector (YOLOv8n 320 px, 29
task photos).

* ONNX Runtime: edgekiln's former default (u8s8, 8-bit per-channel weights, percentile 99.999), the
  new AVX2 recipe (the same with ``reduce_range``: 7-bit weights), u8u8, s8s8, and bare ONNX Runtime
  ``quantize_static`` defaults — min cosine, top-1 agreement / det F1 vs the source on each path,
  bit-identity across paths, native single-thread latency (min of 40 interleaved runs).
* OpenVINO: ``edgekiln build --target intel --option overflow_fix=…`` (first_layer_only = NNCF's
  default, enable = edgekiln's AVX2 recipe), validated natively and on x86-64-v3 by the build itself.
* LiteRT (rpi int8): the same .tflite natively and emulated.

Latency is measured natively only (never under emulation): on an AVX2-only machine the AVX2 figures
need that machine. Writes bench/results/int8_isa.{json,md}.
Run: ``invoke bench --only int8_isa`` (needs /usr/local/lib/edgekiln/qemu-x86_64: .ci/arm64-up.sh).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekiln import isa  # noqa: E402
from edgekiln.demo import mobilenet_weights, photo_folders, task_photo_folders, yolov8n_onnx  # noqa: E402
from edgekiln.runners.local import LocalRunner  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from _common import flat_helpers, stamp  # noqa: E402

RESULTS = ROOT / "bench" / "results"
QEMU_CPU = isa.CLASSES["x86-64-v3"]["qemu"]
MNV2 = ["--input-shape", "1,3,224,224", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]

# run inside the onnx environment: quantize, run, score, time (ekit from converters/)
ORT = r'''
import json, sys, time, numpy as np
sys.path.insert(0, sys.argv[1])
import ekit, ekit_onnx, onnx
from ekit import task as ekit_task
from onnxruntime.quantization import quantize_static, QuantFormat, QuantType, CalibrationMethod
from onnxruntime.quantization.shape_inference import quant_pre_process
cmd, args = sys.argv[2], sys.argv[3:]
if cmd == "quantize":
    src, calib, out = args
    calib = np.load(calib)
    pre = out + "/pre.onnx"
    quant_pre_process(src, pre)
    m = onnx.load(pre)
    name, head = ekit_onnx.onnx_io(m)["inputs"][0]["name"], ekit_onnx.head_nodes(m)
    pct = dict(per_channel=True, calibrate_method=CalibrationMethod.Percentile, extra_options={"CalibPercentile": 99.999},
               nodes_to_exclude=head)
    U8, S8 = QuantType.QUInt8, QuantType.QInt8
    variants = {"u8s8 8-bit (former default)": dict(pct, activation_type=U8, weight_type=S8),
                "u8s8 7-bit reduce_range (AVX2 recipe)": dict(pct, activation_type=U8, weight_type=S8, reduce_range=True),
                "u8u8": dict(pct, activation_type=U8, weight_type=U8),
                "s8s8": dict(pct, activation_type=S8, weight_type=S8),
                "bare ORT defaults": {}}
    for i, (k, kw) in enumerate(variants.items()):
        quantize_static(pre, f"{out}/v{i}.onnx", ekit_onnx.calibration_reader(name, calib), quant_format=QuantFormat.QDQ, **kw)
    print(json.dumps({k: f"{out}/v{i}.onnx" for i, k in enumerate(variants)}))
elif cmd == "run":
    model, ref, dest = args
    r = ekit.read_reference(ref)
    ys = ekit_onnx.ort_run(ekit_onnx.ort_session(model, threads=1), r["x"].astype(np.float32))
    np.savez(dest, *ys)
elif cmd == "score":
    ref, outputs = args[0], args[1:]
    r = ekit.read_reference(ref)
    res = {}
    for f in outputs:
        with np.load(f) as z:
            ys = [z[f"arr_{i}"] for i in range(len(z.files))]
        m = ekit.compare(r["y"], ys, r["labels"])
        m.update(ekit_task.evaluate(r, ys, [f"out{i}" for i in range(len(ys))]))
        res[f] = {k: m.get(k) for k in ("cosine", "top1_agreement", "accuracy", "det_f1", "det_recall")}
    print(json.dumps(res))
elif cmd == "latency":
    res = {}
    sess = {}
    for m in args:
        s = ekit_onnx.ort_session(m, threads=1); i = s.get_inputs()[0]
        x = np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32)
        s.run(None, {i.name: x}); sess[m] = (s, i.name, x); res[m] = 1e9
    for _ in range(40):
        for m, (s, n, x) in sess.items():
            t = time.perf_counter(); s.run(None, {n: x}); res[m] = min(res[m], (time.perf_counter() - t) * 1e3)
    print(json.dumps(res))
elif cmd == "same":
    a, b = args
    with np.load(a) as x, np.load(b) as y:
        print(json.dumps(all(np.array_equal(x[k], y[k]) for k in x.files)))
'''


def sh(argv, **kw) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=7200, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv[:6]))} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def cli(args, env=None) -> dict:
    environ = dict(os.environ, **(env or {}))
    return json.loads(sh([sys.executable, "-m", "edgekiln", *args, "--json", "--runner", "local"], env=environ, cwd=ROOT))


def job_source(out: Path) -> Path:
    return next((out / ".edgekiln" / "jobs").iterdir()) / "work" / "source"


def ort_study(name, source: Path, tmp: Path, py: str, qemu: str, script: Path) -> dict:
    conv = flat_helpers()
    folder = tmp / f"ort-{name}"
    folder.mkdir()
    variants = json.loads(sh([py, script, conv, "quantize", source / "model.onnx", source / "calib.npy", folder]).splitlines()[-1])
    rows, latency = {}, json.loads(sh([py, script, conv, "latency", source / "model.onnx", *variants.values()]).splitlines()[-1])
    for label, model in variants.items():
        native, emulated = f"{model}.native.npz", f"{model}.avx2.npz"
        sh([py, script, conv, "run", model, source / "reference.npz", native])
        t0 = time.monotonic()
        sh([qemu, "-0", py, py, script, conv, "run", model, source / "reference.npz", emulated],
           env=dict(os.environ, QEMU_CPU=QEMU_CPU))
        seconds = time.monotonic() - t0
        scores = json.loads(sh([py, script, conv, "score", source / "reference.npz", native, emulated]).splitlines()[-1])
        same = json.loads(sh([py, script, conv, "same", native, emulated]).splitlines()[-1])
        rows[label] = {"native": scores[native], "avx2": scores[emulated], "identical": same,
                       "latency_ms_native": latency[model], "emulated_seconds": round(seconds, 1)}
        print(f"  {name} {label}: {rows[label]}", flush=True)
    return {"fp32_latency_ms_native": latency[str(source / "model.onnx")], "variants": rows}


def intel_study(model_args, calib, val, tmp: Path, name: str) -> dict:
    rows = {}
    for fix in ("first_layer_only", "enable"):
        out = tmp / f"ov-{name}-{fix}"
        gates = (["min_det_f1", "min_det_recall"] if name == "yolov8n" else ["min_top1_agreement"]) + ["min_cosine"]
        res = cli(["build", *model_args, "--target", "intel", "--precision", "int8", "--calib", calib, "--val", val,
                   "--option", f"overflow_fix={fix}", "--out", out,
                   *[w for g in gates for w in ("--threshold", f"int8.{g}=0")]],  # measured, not gated
                  env={"EDGEKILN_QEMU_X86_64": "auto"})
        manifest = json.loads(next(out.glob("*/*/intel/int8/manifest.json")).read_text())
        pick = lambda m: {k: m.get(k) for k in ("cosine", "top1_agreement", "accuracy", "det_f1", "det_recall")}  # noqa: E731
        other = manifest.get("cpu_validation") or {}
        rows[fix] = {"native": pick(manifest["validation"]["metrics"]), "avx2": pick(other.get("metrics") or {}),
                     "identical": (other.get("vs_native") or {}).get("identical"),
                     "latency_ms_native": manifest["validation"]["latency_ms"]["min"], "version": res["version"]}
        print(f"  intel {name} {fix}: {rows[fix]}", flush=True)
    return rows


def tflite_study(weights, calib, val, tmp: Path, qemu: str) -> dict:
    out = tmp / "rpi"
    cli(["build", "--model", weights, "--arch", "mobilenet_v2", *MNV2, "--target", "rpi", "--precision", "int8",
         "--calib", calib, "--val", val, "--out", out, "--keep-job"])
    work = job_source(out).parent
    py = LocalRunner().prepare("tflite").ref
    code = ("import sys, numpy as np\nfrom ai_edge_litert.interpreter import Interpreter\n"
            "it = Interpreter(model_path=sys.argv[1], num_threads=1); it.allocate_tensors()\n"
            "d = it.get_input_details()[0]; o = it.get_output_details()[0]\n"
            "x = np.load(sys.argv[2])['pixels']; ys = []\n"
            "for i in range(len(x)):\n    it.set_tensor(d['index'], x[i:i+1]); it.invoke(); ys.append(it.get_tensor(o['index']).copy())\n"
            "np.save(sys.argv[3], np.concatenate(ys))\n")
    native, emulated = tmp / "tfl-native.npy", tmp / "tfl-avx2.npy"
    args = ["-c", code, work / "rpi" / "int8" / "model.tflite", work / "source" / "reference.npz"]
    sh([py, *args, native])
    sh([qemu, "-0", py, py, *args, emulated], env=dict(os.environ, QEMU_CPU=QEMU_CPU))
    import numpy as np

    a, b = np.load(native), np.load(emulated)
    return {"identical": bool(np.array_equal(a, b)), "max_abs_diff": float(np.abs(a.astype(float) - b).max())}


def markdown(res: dict) -> str:
    f = lambda v, spec=".4f": "–" if v is None else format(v, spec)  # noqa: E731
    lines = [f"# int8 per x86 kernel path: native {res['host']['cpu_class']} vs emulated x86-64-v3 (AVX2, no VNNI)",
             "", f"{res['date']}, {res['host']['model']} ({res['host']['cpu_class']}), {res['machine']}; emulated: "
             f"QEMU user mode -cpu {QEMU_CPU}. Latency: native, single "
             "thread, min of 40 (a busy shared machine); no AVX2-only machine here, so no AVX2 latency.", ""]
    for name, study in res["ort"].items():
        metric = "det F1" if name == "yolov8n" else "top-1 agreement"
        key = "det_f1" if name == "yolov8n" else "top1_agreement"
        lines += [f"## ONNX Runtime, {name} (fp32 latency {f(study['fp32_latency_ms_native'], '.2f')} ms)", "",
                  f"| int8 variant | min cosine native | min cosine AVX2 | {metric} native | {metric} AVX2 | "
                  "identical outputs | latency ms (native) |", "|---|---|---|---|---|---|---|"]
        for label, r in study["variants"].items():
            lines.append(f"| {label} | {f(r['native']['cosine'])} | {f(r['avx2']['cosine'])} | "
                         f"{f(r['native'][key], '.3f')} | {f(r['avx2'][key], '.3f')} | {'yes' if r['identical'] else 'no'} | "
                         f"{f(r['latency_ms_native'], '.2f')} |")
        lines.append("")
    for name, rows in res["intel"].items():
        key = "det_f1" if name == "yolov8n" else "top1_agreement"
        lines += [f"## OpenVINO (NNCF), {name}", "", "| overflow_fix | min cosine native | min cosine AVX2 | "
                  f"{'det F1' if key == 'det_f1' else 'top-1'} native | AVX2 | identical | latency ms (native) |",
                  "|---|---|---|---|---|---|---|"]
        for fix, r in rows.items():
            lines.append(f"| {fix} | {f(r['native']['cosine'])} | {f(r['avx2'].get('cosine'))} | {f(r['native'][key], '.3f')} | "
                         f"{f(r['avx2'].get(key), '.3f')} | {'yes' if r['identical'] else 'no'} | {f(r['latency_ms_native'], '.2f')} |")
        lines.append("")
    t = res["tflite"]
    lines += ["## LiteRT (rpi int8, XNNPACK), MobileNetV2", "",
              f"Native vs AVX2 outputs: {'bit-identical' if t['identical'] else 'max |diff| ' + f(t['max_abs_diff'])}.", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    here = isa.host()
    qemu = isa.find_qemu()
    if qemu is None or not qemu.ok():
        raise SystemExit(f"no QEMU user mode for x86-64: {isa.QEMU_FIX}")
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "host": {"cpu_class": here.cpu_class, "model": here.model}, "ort": {}, "intel": {}}
    weights = mobilenet_weights()
    with tempfile.TemporaryDirectory(prefix="int8-isa-") as tmpdir:
        tmp = Path(tmpdir)
        calib, val = photo_folders(tmp / "photos")
        tcalib, tval = task_photo_folders()
        yolo = tmp / "yolov8n.onnx"
        yolo.write_bytes(Path(yolov8n_onnx()).read_bytes())
        (tmp / "yolov8n.onnx.edgekiln.toml").write_text('shape = [1, 3, 320, 320]\nresize = "letterbox"\n')
        script = tmp / "ort_isa.py"
        script.write_text(ORT)
        py = LocalRunner().prepare("onnx").ref
        mnv2_args = ["--model", weights, "--arch", "mobilenet_v2", *MNV2, "--name", "mobilenet_v2"]
        for name, args, (c, v) in (("mobilenet_v2", mnv2_args, (calib, val)), ("yolov8n", ["--model", yolo], (tcalib, tval))):
            out = tmp / f"src-{name}"
            cli(["build", *args, "--target", "onnx", "--precision", "fp32", "--calib", c, "--val", v, "--out", out,
                 "--keep-job"])
            res["ort"][name] = ort_study(name, job_source(out), tmp, py, qemu.path, script)
            res["intel"][name] = intel_study(args, c, v, tmp, name)
        res["tflite"] = tflite_study(weights, calib, val, tmp, qemu.path)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "int8_isa.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "int8_isa.md").write_text(markdown(res))
    for name in ("int8_isa.json", "int8_isa.md"):
        stamp(RESULTS / name, "invoke bench --only int8_isa")
    print(markdown(res))


if __name__ == "__main__":
    main()
