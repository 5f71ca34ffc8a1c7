"""ONNX Runtime's calibrator chosen by measurement (issue 19): MinMax vs Percentile (99.99 / 99.999 /
99.9999) vs Entropy, with and without reduce_range (7-bit weights: the x86-64-v2/v3/v4 cpu classes;
8-bit: VNNI/AMX/Arm), on a detector and two classifiers, beside bare ``quantize_static`` defaults.

  YOLOv8n (nudenet 320n, letterbox 320)   the decode tail and the head convs float (the onnx recipe);
                                          mAP@0.5 of the int8 boxes (from score 0.001) against the
                                          source's boxes (score 0.25), det F1 at 0.25; evaluated on the
                                          mirrored task photos in three geometries (letterbox, stretch,
                                          crop: 87 images, 28 source boxes)
  MobileNetV2 (ImageNet, 224 crop)        top-1 agreement, min cosine, mean probability TV, 20 photos
  PP-OCR cls (MobileNetV3: HardSwish/SE)  the same on the task photos and their 180-degree turns (58)

Calibration: the 29 task photos (the classifier: the 20 ImageNet photos); per-channel int8 weights,
uint8 activations, QDQ, quant_pre_process first (as converters/onnx/convert.py.jinja).

    invoke bench --only int8_calibrators      (MOBILENET_ONNX=<the MobileNetV2 ONNX> adds its rows:
                                             tests/conftest.py's mobilenet_onnx export)

Writes bench/results/int8_calibrators.{json,md}.
"""

from __future__ import annotations

ENV = "onnx"  # the converter environment this study runs in (bench/_common.py, invoke bench)

import json
import os
import platform
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
from _common import flat_helpers  # noqa: E402

sys.path.insert(0, flat_helpers())
sys.path.insert(0, str(HERE.parent))
import ekit  # noqa: E402
import ekit_onnx  # noqa: E402
from ekit import measure as M  # noqa: E402
from ekit import task as ekit_task  # noqa: E402

YSPEC = {"shape": [1, 3, 320, 320], "layout": "nchw", "color": "rgb", "scale": 255.0, "resize": "letterbox", "pad": 114}
MSPEC = {"shape": [1, 3, 224, 224], "layout": "nchw", "color": "rgb", "scale": 255.0,
         "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": "crop"}
CSPEC = {"shape": [1, 3, 48, 192], "layout": "nchw", "color": "bgr", "scale": 255.0, "mean": [0.5] * 3,
         "std": [0.5] * 3, "resize": "stretch"}
VARIANTS = [("minmax", None), ("percentile", 99.99), ("percentile", 99.999), ("percentile", 99.9999), ("entropy", None)]


