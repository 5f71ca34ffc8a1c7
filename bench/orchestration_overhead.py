"""Benchmark of the spine (issue 2): what edgekiln's orchestration costs over the bare tools.

(a) cache hit: an identical rebuild (in-process and through the CLI) against the time to sha256
    the model once;
(b) cold build: a full local build of the real MobileNetV2 (state dict → ONNX → fp32 + int8,
    validated) against the SAME converter scripts run bare with the environments' python, one after
    the other, side by side in this run. Environment creation is excluded from both and reported
    separately (``--with-env`` times it in a fresh cache).

Writes bench/results/orchestration_overhead.json and .md. Run: ``invoke bench`` or ``python bench/orchestration_overhead.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekiln.build import prepare, run_build  # noqa: E402
from edgekiln.demo import mobilenet_weights, photo_folders  # noqa: E402
from edgekiln.render import render_job  # noqa: E402
from edgekiln.request import BuildRequest, InputSpec  # noqa: E402
from edgekiln.runners.base import Job  # noqa: E402
from edgekiln.runners.local import LocalRunner  # noqa: E402
from edgekiln.store import sha256_file  # noqa: E402
from edgekiln.ui import PlainUI  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def request(out: Path, calib: Path, val: Path) -> BuildRequest:
    return BuildRequest(model=mobilenet_weights(), model_name="mobilenet_v2", source_format="state_dict",
                        targets=("onnx",), precisions=("fp32", "int8"), arch="mobilenet_v2",
                        input=InputSpec(shape=(1, 3, 224, 224), mean=(0.485, 0.456, 0.406),
                                        std=(0.229, 0.224, 0.225)),
                        calib=calib, val=val, out=out)


def bare(req: BuildRequest, runner: LocalRunner, workdir: Path) -> float:
    """The same rendered scripts, run directly with each environment's python (no edgekiln)."""
    plan = prepare(req).plan
    render_job(plan, workdir)
    job = Job(workdir, {"model": req.model, "calib": req.calib, "val": req.val})
    envs = {img: runner.prepare(img) for img in plan.images}
    environ = dict(os.environ, PYTHONPATH=str(workdir), EKIT_PATHS=json.dumps(runner.paths(job)))
    start = time.monotonic()
    for step in plan.steps:
        subprocess.run([envs[step.image].ref, step.script], cwd=workdir, env=environ, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--with-env", action="store_true", help="also time environment creation (minutes)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="edgekiln-bench-"))
    calib, val = photo_folders(tmp / "photos")
    runner = LocalRunner()
    ui = PlainUI(quiet=True)
    for img in ("torch", "onnx"):
        runner.prepare(img)

    builds, bares = [], []
    for i in range(args.repeats):  # interleaved so drift hits both sides alike
        t0 = time.monotonic()
        run_build(request(tmp / f"out{i}", calib, val), ui, lambda target: runner)
        builds.append(time.monotonic() - t0)
        bares.append(bare(request(tmp / f"bare-out{i}", calib, val), runner, tmp / f"bare{i}"))

    req = request(tmp / "out0", calib, val)
    hits = []
    for _ in range(max(5, args.repeats)):
        t0 = time.monotonic()
        result = run_build(req, ui, lambda target: runner)
        hits.append(time.monotonic() - t0)
        assert {a.status for a in result.artifacts} == {"cached"}
    cli_hits = []
    cli = [sys.executable, "-m", "edgekiln", "build", "--target", "onnx", "--model", str(req.model),
           "--arch", "mobilenet_v2", "--input-shape", "1,3,224,224", "--mean", "0.485,0.456,0.406",
           "--std", "0.229,0.224,0.225", "--precision", "fp32,int8", "--calib", str(calib), "--val", str(val),
           "--name", "mobilenet_v2", "--out", str(tmp / "out0"), "--runner", "local", "--json"]
    for _ in range(3):
        t0 = time.monotonic()
        subprocess.run(cli, check=True, capture_output=True, cwd=ROOT)
        cli_hits.append(time.monotonic() - t0)
    hashes = []
    for _ in range(5):
        t0 = time.monotonic()
        sha256_file(req.model)
        hashes.append(time.monotonic() - t0)

    env_seconds = None
    if args.with_env:
        fresh = LocalRunner(root=tmp / "envs")
        env_seconds = {}
        for img in ("torch", "onnx"):
            t0 = time.monotonic()
            fresh.prepare(img)
            env_seconds[img] = round(time.monotonic() - t0, 1)

    med = statistics.median
    data = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "model": "MobileNetV2 (torchvision ImageNet weights), fp32 + int8, 20 calib + 20 val photos",
        "cold_build_s": [round(x, 2) for x in builds], "bare_calls_s": [round(x, 2) for x in bares],
        "cold_over_bare": round(med(builds) / med(bares), 3),
        "cache_hit_s": round(med(hits), 4), "cache_hit_cli_s": round(med(cli_hits), 3),
        "sha256_model_s": round(med(hashes), 4), "model_bytes": req.model.stat().st_size,
        "env_creation_s": env_seconds,
        "goals": {"cache_hit_s": "< 0.5", "cold_over_bare": "<= 1.05"},
    }
    (RESULTS / "orchestration_overhead.json").write_text(json.dumps(data, indent=2) + "\n")
    md = [
        "# Spine benchmark", "", f"{data['model']}; {data['machine']['cpus']} CPUs.", "",
        "| measure | edgekiln | bare | ratio | goal |", "|---|---|---|---|---|",
        f"| cold build (median of {args.repeats}) | {med(builds):.2f} s | {med(bares):.2f} s | "
        f"{data['cold_over_bare']:.3f}× | ≤ 1.05× |",
        f"| cache hit, in process | {data['cache_hit_s'] * 1000:.0f} ms | sha256 of model: "
        f"{data['sha256_model_s'] * 1000:.0f} ms | {data['cache_hit_s'] / data['sha256_model_s']:.1f}× | < 0.5 s |",
        f"| cache hit, CLI process | {data['cache_hit_cli_s'] * 1000:.0f} ms | | | < 0.5 s |",
    ]
    if env_seconds:
        md.append(f"| environment creation (excluded above) | {env_seconds} | | | |")
    (RESULTS / "orchestration_overhead.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
