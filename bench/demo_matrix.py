"""The "measured here" table (docs/measurements.md), from a real run: the demo MobileNetV2 built for every CPU
target × precision with the local runner (calibrated on the 20 ImageNet photos, validated on their
mirror images), numbers read back from the published manifests.

Writes bench/results/demo_matrix.json and demo_matrix.md, and rewrites the table between the
``<!-- measured:begin -->`` and ``<!-- measured:end -->`` markers of docs/measurements.md, so no
number there lacks a file behind it. Run: ``invoke bench --only demo_matrix`` or
``python bench/demo_matrix.py [--no-docs]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekiln.build import run_build  # noqa: E402
from edgekiln.demo import DEMO_BUILD, demo_data  # noqa: E402
from edgekiln.request import make_request  # noqa: E402
from edgekiln.runners.local import LocalRunner  # noqa: E402
from edgekiln.ui import PlainUI  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "measurements.md"
BEGIN, END = "<!-- measured:begin -->", "<!-- measured:end -->"
MATRIX = {"onnx": "fp32,int8", "intel": "fp32,fp16,int8", "rpi": "fp32,int8"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(out: Path) -> list[dict]:
    data = demo_data()
    runner = LocalRunner()
    rows = []
    for target, precisions in MATRIX.items():
        request = make_request(model=str(data["model"]), target=target, precision=precisions,
                               calib=str(data["calib"]), val=str(data["val"]), out=str(out), **{
                                   k: v for k, v in DEMO_BUILD.items()})
        t0 = time.monotonic()
        result = run_build(request, PlainUI(quiet=True), lambda step=None: runner)
        seconds = round(time.monotonic() - t0, 1)
        for art in result.artifacts:
            val = art.manifest["validation"]
            m = val["metrics"]
            rows.append({"target": art.target, "precision": art.precision, "size_bytes": val["size_bytes"],
                         "n": m.get("n"), "top1_agreement": m.get("top1_agreement"),
                         "accuracy": m.get("accuracy"), "source_accuracy": m.get("source_accuracy"),
                         "cosine": m.get("cosine"), "latency_ms": (val.get("latency_ms") or {}).get("median"),
                         "latency_min_ms": (val.get("latency_ms") or {}).get("min"),
                         "build_seconds_all_precisions": seconds})
    return rows


def table(rows: list[dict], cpu: str, load: float | None = None) -> str:
    def frac(v, n):
        return "-" if v is None else f"{round(v * n)}/{n}"

    lines = [f"Measured by `bench/demo_matrix.py` on {cpu} (2 cores, no GPU; numbers in "
             "`bench/results/demo_matrix.json`): the demo MobileNetV2, calibrated on 20 ImageNet photos, "
             "validated on their mirror images, local runner."
             + (f" Load average during the run: {load:.1f} on 2 cores" + (" — latencies are noisy, compare "
                "them within one run only." if load > 1.5 else ".") if load is not None else ""), "",
             "| target | precision | size | top-1 agreement with PyTorch | top-1 (PyTorch: {}) | min cosine "
             "| latency: median (min) |"
             .format(frac(rows[0]["source_accuracy"], rows[0]["n"]) if rows else "-"),
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['precision']} | {r['size_bytes'] / 1e6:.1f} MB | "
                     f"{frac(r['top1_agreement'], r['n'])} | {frac(r['accuracy'], r['n'])} | "
                     f"{r['cosine']:.4f} | {r['latency_ms']:.1f} ms"
                     + (f" ({r['latency_min_ms']:.1f})" if r.get("latency_min_ms") is not None else "") + " |")
    return "\n".join(lines)


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC} lacks the {BEGIN} … {END} markers")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/measurements.md")
    args = parser.parse_args()
    cpu = cpu_model()
    import os

    before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="edgekiln-demo-matrix-") as tmp:
        rows = measure(Path(tmp))
    load = max(before, os.getloadavg()[0])
    data = {"cpu": cpu, "cores": __import__("os").cpu_count(), "python": platform.python_version(),
            "measured": time.strftime("%Y-%m-%d"), "load_average": round(load, 2), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "demo_matrix.json").write_text(json.dumps(data, indent=2) + "\n")
    text = table(rows, cpu, load)
    (RESULTS / "demo_matrix.md").write_text("# Demo matrix\n\n" + text + "\n")
    if not args.no_docs:
        write_doc(text)
    print(text)


if __name__ == "__main__":
    main()
