"""Release numbers on the demo MobileNetV2 × onnx fp32/int8 (real weights, 20 real photos).

    python bench/release_cold_cached_check.py                       ->  bench/results/release_cold_cached_check.{json,md}
    python bench/release_cold_cached_check.py --matrix examples/release.toml --name release_example

Measures, with the CLI in a subprocess and the local runner (environments already made):
* a cold release (empty build store) vs a fully cached one (same store, new release root) vs
  the same release again (a no-op);
* ``release --check``: files identical / compared (rebuild from scratch in a temporary root);
* archive sizes, next to the bare tools run side by side on the same folder: GNU tar's
  reproducible recipe (``--sort=name --mtime --owner=0 --numeric-owner``) piped into ``gzip -n -9``.
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
sys.path.insert(0, str(ROOT))

from edgekiln.archive import sha256_file  # noqa: E402
from edgekiln.demo import mobilenet_weights, photo_folders  # noqa: E402

MATRIX = """\
[release]
name = "bench"
version = "1.0.0"
date = 2026-11-28

[targets]
onnx = ["fp32", "int8"]

[models.mobilenet_v2]
path = "{weights}"
arch = "mobilenet_v2"
input = {{ shape = [1, 3, 224, 224], mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] }}
calib = "{calib}"
val = "{val}"
"""


def release(*args) -> tuple[float, dict]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "edgekiln", "release", *map(str, args), "--runner", "local",
                           "--json"], cwd=ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    if proc.returncode not in (0, 13):
        sys.exit(f"release {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout)


def bare_tar(folder: Path, dest: Path, epoch: int) -> tuple[float, int]:
    t0 = time.monotonic()
    with open(dest, "wb") as fh:
        tar = subprocess.Popen(["tar", "--sort=name", f"--mtime=@{epoch}", "--owner=0", "--group=0",
                                "--numeric-owner", "--mode=go-w,a+rX", "-C", str(folder.parent), "-cf", "-",
                                folder.name], stdout=subprocess.PIPE)
        subprocess.run(["gzip", "-n", "-9"], stdin=tar.stdout, stdout=fh, check=True)
        tar.wait()
    return time.monotonic() - t0, dest.stat().st_size


def rerun_on_one_cpu(folder: Path, tmp: Path) -> dict:
    """Re-run a published build's own commands (build/commands.sh: source + convert) pinned to one
    CPU, from a copy of its build/ folder, and compare the artifact with the published one: does
    the thread count change the bytes?"""
    job = tmp / "rerun-one-cpu"
    shutil.copytree(folder / "build", job)
    for line in (job / "commands.sh").read_text().splitlines():
        if line and not line.startswith("#") and "-validate.py" not in line:
            subprocess.run(["taskset", "-c", "0", "sh", "-c", line], cwd=job, check=True, capture_output=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    out_dir = job / "work" / manifest["target"] / manifest["precision"]
    files = {f["path"]: f["sha256"] == sha256_file(out_dir / f["path"]) for f in manifest["files"]}
    return {"artifact": f"{manifest['target']}/{manifest['precision']}", "cpus_of_the_build": os.cpu_count(),
            "rerun_cpus": 1, "identical": files}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--matrix", help="a release file (default: the demo × onnx fp32/int8)")
    parser.add_argument("--name", default="release_cold_cached_check", help="results file name in bench/results/")
    parser.add_argument("--store", help="build store (dist) to reuse: the first release is then not cold "
                                        "(the results say so); default: an empty temporary one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekiln-release-bench-") as tmp:
        tmp = Path(tmp)
        if args.matrix:
            file = Path(args.matrix).resolve()
        else:
            calib, val = photo_folders()
            file = tmp / "release.toml"
            file.write_text(MATRIX.format(weights=mobilenet_weights(), calib=calib, val=val))
        dist = Path(args.store).resolve() if args.store else tmp / "dist"
        cold_s, cold = release(file, "--out", tmp / "a", "--dist", dist, "-j", "2")
        cached_s, cached = release(file, "--out", tmp / "b", "--dist", dist, "-j", "2")
        again_s, again = release(file, "--out", tmp / "b", "--dist", dist)
        check_s, check = release(file, "--out", tmp / "b", "--dist", dist, "-j", "2", "--check")
        rel = Path(cached["path"])
        epoch = json.loads((rel / "release.json").read_text())["source_date_epoch"]
        entries = sorted({p.parent.relative_to(rel).as_posix() for p in rel.glob("*/*/*/manifest.json")})
        staging = tmp / "bare" / rel.name
        staging.mkdir(parents=True)
        for e in entries:  # the same loose files edgekiln archives, for the bare tools
            subprocess.run(["cp", "-r", "--parents", e, str(staging)], cwd=rel, check=True)
        bare_s, bare_size = bare_tar(staging, tmp / "bare.tar.gz", epoch)
        t0 = time.monotonic()
        from edgekiln.archive import write_tar_gz

        ours = write_tar_gz(tmp / "ours.tar.gz", [(f"{rel.name}/{p.relative_to(staging).as_posix()}", p)
                                                  for p in staging.rglob("*") if p.is_file()], epoch)
        ours_s = time.monotonic() - t0
        int8 = next((Path(e["build"]) for k, e in cold["entries"].items() if k.endswith("/onnx/int8")), None)
        one_cpu = rerun_on_one_cpu(int8, tmp) if int8 else None
        counts = check["check"]["counts"]
        result = {
            "matrix": (file.relative_to(ROOT).as_posix() if file.is_relative_to(ROOT) else str(file))
            if args.matrix else "demo MobileNetV2 x onnx fp32,int8",
            "cold_release_s": round(cold_s, 1), "cached_release_s": round(cached_s, 1),
            "same_release_again_s": round(again_s, 1), "check_s": round(check_s, 1),
            "statuses": {"cold": sorted({e["status"] for e in cold["entries"].values()}),
                         "cached": sorted({e["status"] for e in cached["entries"].values()}),
                         "again": again["status"]},
            "check": {"identical": counts.get("identical", 0),
                      "compared": sum(counts.values()) - counts.get("excluded", 0),
                      "excluded": counts.get("excluded", 0), "differing": counts.get("differing", 0),
                      "missing": counts.get("missing", 0),
                      "not_identical": [f for f in check["check"]["files"]
                                        if f["status"] not in ("identical", "excluded")]},
            "archives": cached["archives"],
            "one_cpu_rerun": one_cpu,
            "bare_tools": {"edgekiln_archive_s": round(ours_s, 2), "edgekiln_archive_bytes": ours.stat().st_size,
                           "gnu_tar_gzip_n9_s": round(bare_s, 2), "gnu_tar_gzip_n9_bytes": bare_size},
        }
    out = ROOT / "bench" / "results"
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    c = result["check"]
    lines = [
        "# Release: cold vs cached, `--check`, archive sizes", "",
        f"Matrix: {result['matrix']}; local runner, environments already made; 2 cores.", "",
        "| what | seconds |", "|---|---|",
        f"| first release (entries {'/'.join(result['statuses']['cold'])}) | {result['cold_release_s']} |",
        f"| fully cached release (same store, new release root) | {result['cached_release_s']} |",
        f"| the same release again (no-op) | {result['same_release_again_s']} |",
        f"| `release --check` (release exists; rebuild from scratch + compare) | {result['check_s']} |", "",
        f"`release --check`: **{c['identical']}/{c['compared']} files identical**, {c['differing']} differing, "
        f"{c['missing']} missing, {c['excluded']} excluded by the rule (measured.json, report.html, report.md).", "",
        *[f"- {f['status']}: {f['path']} ({f['detail']})" for f in c["not_identical"]], "",
        *([f"Thread count: the published onnx/int8 build re-run by its own build/commands.sh pinned to 1 CPU "
           f"(the build had {one_cpu['cpus_of_the_build']}): identical bytes: {one_cpu['identical']}.", ""]
          if one_cpu else []),
        "| archive | bytes |", "|---|---|",
        *[f"| {a['path']} | {a['size']} |" for a in result["archives"]], "",
        "Bare tools on the same loose files (every artifact folder):", "",
        "| tool | seconds | bytes |", "|---|---|---|",
        f"| edgekiln.archive (tarfile GNU format + gzip -9, mtime 0, no name) | {result['bare_tools']['edgekiln_archive_s']} "
        f"| {result['bare_tools']['edgekiln_archive_bytes']} |",
        f"| `tar --sort=name --mtime=@E --owner=0 --numeric-owner \\| gzip -n -9` | {result['bare_tools']['gnu_tar_gzip_n9_s']} "
        f"| {result['bare_tools']['gnu_tar_gzip_n9_bytes']} |", ""]
    (out / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
