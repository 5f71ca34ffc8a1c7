"""ekit.steps — the job and its I/O: what every converter script starts from (``step(__file__)``:
params, options, source/output folders, the resolved input spec), ``params``, ``paths``, ``work``,
``finish``, ``fail``, ``log``, ``warn``, ``write_json``, ``jsonable``, ``unmeasured``, and where a
validation ran (``where``, ``finish_validation``). See converters/README.md for the contract.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

# when the step's script imported ekit: the clock of the whole step (e.g. --recover's budget is a
# multiple of the plain int8 step's time so far)
STARTED = time.perf_counter()

ERROR_MARK = "EDGEKILN-ERROR "
ERROR_KINDS = ("invalid_model", "data", "shape", "unsupported", "usage")
EXIT_USER_ERROR = 3

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pnm")
LABEL_FILES = ("labels.csv", "labels.txt")
CROP_FRACTION = 0.875
LETTERBOX_PAD = 114  # the grey Ultralytics and YOLOX pad with


# --------------------------------------------------------------------------- the job

def params(script_file: str | os.PathLike) -> dict:
    """The step's params: ``steps/NN-id.json`` next to ``steps/NN-id.py``."""
    path = Path(script_file).with_suffix(".json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class Options(dict):
    """A step's options (the target file's [options] + per-build overrides). Defaults live ONLY in
    targets/<target>.toml: a key missing here is a bug in the target file, said loudly."""

    def __missing__(self, key):
        fail("usage", f"option {key!r} is not set: targets/<target>.toml [options] must define it",
             "add it to the target file's [options] table")


class StepContext:
    """What every convert/validate script starts from (``ekit.step(__file__)``):

    * ``params`` — the step's params; ``options`` — ``Options`` (missing key: a loud failure);
    * ``target``, ``precision``;
    * ``src`` — ``work/source`` (the source step's outputs), ``out`` — the plan's ``out_dir``,
      ``work/<target>/<precision>`` (made by the script when it writes: a failed step leaves none);
    * ``io`` — ``work/source/io.json`` (``{}`` before the source step wrote it);
    * ``spec`` — THE resolved input spec: ``io.json``'s ``input_spec`` (what the source step
      resolved against the model) over the requested ``params["input"]`` — one merge rule for all.
    """

    def __init__(self, script_file: str | os.PathLike):
        self.params = params(script_file)
        self.options = Options(self.params.get("options") or {})
        self.target = self.params.get("target")
        self.precision = self.params.get("precision")
        self.src = work() / "source"
        out_dir = self.params.get("out_dir")  # the plan's; work/<target>/<precision>
        self.out = (Path.cwd() / out_dir if out_dir else
                    work() / self.target / self.precision if self.target and self.precision else None)
        io_path = self.src / "io.json"
        self.io = json.loads(io_path.read_text()) if io_path.is_file() else {}
        self.spec = resolved_spec(self.params.get("input") or {}, self.io)


def resolved_spec(requested: dict, io: dict) -> dict:
    """The input spec a convert/validate step uses: the source step's resolved ``input_spec``
    (io.json) wins key by key over the requested one (params["input"])."""
    spec = dict(requested or {})
    spec.update((io or {}).get("input_spec") or {})
    if (io or {}).get("input_spec"):
        spec.pop("resize_auto", None)  # the source step resolved it (ekit_task.letterbox_detector)
    return spec


def step(script_file: str | os.PathLike) -> StepContext:
    return StepContext(script_file)


def paths() -> dict:
    """Where the read-only inputs are inside this environment (env var EKIT_PATHS, JSON)."""
    raw = os.environ.get("EKIT_PATHS")
    if not raw:
        fail("usage", "EKIT_PATHS is not set: run this script through edgekiln "
                      "(the runner tells it where the model and data are)")
    value = json.loads(raw)
    return {"model": value.get("model"), "calib": value.get("calib"), "val": value.get("val"),
            **{k: v for k, v in value.items() if k not in ("model", "calib", "val")}}


def work() -> Path:
    """The job's shared output folder (``<cwd>/work``)."""
    return Path.cwd() / "work"


def log(msg: str) -> None:
    """One progress line (stdout, flushed so the host can stream it)."""
    print(msg, flush=True)


_WARNED: set[str] = set()


def warn(msg: str) -> None:
    """A warning the host shows the user (``warning: `` lines); the same one only once."""
    if msg not in _WARNED:
        _WARNED.add(msg)
        log(f"warning: {msg}")


def fail(kind: str, message: str, hint: str | None = None):
    """Stop with a user error the host understands (last stderr line, exit code 3)."""
    sys.stdout.flush()
    line = json.dumps({"kind": kind, "message": str(message), "hint": hint}, ensure_ascii=True)
    print(ERROR_MARK + line, file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def versions_of(dists) -> dict:
    """``{dist: version}`` as installed in THIS environment (None when not installed)."""
    from importlib import metadata

    out = {}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = None
    return out


def finish(script_file: str | os.PathLike, versions, **extra) -> Path:
    """Write ``work/results/<step>.json`` = ``{"step", "versions": {...}, **extra}``."""
    step = Path(script_file).stem
    data = {"step": step, "versions": versions_of(versions),
            "python": ".".join(map(str, sys.version_info[:3]))}
    data.update(jsonable(extra))
    path = work() / "results" / f"{step}.json"
    write_json(path, data)
    log(f"{step}: done")
    return path


def write_json(path: str | os.PathLike, data) -> None:
    """Write JSON atomically (temp file + rename), numpy values made plain."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(jsonable(data), f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def unmeasured(value):
    """``value`` without what was measured rather than made — wall-clock keys (``seconds``,
    ``*_seconds``), at any depth — for what goes INTO an artifact's bytes (OpenVINO's rt_info):
    two builds of the same inputs must give the same file. The step's result keeps them."""
    if isinstance(value, dict):
        return {k: unmeasured(v) for k, v in value.items()
                if not (isinstance(k, str) and (k == "seconds" or k.endswith("_seconds")))}
    if isinstance(value, (list, tuple)):
        return [unmeasured(v) for v in value]
    return value


def jsonable(value):
    """numpy scalars/arrays, Paths, tuples -> plain JSON values; NaN/inf -> None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value



# -- where a validation ran, and the Arm validation (edgekiln.emulation) -------------------------

EMULATED_LATENCY = "emulated — not a device figure"


def where() -> dict:
    """Where this step runs: ``machine`` (aarch64, x86_64), ``emulated`` (QEMU user mode: the
    runner sets QEMU_CPU only for a platform its engine emulates), ``cpu`` (the emulated core, else
    the CPU's model name or Arm part number from /proc/cpuinfo)."""
    import platform

    qemu = os.environ.get("QEMU_CPU")
    cpu = qemu
    if not cpu:
        info = {}
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
        except OSError:
            pass
        cpu = info.get("model name") or (f"Arm part {info['CPU part']}" if "CPU part" in info else None)
    found = {"machine": platform.machine(), "emulated": bool(qemu), "cpu": cpu,
             "how": "QEMU user mode" if qemu else "native"}
    if not qemu and found["machine"] == "x86_64":  # what decides the int8 kernel path (edgekiln.isa)
        found["flags"] = sorted(cpu_flags() & ISA_FLAGS)
    return found


# the /proc/cpuinfo flags that decide an x86 CPU's int8 kernel path (edgekiln/isa.py classifies them)
ISA_FLAGS = {"sse4_2", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"}


def cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def finish_validation(p: dict, out_dir: Path, report: dict, outputs) -> Path:
    """Write a validate step's report (``p["report_name"]``, default report.json) with ``where``.
    ``p["save_outputs"]``: keep this machine's outputs (outputs.npz) for an Arm validation to
    compare with; ``p["compare_with"]``: that file, so the report says ``vs_native`` (max/mean
    difference, cosine, top-1 agreement, bit-identical or not). An emulated latency is labelled."""
    report["where"] = where()
    elsewhere = p.get("elsewhere") or {}
    if elsewhere.get("cpu_class"):  # validated on a declared x86 CPU class (QEMU user mode)
        report["where"]["cpu_class"] = elsewhere["cpu_class"]
    if p.get("save_outputs"):
        np.savez(out_dir / "outputs.npz", *[np.asarray(o) for o in outputs])
    if p.get("compare_with"):
        with np.load(out_dir / p["compare_with"]) as z:
            native = [z[f"arr_{i}"] for i in range(len(z.files))]
        from .comparison import compare

        vs = compare(native, outputs)
        vs = {k: vs.get(k) for k in ("n", "max_abs", "mean_abs", "cosine", "top1_agreement")}
        vs["identical"] = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(native, outputs))
        report["vs_native"] = vs
        log(f"vs this machine's validation ({p['compare_with']}): identical={vs['identical']}, "
            f"max_abs={vs['max_abs']}, cosine={vs['cosine']}, top-1 agreement={vs['top1_agreement']}")
    if report["where"]["emulated"]:
        if report.get("latency_ms"):
            report["latency_ms"]["label"] = EMULATED_LATENCY
        what = (f"the {elsewhere['cpu_class']} kernels of the same runtime build" if elsewhere.get("cpu_class")
                else f"the {report['where']['machine']} build of the runtime's")
        report.setdefault("notes", []).append(
            f"validated on {report['where']['machine']} under QEMU user mode (QEMU_CPU="
            f"{report['where']['cpu']}): the outputs are {what}; the latency is {EMULATED_LATENCY}")
    path = out_dir / p.get("report_name", "report.json")
    write_json(path, report)
    return path
