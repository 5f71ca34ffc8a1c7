"""Arm validation under QEMU user mode (issue 13), measured: the demo MobileNetV2 built for rpi
(int8, fp32) and onnx (int8) twice — on this x86 machine only, and with ``--platform linux/arm64``
(each artifact validated again in the arm64 image under QEMU, .ci/arm64-up.sh) — through the CLI
as a user runs it. From the published manifests: the x86 vs arm64 output difference per precision,
top-1 agreement and cosine vs the source on each machine, the seconds of each step, and the wall
time the Arm validation adds to a build. The bare-tool row per artifact: the same .tflite / .onnx
run by LiteRT / ONNX Runtime directly in the arm64 container (``docker run`` by hand, no edgekiln),
whose outputs must equal edgekiln's arm64 validation's.

Writes bench/results/arm64_validation.{json,md}. Needs Docker and .ci/arm64-up.sh (root).
Run: ``python bench/arm64_validation.py``.
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

from edgekiln import emulation  # noqa: E402
from edgekiln.demo import demo_build_args, demo_data  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ARM_BASE = os.environ.get("EDGEKILN_TEST_ARM64_BASE", "edgekiln/stand-in-base-arm64:bookworm")
BUILDS = [("rpi", "int8,fp32"), ("onnx", "int8")]

# Bare tools in the arm64 container: the artifact on the reference inputs of the job, outputs saved.
BARE = {
    "rpi": ("import numpy as np, sys\nfrom ai_edge_litert.interpreter import Interpreter\n"
            "it = Interpreter(model_path=sys.argv[1], num_threads=4); it.allocate_tensors()\n"
            "d = it.get_input_details()[0]; o = it.get_output_details()[0]\n"
            "x = np.load(sys.argv[2])\nys = []\n"
            "for i in range(len(x)):\n    it.set_tensor(d['index'], x[i:i+1]); it.invoke(); ys.append(it.get_tensor(o['index']).copy())\n"
            "np.save(sys.argv[3], np.concatenate(ys))\n"),
    "onnx": ("import numpy as np, sys, onnxruntime as ort\n"
             "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
             "x = np.load(sys.argv[2]); n = s.get_inputs()[0].name\n"
             "np.save(sys.argv[3], np.concatenate([s.run(None, {n: x[i:i+1]})[0] for i in range(len(x))]))\n"),
}


def cli(args: list[str]) -> tuple[dict, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "edgekiln", *args, "--json", "--keep-job"],
                          capture_output=True, text=True, cwd=ROOT, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"edgekiln {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), time.monotonic() - t0


def build_args(target: str, precision: str, out: Path, arm: bool) -> list[str]:
    words = ["build"]
    for key, value in demo_build_args(demo_data(None), target, precision, str(out)).items():
        words += [f"--{key.replace('_', '-')}", value]
    return words + (["--platform", "linux/arm64", "--base-image", f"arm-validate={ARM_BASE}"] if arm else [])


def bare_feed(job: Path, target: str, precision: str, manifest: dict) -> Path:
    """The exact input the validate steps fed (reference.npz of the source step, fed as the report says)."""
    import numpy as np

    ref = np.load(job / "work" / "source" / "reference.npz")
    feed = manifest["feed"]
    if feed.get("input") == "pixels" or feed["dtype"] == "uint8":
        x = ref["pixels"].astype(feed["dtype"])
    else:
        x = ref["x"].astype(np.float32)
        if feed["layout"] == "nhwc" and x.shape[1] == 3:
            x = x.transpose(0, 2, 3, 1)
    path = job / f"bare-{target}-{precision}-in.npy"
    np.save(path, np.ascontiguousarray(x))
    return path


def bare_arm(job: Path, target: str, precision: str, art: dict, manifest: dict, cpu: str) -> dict:
    """Run the artifact with the runtime alone in the arm64 image; compare with edgekiln's arm64 outputs."""
    import numpy as np

    image = next(s for s in manifest["steps"] if s["id"].endswith("-validate-aarch64"))["environment"]["ref"]
    feed = bare_feed(job, target, precision, manifest)
    name = "model.tflite" if target == "rpi" else "model.onnx"
    script = job / f"bare-{target}.py"
    script.write_text(BARE[target])
    out = job / f"bare-{target}-{precision}-out.npy"
    t0 = time.monotonic()
    subprocess.run(["docker", "run", "--rm", "--init", "--platform", "linux/arm64", "--network", "none",
                    "-e", f"QEMU_CPU={cpu}", "-v", f"{job}:/job", "-v", f"{art['path']}:/art:ro", image,
                    "/opt/venv/bin/python", f"/job/{script.name}", f"/art/{name}", f"/job/{feed.name}",
                    f"/job/{out.name}"], check=True, capture_output=True, timeout=1800)
    seconds = time.monotonic() - t0
    bare = np.load(out)
    saved = np.load(job / "work" / target / precision / "outputs.npz")["arr_0"]
    report = json.loads((Path(art["path"]) / "report-aarch64.json").read_text())
    return {"seconds": round(seconds, 1), "raw_outputs_shape": list(bare.shape),
            "edgekiln_vs_native": report["vs_native"],
            "bare_arm_first_output_argmax_equals_x86": bool(
                (bare.reshape(len(bare), -1).argmax(1) == saved.reshape(len(saved), -1).argmax(1)).all())}


