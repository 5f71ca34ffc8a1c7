"""Inside the onnx environment, for bench/det_gate.py: the old and the new gate's numbers of int8
ONNX models against their fp32 source, on the validation images as given and with the gate's
augmentation (ekit.augment), plus the validate time the added images cost.

    python _inside_det_gate.py SPEC.json OUT.json

SPEC: {"models": [{"name", "kind": detect|map|classify, "fp32", "int8": {variant: path or "bare"},
"spec": input spec, "calib": folder, "val": folder}]}; "bare" = quantize_static(fp32, out, reader)
with ONNX Runtime's defaults and nothing else.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, quantize_static

import ekit
from ekit import augment
from ekit import task as ekit_task

OLD = {"detect": {"min_det_f1": 0.95, "min_det_recall": 0.90, "min_cosine": 0.90},
       "map": {"min_map_iou": 0.80, "min_region_f1": 0.90, "min_cosine": 0.90},
       "classify": {"min_cosine": 0.90, "min_top1_agreement": 0.80}}


def run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    t = time.perf_counter()
    ys = [s.run(None, {name: v[None]}) for v in x]
    secs = time.perf_counter() - t
    return [np.concatenate([y[k] for y in ys]) for k in range(len(ys[0]))], secs


def bare(fp32, calib_x, out):
    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: v[None]} for v in calib_x])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32), str(out), Reader())
    return out


def task_of(m, ys, fp32):
    meta = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    hw = m["spec"]["shape"][2:4]
    outs = [{"name": str(i), "shape": list(y.shape)} for i, y in enumerate(ys)]
    t = ekit_task.detect_task(outs, hw, meta, m["kind"] if m["kind"] != "detect" else None)
    t["params"]["input_hw"] = list(hw)
    return t


def measure(task, ref, outs, labels):
    res = ekit.compare(ref, outs, labels)
    res.update(ekit_task.metrics(task, ref, outs))
    res.pop("task_params", None)
    return {k: v for k, v in res.items() if not isinstance(v, (list, dict)) or k == "det_band"}


LOWS = ("det_map50_low", "det_band_f1_low", "region_f1_low", "map_iou_low")
BEFORE = {"augment_min_boxes": 100, "augment_mosaic": 0}  # the gate's augmentation before the mosaics


def one(m, tmp):
    spec = m["spec"]
    val = ekit.load_set(m["val"], spec)
    calib_x = ekit.load_set(m["calib"], spec)["x"]
    ref, t_ref = run(m["fp32"], val["x"])
    task = task_of(m, ref, m["fp32"])
    source = lambda x: run(m["fp32"], x)[0]  # noqa: E731
    old_task = dict(task, params=dict(task["params"], **BEFORE))
    old, ref_old, info_old = augment.enough(old_task, val, ref, source, spec)
    aug, ref_aug, info = augment.enough(task, val, ref, source, spec)
    mos, ref_mos, info_mos = None, None, None
    if task["task"] == "map":  # mosaics are not the default for maps: measured here (docs/gates.md)
        mos_task = dict(task, params=dict(task["params"], augment_mosaic=1))
        mos, ref_mos, info_mos = augment.enough(mos_task, val, ref, source, spec)
    out = {"name": m["name"], "kind": m["kind"], "task": task["task"], "images": len(val["files"]),
           "augmented": info, "augmented_before": info_old, "augmented_mosaic": info_mos, "variants": {}}
    for variant, path in m["int8"].items():
        if path == "bare":
            path = bare(m["fp32"], calib_x, Path(tmp) / f"{m['name']}-bare.onnx")
        ys, secs = run(path, val["x"])
        row = {"plain": measure(task, ref, ys, val["labels"]), "seconds_plain": round(secs, 2)}
        if info_old:  # before: whole-image variants, bootstrap over images (as the gate was)
            yo, secs_o = run(path, old["x"])
            row["before"] = measure(task, ref_old, yo, old["labels"])
            row["seconds_before"] = round(secs_o, 2)
        if info:  # now: mosaics first, bootstrap over photos (a photo with its variants)
            ya, secs_a = run(path, aug["x"])
            row["augmented"] = measure(dict(task, augmented=info), ref_aug, ya, aug["labels"])
            by_image = measure(task, ref_aug, ya, aug["labels"])
            row["augmented"].update({f"{k}_images": by_image[k] for k in LOWS if k in by_image})
            row["seconds_augmented"] = round(secs_a, 2)
        if info_mos:
            ym, secs_m = run(path, mos["x"])
            row["mosaic"] = measure(dict(task, augmented=info_mos), ref_mos, ym, mos["labels"])
            row["seconds_mosaic"] = round(secs_m, 2)
        out["variants"][variant] = row
    return out


def main():
    spec, dest = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one(m, tmp) for m in spec["models"]]
    dest.write_text(json.dumps({"models": rows, "old_limits": OLD,
                                "onnxruntime": ort.__version__}, indent=1, default=float))


if __name__ == "__main__":
    main()
