"""NNCF int8 settings for the intel (OpenVINO) target, measured by what the outputs MEAN — the
same models, photos and metrics as bench/ort_int8_by_task.py (which see), NNCF instead of ORT:

  bare NNCF defaults     nncf.quantize(model, dataset) and nothing else
  edgekiln before        preset performance, full bias correction (the MobileNetV2 choice)
  + head float           the same, the decode tail after the last Conv kept float
                         (ekit_ov.head_names -> nncf.IgnoredScope, what targets/intel.toml does)
  mixed + head float     preset mixed (asymmetric activations), head float

Artifact vs the fp32 IR on the validation photos, CPU, INFERENCE_PRECISION_HINT f32.

    python bench/nncf_int8_by_task.py --detector D.onnx --map-model M.onnx --classifier C.onnx

Run in the openvino image's environment (images/openvino). Writes bench/results/nncf_int8_by_task.*
"""

from __future__ import annotations

ENV = 'openvino'  # the converter environment this study runs in (bench/_common.py, invoke bench)

import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# converters/ (on sys.path for ekit*) has a torch/ folder of templates: without a real torch in
# this environment it would import as an empty namespace package and break nncf's optional import.
sys.modules.setdefault("torch", None)
import ort_int8_by_task as tq  # noqa: E402  (puts converters/ and the repo on sys.path)

import ekit  # noqa: E402
import ekit_ov  # noqa: E402

VARIANTS = [
    # label, kwargs for nncf.quantize, head float
    ("bare NNCF defaults", {}, False),
    ("edgekiln before: performance, full bias correction", {"preset": "performance", "fast_bias_correction": False}, False),
    ("performance + head float", {"preset": "performance", "fast_bias_correction": False}, True),
    ("mixed + head float", {"preset": "mixed", "fast_bias_correction": False}, True),
]


def run(ov, core, model, x, runs):
    compiled = ekit_ov.compile_model(ov, core, model, "CPU", "f32", "LATENCY")
    req = compiled.create_infer_request()
    outs = ekit_ov.run_batches(req, x, 1, len(compiled.outputs), list(compiled.outputs))
    lat = ekit.latency(lambda: req.infer({0: x[:1]}), runs=runs, warmup=3)
    return outs, lat["median"]


def main() -> None:
    a = tq.arguments(__doc__, "nncf_int8_by_task").parse_args()
    import nncf
    import openvino as ov

    core = ov.Core()
    core.set_property("CPU", {"INFERENCE_NUM_THREADS": 1})
    models, rows = tq.model_list(a), []
    for kind, label, path, spec, (cdir, vdir) in models:
        calib = ekit.load_set(cdir, spec, purpose="calibration")["x"]
        val = ekit.load_set(vdir, spec)
        fp32 = ov.convert_model(str(path))
        ref, base_ms = run(ov, core, fp32, val["x"], a.runs)
        task = tq.task_for(kind, ref, spec)
        rows.append(dict(model=label, kind=kind, variant="fp32", median_ms=round(base_ms, 2),
                         **tq.measure(kind, ref, ref, task, val["labels"])))
        for name, kw, head in VARIANTS:
            print(f"{label}: {name} ...", flush=True)
            kwargs = dict(kw)
            if "preset" in kwargs:
                kwargs["preset"] = nncf.QuantizationPreset(kwargs["preset"])
            ignored = ekit_ov.head_names(fp32, path) if head else []
            if ignored:
                kwargs["ignored_scope"] = nncf.IgnoredScope(names=ignored, validate=False)
            t = time.perf_counter()
            q = nncf.quantize(ov.convert_model(str(path)), nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]),
                              subset_size=len(calib), **kwargs)
            seconds = round(time.perf_counter() - t, 1)
            ys, ms = run(ov, core, q, val["x"], a.runs)
            row = dict(model=label, kind=kind, variant=name, median_ms=round(ms, 2), quantize_s=seconds,
                       kept_float=len(ignored), **tq.measure(kind, ref, ys, task, val["labels"]))
            rows.append(row)
            print("   ", {k: row.get(k) for k in row if k not in ("model", "kind")}, flush=True)
    meta = {"runtime": f"openvino {ov.get_version()}, nncf {nncf.__version__}", "machine": platform.machine(),
            "cores": os.cpu_count(), "threads": 1, "runs": a.runs,
            "data": {m[1]: [str(f) for f in m[4]] for m in models}}
    Path(a.out + ".json").write_text(json.dumps({"meta": meta, "rows": ekit.jsonable(rows)}, indent=2) + "\n")
    print(tq.write_md(meta, rows, a.out))


if __name__ == "__main__":
    main()