def main() -> int:
    ok, why = emulation.status()
    if not ok:
        raise SystemExit(f"no arm64 emulation here: {why}")
    rows, walls = [], {}
    with tempfile.TemporaryDirectory(prefix="arm64-bench-") as tmp:
        for target, precisions in BUILDS:
            x86, x86_s = cli(build_args(target, precisions, Path(tmp) / f"{target}-x86", False))
            arm, arm_s = cli(build_args(target, precisions, Path(tmp) / f"{target}-arm", True))
            walls[target] = {"precisions": precisions, "x86_only_s": round(x86_s, 1),
                             "with_arm64_s": round(arm_s, 1), "added_s": round(arm_s - x86_s, 1)}
            job = next((Path(tmp) / f"{target}-arm" / ".edgekiln" / "jobs").iterdir())
            for art in arm["artifacts"]:
                m = json.loads(Path(art["manifest"]).read_text())
                a = m["arm_validation"]
                steps = {s["id"]: s for s in m["steps"]}
                arm_id = next(i for i in steps if i.endswith("-validate-aarch64"))
                x86_id = next(i for i in steps if i.endswith("-validate") and i != arm_id)
                rows.append({
                    "target": target, "precision": art["precision"], "cpu": a["where"]["cpu"],
                    "runtime": a["runtime"], "x86": {"where": m["validation"]["where"],
                                                     "metrics": _m(m["validation"]["metrics"]),
                                                     "latency_median_ms": m["validation"]["latency_ms"]["median"],
                                                     "validate_s": steps[x86_id]["seconds"]},
                    "arm64": {"where": a["where"], "metrics": _m(a["metrics"]),
                              "latency_median_ms": a["latency_ms"]["median"], "latency_label": a["latency_ms"]["label"],
                              "validate_s": steps[arm_id]["seconds"],
                              "gates_passed": all(g["passed"] is not False for g in a["gates"])},
                    "x86_vs_arm64": a["vs_native"],
                    "bare_runtime_on_arm64": bare_arm(job, target, art["precision"], art, m, a["where"]["cpu"]),
                })
    data = {"machine": {"host": platform.machine(), "cores": os.cpu_count(), "qemu": why},
            "rows": rows, "builds": walls}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "arm64_validation.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    (RESULTS / "arm64_validation.md").write_text(markdown(data))
    print(markdown(data))
    return 0


def _m(metrics: dict) -> dict:
    return {k: metrics.get(k) for k in ("cosine", "top1_agreement", "accuracy", "source_accuracy", "max_abs")}


def markdown(d: dict) -> str:
    lines = ["# Arm validation under QEMU user mode (bench/arm64_validation.py)", "",
             f"Host: {d['machine']['host']}, {d['machine']['cores']} cores (shared, busy); {d['machine']['qemu']}. "
             "Demo MobileNetV2, 20 ImageNet photos calibrating, their 20 mirror images validating. "
             "Conversion ran on x86 in both builds; the arm64 validation ran in images/arm-validate under QEMU.", "",
             "| target/precision | QEMU_CPU | x86 vs arm64: identical / max abs / top-1 agr. | agreement x86 / arm64 | "
             "cosine x86 / arm64 | validate s x86 / arm64 | latency ms x86 / arm64 (emulated — not a device figure) | "
             "bare LiteRT / ORT alone on arm64: top-1 of all 20 = x86 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        v, x, a = r["x86_vs_arm64"], r["x86"], r["arm64"]
        lines.append(
            f"| {r['target']}/{r['precision']} | {r['cpu']} | {v['identical']} / {v['max_abs']:.3g} / {v['top1_agreement']} | "
            f"{x['metrics']['top1_agreement']} / {a['metrics']['top1_agreement']} | "
            f"{x['metrics']['cosine']:.6f} / {a['metrics']['cosine']:.6f} | {x['validate_s']} / {a['validate_s']} | "
            f"{x['latency_median_ms']:.2f} / {a['latency_median_ms']:.0f} | "
            f"{r['bare_runtime_on_arm64']['bare_arm_first_output_argmax_equals_x86']} |")
    lines += ["", "| build | precisions | x86 only (s) | with --platform linux/arm64 (s) | added (s) |", "|---|---|---|---|---|"]
    for t, w in d["builds"].items():
        lines.append(f"| {t} | {w['precisions']} | {w['x86_only_s']} | {w['with_arm64_s']} | {w['added_s']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