def prepared(path: Path, shape, tmp: Path) -> tuple[Path, Path]:
    """(fixed-shape simplified source, ORT-pre-processed model) as the onnx target sees them."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    m = ekit_onnx.ensure_opset(ekit_onnx._fixed_input(onnx.load(os.fspath(path)), shape), 13)[0]
    m, _ = ekit_onnx.simplify_onnx(m, "onnxslim")
    src, pre = tmp / f"{path.stem}.src.onnx", tmp / f"{path.stem}.pre.onnx"
    onnx.save(m, os.fspath(src))
    quant_pre_process(os.fspath(src), os.fspath(pre))
    m = onnx.load(os.fspath(pre))
    for i, n in enumerate(m.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    onnx.save(m, os.fspath(pre))
    return src, pre


def quantize(src, pre, out, calib, method, pct, rr, exclude, bare=False) -> float:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    name = onnx.load(os.fspath(src)).graph.input[0].name
    t = time.perf_counter()
    if bare:
        quantize_static(os.fspath(src), os.fspath(out), ekit_onnx.calibration_reader(name, calib))
    else:
        methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                   "entropy": CalibrationMethod.Entropy}
        quantize_static(os.fspath(pre), os.fspath(out), ekit_onnx.calibration_reader(name, calib),
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=rr,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], nodes_to_exclude=list(exclude),
                        extra_options={"CalibPercentile": pct} if pct else {})
    return round(time.perf_counter() - t, 1)


def run(path, x):
    return ekit_onnx.ort_run(ekit_onnx.ort_session(path), x.astype(np.float32))


def det(task, ref, ys) -> dict:
    p = dict(task["params"])
    m = ekit_task.metrics(task, ref, ys)
    gt = [{"boxes": d["boxes"], "classes": d["classes"]} for d in M.decode(ref, p)]
    return {"map50_vs_source": M.map50(M.decode(ys, dict(p, score_threshold=0.001)), gt), "det_f1": m.get("det_f1"),
            "boxes_source": m.get("det_boxes_source")}


def cls(ref, ys) -> dict:
    r, o = ref[0].reshape(len(ref[0]), -1), ys[0].reshape(len(ys[0]), -1)

    def probs(a):
        if (a >= 0).all() and np.allclose(a.sum(1), 1, atol=1e-3):
            return a
        e = np.exp(a - a.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    cos = (r * o).sum(1) / np.linalg.norm(r, axis=1) / np.linalg.norm(o, axis=1)
    return {"agree": f"{int((r.argmax(1) == o.argmax(1)).sum())}/{len(r)}", "min_cosine": float(cos.min()),
            "prob_tv": float(np.mean(0.5 * np.abs(probs(r) - probs(o)).sum(1)))}


def main() -> None:
    import onnx
    import onnxruntime

    from edgekiln.demo import mobilenet_weights, photo_folders, task_photo_folders, wheel, yolov8n_onnx

    tmp = Path(tempfile.mkdtemp(prefix="int8-calib-"))
    tc, tv = task_photo_folders()
    rows = []
    # the detector
    src, pre = prepared(Path(yolov8n_onnx()), (1, 3, 320, 320), tmp)
    calib = ekit.load_set(tc, YSPEC, purpose="calibration")["x"]
    val = np.concatenate([ekit.load_set(tv, dict(YSPEC, resize=r))["x"] for r in ("letterbox", "stretch", "crop")])
    ref = run(src, val)
    shapes = [{"name": str(i), "shape": list(y.shape)} for i, y in enumerate(ref)]
    task = ekit_task.detect_task(shapes, [320, 320], head="yolov8", task="detect")
    task["params"]["input_hw"] = [320, 320]
    fm = onnx.load(os.fspath(pre))
    exclude = ekit_onnx.head_nodes(fm) + ekit_onnx.head_conv_names(fm)
    models = [("YOLOv8n", src, pre, calib, val, lambda r, y: det(task, r, y), exclude)]
    # the classifiers (MobileNetV2 exported by bench/_mobilenet_source.py's recipe needs torch: take the
    # edgekiln demo's ONNX when given, else skip)
    mnv2 = os.environ.get("MOBILENET_ONNX")
    if mnv2:
        ms, mp = prepared(Path(mnv2), (1, 3, 224, 224), tmp)
        pc, pv = photo_folders(tmp / "photos")
        models.append(("MobileNetV2", ms, mp, ekit.load_set(pc, MSPEC, purpose="calibration")["x"],
                       ekit.load_set(pv, MSPEC)["x"], cls, []))
    with zipfile.ZipFile(wheel("rapidocr-onnxruntime")) as zf:
        (tmp / "cls.onnx").write_bytes(zf.read("rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"))
    cs, cp = prepared(tmp / "cls.onnx", (1, 3, 48, 192), tmp)
    cx = ekit.load_set(tc, CSPEC, purpose="calibration")["x"]
    vx = ekit.load_set(tv, CSPEC)["x"]
    models.append(("PP-OCR cls (MobileNetV3)", cs, cp, np.concatenate([cx, cx[:, :, ::-1, ::-1]]),
                   np.concatenate([vx, vx[:, :, ::-1, ::-1]]), cls, []))
    del mobilenet_weights
    for label, s, p, c, v, score, ex in models:
        r = run(s, v)
        out = tmp / "q.onnx"
        secs = quantize(s, p, out, c, None, None, False, [], bare=True)
        rows.append(dict(model=label, variant="bare ORT defaults", seconds=secs, **score(r, run(out, v))))
        print(rows[-1], flush=True)
        for rr in (True, False):
            for method, pct in VARIANTS:
                secs = quantize(s, p, out, c, method, pct, rr, ex)
                rows.append(dict(model=label, variant=f"{'7-bit' if rr else '8-bit'} weights, {method}"
                                 + (f" {pct}" if pct else ""), seconds=secs, **score(r, run(out, v))))
                print(rows[-1], flush=True)
    meta = {"onnxruntime": onnxruntime.__version__, "machine": platform.machine(), "cores": os.cpu_count()}
    out = HERE / "results" / "int8_calibrators"
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": ekit.jsonable(rows)}, indent=2) + "\n")
    cols = ["variant", "map50_vs_source", "det_f1", "agree", "min_cosine", "prob_tv", "seconds"]
    lines = [f"# ONNX Runtime calibrators by task metric (onnxruntime {meta['onnxruntime']}, {meta['cores']} cores "
             f"{meta['machine']})", "", __doc__.split("\n\n")[1], ""]
    for label in dict.fromkeys(r["model"] for r in rows):
        lines += [f"## {label}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            if r["model"] == label:
                lines.append("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r.get(c), float) else
                                               str(r.get(c, "-")) for c in cols) + " |")
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
