"""Which explicit Q/DQ int8 keeps more of the fp32 answers: nvidia-modelopt or ONNX Runtime's
symmetric QDQ? (both are what TensorRT >= 8.5 builds int8 engines from). Also: fp16 AutoCast.

Measured in ONNX Runtime on CPU (the workstation proxy: no TensorRT here) on two real models:

* the ImageNet MobileNetV2 (torchvision weights; bench/_mobilenet_source.py makes its source dir),
  calibrated on the 20 foolbox photos, validated on their mirror images (top-1 agreement, cosine);
* a real Ultralytics YOLOv8n (nudenet's 320n.onnx), calibrated on the 20 photos + ultralytics'
  bus.jpg/zidane.jpg, validated on their mirror images: cosine of the raw output and a detection
  agreement (F1 of the int8 boxes against the fp32 boxes: conf 0.25, NMS 0.45, match IoU 0.5).

Run in the trtprep environment (images/trtprep/requirements.txt):

    python bench/tensorrt_qdq.py --mobilenet-src DIR --yolo MODEL.onnx --yolo-photos DIR

Writes bench/results/tensorrt_qdq.{json,md}.
"""

from __future__ import annotations

ENV = 'trtprep'  # the converter environment this study runs in (bench/_common.py, invoke bench)

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
from _common import flat_helpers  # noqa: E402

sys.path.insert(0, flat_helpers())  # the converter helpers, flat (as a job holds them)
import ekit  # noqa: E402
import ekit_onnx  # noqa: E402
import ekit_trt  # noqa: E402

YOLO_SPEC = {"name": None, "shape": [1, 3, 320, 320], "layout": "nchw", "color": "rgb", "scale": 255.0,
             "mean": None, "std": None, "resize": "stretch"}
# Each quantization runs in a fresh process: importing modelopt's quantizer patches ONNX Runtime's
# quantization classes in-process (ORT's own quantize_static fails after it) — as in a build, where
# each convert step is its own process.
VARIANTS = [("ort-symmetric", "minmax"), ("ort-symmetric", "percentile"), ("ort-symmetric", "entropy"),
            ("modelopt", "entropy"), ("modelopt", "max")]


def boxes(out: np.ndarray, conf: float = 0.25, iou: float = 0.45):
    """YOLOv8 raw output [4 + classes, anchors] -> [(cls, score, x1, y1, x2, y2)] after NMS."""
    scores = out[4:].max(axis=0)
    cls = out[4:].argmax(axis=0)
    keep = np.where(scores > conf)[0]
    cx, cy, w, h = out[0, keep], out[1, keep], out[2, keep], out[3, keep]
    b = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    order = np.argsort(-scores[keep])
    chosen = []
    while order.size:
        i = order[0]
        chosen.append(i)
        rest = order[1:]
        ious = _iou(b[i], b[rest])
        order = rest[(ious < iou) | (cls[keep][rest] != cls[keep][i])]
    return [(int(cls[keep][i]), float(scores[keep][i]), *b[i].tolist()) for i in chosen]


def _iou(a, b):
    x1, y1 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x2, y2 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def detection_f1(ref: np.ndarray, out: np.ndarray, conf: float = 0.25) -> dict:
    tp = fp = fn = 0
    for r, o in zip(ref, out):
        rb, ob = boxes(r, conf), boxes(o, conf)
        used = set()
        for d in ob:
            match = next((j for j, g in enumerate(rb) if j not in used and g[0] == d[0]
                          and _iou(np.array(g[2:]), np.array([d[2:]]))[0] >= 0.5), None)
            if match is None:
                fp += 1
            else:
                used.add(match)
                tp += 1
        fn += len(rb) - len(used)
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    return {"f1": round(f1, 4), "tp": tp, "fp": fp, "fn": fn, "fp32_boxes": tp + fn}


def run(model_path: Path, x: np.ndarray) -> list[np.ndarray]:
    sess = ekit_onnx.ort_session(model_path, threads=2)
    return ekit_onnx.ort_run(sess, x, batch=1)


