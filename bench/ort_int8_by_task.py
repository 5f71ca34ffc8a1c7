"""ONNX Runtime int8 settings measured by what the outputs MEAN: a detector, a probability map
and a classifier side by side, edgekiln's settings against the bare tool's defaults.

Models (fp32 ONNX with a fixed input shape, e.g. work/source/model.onnx of an edgekiln build):
  --detector    a YOLOv8n (edgekiln.demo.yolov8n_onnx, letterboxed 320x320)  -> det F1/recall
  --map-model   PP-OCRv4 text detection (edgekiln.demo.text_detector_onnx)   -> pixel IoU, region F1
  --classifier  the ImageNet MobileNetV2 (edgekiln build --target onnx fp32) -> top-1 agreement
Data: calibration = edgekiln.demo.task_photo_folders()[0] (29 real photos; the classifier: the 20
ImageNet photos), validation = their mirror images (held out). Metrics are the artifact against
the fp32 model on the validation images (converters/ekit_task.py, the code the gates use).

Variants (static QDQ, calibrated on the same images):
  bare ORT defaults   quantize_static(model, out, reader) and nothing else: S8S8, per-tensor, MinMax
  edgekiln before     quant_pre_process, U8S8, per-channel, percentile 99.999 (the MobileNetV2 choice)
  ... + head float    the same with the decode tail after the last Conv/Gemm kept float
                      (ekit_onnx.head_nodes: the Concat of boxes and scores, sigmoid, box maths)
  U8S8 / S8S8 minmax  per-channel MinMax, with and without the head float

    python bench/ort_int8_by_task.py --detector D.onnx --map-model M.onnx --classifier C.onnx

Run in the onnx image's environment (images/onnx). Writes bench/results/ort_int8_by_task.{json,md}.
"""

from __future__ import annotations

ENV = 'onnx'  # the converter environment this study runs in (bench/_common.py, invoke bench)

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
from _common import flat_helpers  # noqa: E402

sys.path.insert(0, flat_helpers())  # the converter helpers, flat (as a job holds them)
sys.path.insert(0, str(HERE.parent))
import ekit  # noqa: E402
import ekit_onnx  # noqa: E402
import ekit_task  # noqa: E402

VARIANTS = [
    # label, pre_process, activation, per_channel, method, head_float
    ("bare ORT defaults", False, None, None, None, False),
    ("edgekiln before: U8S8 pc percentile", True, "uint8", True, "percentile", False),
    ("U8S8 pc percentile + head float", True, "uint8", True, "percentile", True),
    ("U8S8 pc minmax", True, "uint8", True, "minmax", False),
    ("U8S8 pc minmax + head float", True, "uint8", True, "minmax", True),
    ("S8S8 pc minmax + head float", True, "int8", True, "minmax", True),
]


