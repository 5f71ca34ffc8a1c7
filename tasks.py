"""Invoke tasks of edgekiln (`invoke --list`). The library's tasks are the installed `edgekiln`
program too; `bench` lives here because bench/ exists only in a checkout."""

import sys

from invoke import task

from edgekiln.cli import RELEASE_HELP, ns
from edgekiln.cli import release as _release


@task(help={"only": "run one benchmark (spine, onnx_quant_choices, openvino, tflite, demo_matrix)",
            "repeats": "repeats of the timed builds"})
def bench(c, only="", repeats=3):
    """Run the benchmarks in bench/ (numbers go to bench/results/*.json and *.md)."""
    scripts = {"spine": f"bench/spine.py --repeats {repeats}", "onnx_quant_choices": "bench/onnx_quant_choices.py",
               "openvino": "bench/openvino_bench.py", "tflite": "bench/tflite_bench.py",
               "demo_matrix": "bench/demo_matrix.py"}  # last: it rewrites docs/measurements.md's table
    for name, cmd in scripts.items():
        if only and name != only:
            continue
        c.run(f"{sys.executable} {cmd}", pty=False)


@task(help=dict(RELEASE_HELP, file="the release matrix file (default examples/release.toml)"))
def release(c, file="examples/release.toml", out="releases", dist="dist", check=False, jobs=1, runner="auto",
            docker_host=None, json=False, debug=False):
    """`edgekiln release` with the example as its default file: `invoke release [--check]`."""
    return _release.body(c, file, out=out, dist=dist, check=check, jobs=jobs, runner=runner,
                         docker_host=docker_host, json=json, debug=debug)


ns.add_task(bench)
ns.add_task(release)  # replaces the installed program's `release`, whose file is positional