def measure(name: str, fp32: Path, calib: np.ndarray, x: np.ndarray, ref: list, labels, detector: bool,
            tmp: Path) -> list[dict]:
    import onnx

    rows = []
    fixed = tmp / f"{name}-fixed.onnx"
    onnx.save(ekit_trt.fix_shape(onnx.load(str(fp32)), calib[0:1].shape), str(fixed))
    variants = VARIANTS + [("fp16-autocast", "-")]
    for tool, method in variants:
        out = tmp / f"{name}-{tool}-{method}.onnx"
        np.save(tmp / "calib.npy", calib.astype(np.float32))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--quantize", tool, method, str(fixed), str(out),
                        str(tmp / "calib.npy")], check=True, cwd=tmp)  # the quantizers leave temp files in cwd
        seconds = time.perf_counter() - t0
        model = onnx.load(str(out))
        lint = ekit_trt.lint_qdq(model)
        ys = run(out, x)
        m = ekit.compare(ref, ys, labels)
        row = {"model": name, "variant": f"{tool} {method}".replace(" -", ""), "seconds": round(seconds, 1),
               "q": lint["q"], "dq": lint["dq"], "qdq_lint_problems": len(lint["problems"]),
               "cosine_min": round(m["cosine"], 5), "cosine_mean": round(m["cosine_mean"], 5),
               "top1_agreement": m["top1_agreement"], "accuracy": m["accuracy"],
               "source_accuracy": m["source_accuracy"], "size_bytes": out.stat().st_size}
        if detector:  # raw-output cosine is dominated by box coordinates: also the class scores alone
            row["detection"] = detection_f1(ref[0], ys[0])
            row["detection_conf0.1"] = detection_f1(ref[0], ys[0], conf=0.1)
            scores = ekit.compare([ref[0][:, 4:]], [ys[0][:, 4:]])
            row["score_cosine_min"] = round(scores["cosine"], 5)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def quantize_one(tool: str, method: str, src: str, dst: str, calib: str) -> int:
    x = np.load(calib)
    if tool == "modelopt":
        ekit_trt.quantize_modelopt(Path(src), Path(dst), x, method=method)
    elif tool == "ort-symmetric":
        ekit_trt.quantize_ort_symmetric(Path(src), Path(dst), x, method=method)
    else:
        ekit_trt.autocast_fp16(Path(src), Path(dst))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--quantize"]:
        return quantize_one(*argv[1:6])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mobilenet-src", type=Path, required=True)
    ap.add_argument("--yolo", type=Path, required=True)
    ap.add_argument("--yolo-photos", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "tensorrt_qdq")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        src = args.mobilenet_src
        ref = ekit.read_reference(src / "reference.npz")
        rows += measure("mobilenet_v2", src / "model.onnx", np.load(src / "calib.npy"), ref["x"], ref["y"],
                        ref["labels"], False, tmp)
        # YOLOv8n: calibrate on the photos, validate on their mirror images; fp32 ORT is the reference
        calib = ekit.load_set(args.yolo_photos, YOLO_SPEC, purpose="calibration")
        mirrored = tmp / "mirrored"
        mirrored.mkdir()
        from PIL import Image, ImageOps
        for f in ekit.list_images(args.yolo_photos):
            with Image.open(f) as img:
                ImageOps.mirror(img.convert("RGB")).save(mirrored / f.name, quality=95)
        val = ekit.load_set(mirrored, YOLO_SPEC, purpose="validation")
        yref = run(args.yolo, val["x"])
        rows += measure("yolov8n", args.yolo, calib["x"], val["x"], yref, None, True, tmp)
    env = {"python": platform.python_version(), "machine": platform.machine(),
           "versions": ekit.versions_of(["onnxruntime", "onnx", "nvidia-modelopt", "torch"]),
           "images": {"mobilenet_v2": "20 foolbox ImageNet photos (calib) / mirrored (val)",
                      "yolov8n": "20 photos + bus.jpg + zidane.jpg (calib) / mirrored (val)"},
           "note": "ONNX Runtime CPU proxy of the Q/DQ ONNX; no TensorRT engine was built or run"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
    lines = ["# Explicit Q/DQ int8 for TensorRT: modelopt vs ONNX Runtime symmetric (ORT CPU proxy)", "",
             f"`python bench/tensorrt_qdq.py` — {env['versions']}; {env['note']}.", "",
             "| model | variant | cosine min | cosine mean | top-1 agr. | acc (src) | class-score cosine min "
             "| det. F1 vs fp32 (conf 0.25) | (conf 0.1) | Q/DQ | lint | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        det = r.get("detection")
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.2f} ({r['source_accuracy']:.2f})"
        det1 = r.get("detection_conf0.1")
        lines.append(f"| {r['model']} | {r['variant']} | {r['cosine_min']} | {r['cosine_mean']} | "
                     f"{'' if r['top1_agreement'] is None else r['top1_agreement']} | {acc} | "
                     f"{r.get('score_cosine_min', '')} | "
                     f"{'' if det is None else str(det['f1']) + ' (' + str(det['fp32_boxes']) + ' boxes)'} | "
                     f"{'' if det1 is None else str(det1['f1']) + ' (' + str(det1['fp32_boxes']) + ' boxes)'} | "
                     f"{r['q']}/{r['dq']} | {r['qdq_lint_problems']} | {r['seconds']} |")
    lines += ["", "Reading: YOLOv8n's raw output concatenates box coordinates (0..320 px) and class scores "
              "(0..1); its cosine is dominated by the boxes, so the class-score cosine and the detection "
              "F1 against the fp32 boxes are the telling columns. ONNX Runtime's QDQ quantizes that final "
              "Concat with one scale for both (its output DequantizeLinear has scale 2.49 px per step), which flattens the scores (no box survives); modelopt "
              "places Q/DQ only where TensorRT runs int8 kernels (Conv inputs), leaving the head in float. "
              "Default chosen: int8_method = modelopt, calibration_method = entropy "
              "(targets/jetson.toml, targets/x86-gpu.toml)."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