def quantize(fp32: Path, out: Path, calib: np.ndarray, pre_process, act, per_channel, method,
             head_float) -> dict:
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    t = time.perf_counter()
    m = onnx.load(os.fspath(fp32))
    m, note = ekit_onnx.ensure_opset(m, 13) if per_channel else (m, None)
    src = out.with_suffix(".src.onnx")
    onnx.save(m, os.fspath(src))
    name = ekit_onnx.onnx_io(m)["inputs"][0]["name"]

    reader = ekit_onnx.calibration_reader(name, calib)

    if not pre_process:  # the bare tool, as its docs call it
        quantize_static(os.fspath(src), os.fspath(out), reader)
        return {"seconds": round(time.perf_counter() - t, 1), "kept_float": 0, "note": note}
    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(os.fspath(src), os.fspath(pre))
    m = onnx.load(os.fspath(pre))
    for i, n in enumerate(m.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    excluded = ekit_onnx.head_nodes(m) if head_float else []
    onnx.save(m, os.fspath(pre))
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    qt = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    quantize_static(os.fspath(pre), os.fspath(out), reader, quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, activation_type=qt[act], weight_type=QuantType.QInt8,
                    calibrate_method=methods[method], nodes_to_exclude=excluded,
                    extra_options={"CalibPercentile": 99.999} if method == "percentile" else {})
    for f in (pre, src):
        f.unlink(missing_ok=True)
    return {"seconds": round(time.perf_counter() - t, 1), "kept_float": len(excluded), "note": note}


def run(path, x, runs):
    sess = ekit_onnx.ort_session(path, threads=1)
    ys = ekit_onnx.ort_run(sess, x, batch=1)
    lat = ekit.latency(lambda: sess.run(None, {sess.get_inputs()[0].name: x[:1]}), runs=runs, warmup=3)
    return ys, lat["median"]


def measure(kind, ref, ys, task, labels):
    if kind == "classify":
        c = ekit.compare(ref, ys, labels)
        return {"top1_agreement": c["top1_agreement"], "accuracy": c["accuracy"],
                "min_cosine": c["cosine"]}
    c = ekit.compare(ref, ys)
    m = ekit_task.metrics(task, ref, ys)
    keys = {"detect": ("det_f1", "det_recall", "det_precision", "det_boxes", "det_boxes_source"),
            "map": ("map_iou", "region_f1", "regions", "regions_source")}[kind]
    return dict({k: m.get(k) for k in keys}, min_cosine=c["cosine"])


def task_for(kind: str, ref: list, spec: dict) -> dict:
    """The task the gates would use (a detector: its YOLOv8 head, as the metadata says)."""
    shapes = [{"name": str(i), "shape": list(y.shape)} for i, y in enumerate(ref)]
    task = ekit_task.detect_task(shapes, spec["shape"][2:], head="yolov8" if kind == "detect" else None,
                                 task=kind if kind != "detect" else None)
    task["params"]["input_hw"] = spec["shape"][2:]
    return task


def model_list(a) -> list:
    """(kind, label, fp32 path, input spec, (calib dir, val dir)) for the models given."""
    from edgekiln.demo import photo_folders, task_photo_folders

    calib_dir, val_dir = task_photo_folders()
    models = []
    if a.detector:
        models.append(("detect", "YOLOv8n (nudenet 320n, letterbox 320)", Path(a.detector),
                       {"shape": [1, 3, 320, 320], "layout": "nchw", "color": "rgb", "scale": 255.0,
                        "resize": "letterbox", "pad": 114}, (calib_dir, val_dir)))
    if a.map_model:
        models.append(("map", "PP-OCRv4 det (DB map, 320x320)", Path(a.map_model),
                       {"shape": [1, 3, 320, 320], "layout": "nchw", "color": "bgr", "scale": 255.0,
                        "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "stretch"},
                       (calib_dir, val_dir)))
    if a.classifier:
        models.append(("classify", "MobileNetV2 (ImageNet, 224 crop)", Path(a.classifier),
                       {"shape": [1, 3, 224, 224], "layout": "nchw", "color": "rgb", "scale": 255.0,
                        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                        "resize": "crop"}, photo_folders()))
    return models


def arguments(doc: str, out: str) -> argparse.ArgumentParser:
    """The models (fixed-shape fp32 ONNX), timed runs and output prefix of both benchmarks."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--detector")
    ap.add_argument("--map-model")
    ap.add_argument("--classifier")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", default=str(HERE / "results" / out))
    return ap


def main() -> None:
    ap = arguments(__doc__, "ort_int8_by_task")
    ap.add_argument("--render", action="store_true", help="only rewrite OUT.md from OUT.json")
    a = ap.parse_args()
    if a.render:
        data = json.loads(Path(a.out + ".json").read_text())
        print(write_md(data["meta"], data["rows"], a.out))
        return
    import onnxruntime

    models = model_list(a)
    tmp = Path(tempfile.mkdtemp(prefix="task-quant-"))
    rows = []
    for kind, label, path, spec, (cdir, vdir) in models:
        calib = ekit.load_set(cdir, spec, purpose="calibration")["x"]
        val = ekit.load_set(vdir, spec)
        ref, base_ms = run(path, val["x"], a.runs)
        task = task_for(kind, ref, spec)
        rows.append(dict(model=label, kind=kind, variant="fp32", median_ms=round(base_ms, 2),
                         size_mb=round(path.stat().st_size / 1e6, 2),
                         **measure(kind, ref, ref, task, val["labels"])))
        for v in VARIANTS:
            out = tmp / f"{kind}-{len(rows)}.onnx"
            print(f"{label}: {v[0]} ...", flush=True)
            try:
                info = quantize(path, out, calib, *v[1:])
                ys, ms = run(out, val["x"], a.runs)
                row = dict(model=label, kind=kind, variant=v[0], median_ms=round(ms, 2),
                           size_mb=round(out.stat().st_size / 1e6, 2), quantize_s=info["seconds"],
                           kept_float=info["kept_float"], **measure(kind, ref, ys, task, val["labels"]))
            except Exception as e:  # a variant that cannot quantize is a result too
                row = dict(model=label, kind=kind, variant=v[0], error=f"{type(e).__name__}: {e}"[:200])
            rows.append(row)
            print("   ", {k: row.get(k) for k in row if k not in ("model", "kind")}, flush=True)
    meta = {"onnxruntime": onnxruntime.__version__, "machine": platform.machine(),
            "cores": os.cpu_count(), "threads": 1, "data": {m[1]: [str(f) for f in m[4]] for m in models},
            "runs": a.runs}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps({"meta": meta, "rows": ekit.jsonable(rows)}, indent=2) + "\n")
    print(write_md(meta, rows, a.out))


def write_md(meta: dict, rows: list, out: str) -> str:
    cols = ["variant", "det_f1", "det_recall", "det_boxes", "map_iou", "region_f1",
            "top1_agreement", "accuracy", "min_cosine", "size_mb", "median_ms"]
    runtime = meta.get("runtime") or f"onnxruntime {meta.get('onnxruntime')}"
    lines = [f"# int8 settings by task metric ({runtime}, 1 thread, "
             f"{meta['cores']} cores {meta['machine']})", "",
             "Artifact vs the fp32 model on held-out mirrored photos; `-` = not this model's metric. "
             "det_* and map/region metrics: converters/ekit_task.py (score 0.25, NMS 0.45, match IoU 0.5; "
             "map threshold 0.3). median_ms: 1 thread on a shared machine, run once per variant — "
             "identical models (a classifier has no decode tail, so '+ head float' changes nothing) "
             "differ by up to 1.8x between rows: speed is measured in bench/onnx_quant_choices.md and openvino.md.", ""]
    for label in dict.fromkeys(r["model"] for r in rows):
        lines += [f"## {label}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            if r["model"] == label:
                cells = [f"{r[c]:.4f}" if isinstance(r.get(c), float) else
                         ("-" if r.get(c) is None else str(r[c])) for c in cols]
                if "error" in r:
                    cells[0] = f"{r['variant']}: {r['error']}"
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    Path(out + ".md").write_text("\n".join(lines))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
