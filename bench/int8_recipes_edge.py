"""int8 recipes of the edge runtimes (issue 19): mnn, executorch, rpi (TFLite/LiteRT) and rknn, side
by side in one run on a detector (YOLOv8n, 320x320 letterbox, the task photos judged on their
mirrored variants plus the gate's deterministic augmentations) and two classifiers (MobileNetV2 and
rapidocr's ch_ppocr_mobile_v2.0_cls, MobileNetV3-style HardSwish/SE; the ImageNet photos). MobileNetV2
also as a TorchScript source (``mobilenet_ts``: torch.jit.trace of the same weights), the source issue
19 saw refused on executorch at a raw-logit cosine floor.

Rows per runtime and model, each a real ``edgekiln build --precision int8`` through the CLI:

* ``edgekiln``: the target's defaults (``keep_float=auto``: a detector's decode tail, its head's
  last convs and what follows them stay float/fp16; MNN's EMA activations);
* ``keep_float=none``: the same with every op int8 (what each target built before issue 19);
* ``bare defaults``: the tool's own defaults (MNN mnnquant KL, ExecuTorch's snippet with per-tensor
  weights, RKNN ``normal`` without hybrid quantization, TFLiteConverter full integer) on the same
  calibration tensors, expressed as target options (the step runs the tool with exactly them);
* ``--recover`` where the runtime has it (rpi, rknn).

Metrics are the validate step's (docs/gates.md): det mAP@0.5 vs the source's boxes and its lower
bound, ambiguity-band F1 and its bound; classifiers: top-1 agreement, its Wilson bound, prob TV;
the exit code says whether the gate published it.

    invoke bench --only int8_recipes_edge [--args "--runtimes mnn,rknn --models yolo"]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import MNV2_EXPORT as MNV2, PPOCR_CLS as CLS, RESULTS, ROOT, cli_build, env_python  # noqa: E402

sys.path.insert(0, str(ROOT))
SPECS = {
    "yolo": {"shape": [1, 3, 320, 320], "resize": "letterbox", "pad": 114},
    "mobilenet": {"shape": [1, 3, 224, 224], "resize": "crop", "mean": [0.485, 0.456, 0.406],
                  "std": [0.229, 0.224, 0.225]},
    "ppocr_cls": {"shape": [1, 3, 48, 192], "resize": "stretch", "color": "bgr", "mean": [0.5] * 3,
                  "std": [0.5] * 3},
}
SPECS["mobilenet_ts"] = SPECS["mobilenet"]
SPECS["yolo_people"] = SPECS["yolo"]  # the same YOLOv8n on the 36-photo set (people_photo_folders)
MNV2_TS = MNV2.split("torch.onnx.export")[0] + "torch.jit.save(torch.jit.trace(m, torch.zeros(1, 3, 224, 224)), sys.argv[3])"
BARE = {"mnn": ["feature_quantize_method=KL", "keep_float=none"],
        "executorch": ["per_channel=false", "keep_float=none"],
        "rknn": ["quantized_algorithm=normal", "keep_float=none"],
        "rpi": ["keep_float=none", "calib_augment=none"]}
W8 = "w8: int8 weights + float compute (not int8)"
KEYS = ("det_map50", "det_map50_low", "det_band_f1", "det_band_f1_low", "det_map", "det_boxes", "det_f1",
        "top1_agreement", "top1_agreement_low", "prob_tv", "n", "cosine")


def models(work: Path, wanted) -> dict[str, Path]:
    from edgekiln.demo import mobilenet_weights, wheel, yolov8n_onnx

    paths = {}
    for name in ("yolo", "yolo_people"):
        if name in wanted:
            paths[name] = yolov8n_onnx()
    if "mobilenet" in wanted:
        paths["mobilenet"] = work / "mnv2-src.onnx"
        subprocess.run([env_python("torch"), "-c", MNV2, ROOT / "converters", mobilenet_weights(), paths["mobilenet"]],
                       check=True, capture_output=True, timeout=900)
    if "mobilenet_ts" in wanted:
        paths["mobilenet_ts"] = work / "mnv2-src.pt"
        subprocess.run([env_python("torch"), "-c", MNV2_TS, ROOT / "converters", mobilenet_weights(),
                        paths["mobilenet_ts"]], check=True, capture_output=True, timeout=900)
    if "ppocr_cls" in wanted:
        zipfile.ZipFile(wheel("rapidocr-onnxruntime")).extract(CLS, work)
        paths["ppocr_cls"] = work / CLS
    out = {}
    for name, src in paths.items():
        dest = work / f"{name}{src.suffix}"
        shutil.copy(src, dest)
        dest.with_name(dest.name + ".edgekiln.toml").write_text(
            "".join(f"{k} = {json.dumps(v)}\n" for k, v in SPECS[name].items()))
        out[name] = dest
    return out


def rows_of(job: Path, target: str, code: int, seconds: float, precision: str = "int8") -> dict:
    rep = next((job / "work" / target).glob(f"{precision}/report.json"), None)
    conv = next((job / "work" / "results").glob(f"*-{target}-{precision}-convert.json"), None)
    if rep is None:
        err = ""
        for log in sorted((job / "logs").glob("*")) if (job / "logs").is_dir() else []:
            err = (log.read_text(errors="replace").strip().splitlines() or [""])[-1]
        return {"failed": True, "exit": code, "error": err[:300], "seconds": round(seconds, 1)}
    m = json.loads(rep.read_text())["metrics"]
    q = (json.loads(conv.read_text()).get("quantization") or {}) if conv else {}
    q = q or {}
    rec = q.get("recovery") or {}
    share = q.get("int8_mac_share")
    if rec.get("float_layers") and rec.get("int8_mac_share") is not None:  # --recover's layers on top
        # a recovery with a floor (min_int8_macs) counts what keep_float keeps float already
        share = rec["int8_mac_share"] if "min_int8_macs" in rec else (
            (share if share is not None else 1.0) - (1.0 - rec["int8_mac_share"]))
    return {"published": code == 0, "exit": code, "seconds": round(seconds, 1),
            "metrics": {k: m.get(k) for k in KEYS if m.get(k) is not None},
            "float_ops": len(q.get("float_ops") or q.get("float_starts") or []) + len(rec.get("float_layers") or []),
            "float_head": q.get("float_head") or [], "recover_float_layers": len(rec.get("float_layers") or []),
            "int8_mac_share": share}


def run(runtimes, wanted, work: Path, only=None) -> dict:
    from edgekiln.demo import people_photo_folders, photo_folders, task_photo_folders

    res = {}
    for name, model in models(work, wanted).items():
        photos = {"yolo": task_photo_folders, "yolo_people": people_photo_folders}.get(name, photo_folders)()
        res[name] = {}
        for rt in runtimes:
            variants = {"edgekiln": [], "bare defaults": BARE[rt]}
            if rt in ("rpi", "rknn") and name.startswith("yolo"):
                variants["edgekiln --recover"] = ["recover=true"]
            if rt == "mnn":  # each calibrator auto measures, alone (KL alone is the bare row); and not int8
                variants.update({f"calibrator {c}": [f"feature_quantize_method={c}"] for c in ("EMA", "MINMAX")})
                variants[W8] = []  # compute: MNN's weight-only int8, a precision of its own
            if name.startswith("yolo"):  # ablations: the tail alone at higher precision; another calibrator
                variants["keep_float=tail"] = ["keep_float=tail"]
                if rt == "rknn":
                    variants["edgekiln kl_divergence"] = ["quantized_algorithm=kl_divergence"]
            rows = {}
            for label, opts in variants.items():
                if only and label not in only:
                    continue
                out = work / "out" / f"{name}-{rt}-{len(rows)}"
                extra = [a for o in opts for a in ("--option", o)]
                t0 = time.perf_counter()
                prec = "w8" if label == W8 else "int8"
                job, _, code = cli_build(rt, prec, [model], photos, out, extra, ok=(0, 2, 8, 10))
                rows[label] = rows_of(job, rt, code, time.perf_counter() - t0, prec)
                print(name, rt, label, json.dumps(rows[label]), flush=True)
            res[name][rt] = rows
    return res


def fmt(v):
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def markdown(r: dict) -> str:
    lines = ["# int8 recipes on the edge runtimes (bench/int8_recipes_edge.py)", "",
             f"{r['when']}, {r['machine']}. Every row a real `edgekiln build --precision int8` (local runner). "
             "Detector: YOLOv8n 320 letterbox, 29 task photos calibrating, judged on their mirrored variants plus "
             "the gate's deterministic augmentations, against the fp32 source's own boxes. Classifiers: the 20 "
             "ImageNet photos calibrating, their mirrors judging; mobilenet_ts: the same MobileNetV2 as a TorchScript "
             "source (torch.jit.trace). pub: the gate published it (exit 0) or refused "
             "it (10). float ops: ops left at higher precision (head: the head convs among them; rknn: the starts of "
             "its fp16 regions). MACs int8: of the conv/matmul multiply-accumulates (executorch does "
             "not count them: the same head convs, 1.1 % of YOLOv8n's MACs, 98.9 % int8; mnn keeps nothing float, "
             "its quantizer cannot: 1.000). mnn's w8 row is `--precision w8`, weight-only, NOT int8 compute. "
             "Rows may come from "
             "several runs of this script on the same day (`--merge`, `--variants`). YOLOv8n's validation set: "
             "the rows with det_boxes 189 are on the gate's mosaics (189 source boxes on 64 images, bounds "
             "bootstrapping photos); the others, measured before them, on 54 boxes, where one box is 0.01-0.02 "
             "band F1: compare rows of one set only (the json has det_boxes per row). yolo_people: the same YOLOv8n "
             "on 36 photos, the 29 task photos plus seven group photos of people (@vladmandic/face-api's demo "
             "samples, insightface's t1.jpg; edgekiln.demo.people_photo_folders): 12 photos give the source boxes "
             "instead of 5, so the photo bootstrap's bounds mean something.", ""]
    for name, per in r["results"].items():
        det = name.startswith("yolo")
        lines += [f"## {name}", "",
                  ("| runtime | variant | pub | mAP50 | mAP50 low | band F1 | band F1 low | mAP | F1@0.25 | "
                   "float ops (head) | MACs int8 | s |" if det else
                   "| runtime | variant | pub | top-1 agr. | agr. low | prob TV | cosine | float ops | s |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|---|" if det else "|---|---|---|---|---|---|---|---|---|"]
        for rt, rows in per.items():
            for label, row in rows.items():
                if row.get("failed"):
                    lines.append(f"| {rt} | {label} | failed (exit {row['exit']}): {row['error']} |")
                    continue
                m = row["metrics"]
                pub = "yes" if row["published"] else "refused"
                if det:
                    lines.append(f"| {rt} | {label} | {pub} | {fmt(m.get('det_map50'))} | {fmt(m.get('det_map50_low'))} | "
                                 f"{fmt(m.get('det_band_f1'))} | {fmt(m.get('det_band_f1_low'))} | {fmt(m.get('det_map'))} | "
                                 f"{fmt(m.get('det_f1'))} | {row['float_ops']} ({len(row['float_head'])}) | "
                                 f"{fmt(row.get('int8_mac_share'))} | {row['seconds']} |")
                else:
                    lines.append(f"| {rt} | {label} | {pub} | {fmt(m.get('top1_agreement'))} | "
                                 f"{fmt(m.get('top1_agreement_low'))} | {fmt(m.get('prob_tv'))} | {fmt(m.get('cosine'))} | "
                                 f"{row['float_ops']} | {row['seconds']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtimes", default="mnn,executorch,rpi,rknn")
    ap.add_argument("--models", default="yolo,yolo_people,mobilenet,mobilenet_ts,ppocr_cls")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--merge", action="store_true", help="keep the other rows of the stored results")
    ap.add_argument("--variants", default="", help="only these rows (comma-separated labels)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="int8-edge-") as tmp:
        results = run(a.runtimes.split(","), a.models.split(","), Path(tmp),
                      [v for v in a.variants.split(",") if v])
    old = Path(a.out) / "int8_recipes_edge.json"
    if a.merge and old.is_file():
        kept = json.loads(old.read_text())["results"]
        for name, per in results.items():
            for rt, rows in per.items():
                kept.setdefault(name, {}).setdefault(rt, {}).update(rows)
        results = kept
    r = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
         "machine": f"{platform.machine()}, {platform.processor() or platform.platform()}", "results": results}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_recipes_edge.json").write_text(json.dumps(r, indent=1) + "\n")
    (out / "int8_recipes_edge.md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
