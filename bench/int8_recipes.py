"""int8 recipes side by side (issue 19), for the runtimes whose int8 is ONNX Runtime QDQ (onnx), NNCF
(intel) and modelopt Q/DQ validated by its ONNX Runtime proxy (jetson), on a detector and two
classifiers, in ONE run:

  edgekiln defaults   `edgekiln build --precision int8 --recover` through the CLI (local runner): the
                      plain int8 is the recovery's "before" (or the artifact when it passed without
                      recovery), so both come from one build
  edgekiln --recover  the artifact that build kept (never worse than plain: the recovery keeps plain
                      int8 unless a try scored higher)
  bare defaults       the tool as its docs call it on the same work/source (model, calib.npy, the
                      reference images the gate uses): ORT quantize_static(model, out, reader); NNCF
                      nncf.quantize(model, dataset); modelopt quantize(model, "int8", calib)
  NNCF accuracy ctl   nncf.quantize_with_accuracy_control with the task metric (intel only; its time)

Quality is the gates' own metrics (converters/ekit: det mAP@0.5 vs the source's boxes and the
ambiguity-band F1 with lower bounds; top-1 agreement with its Wilson bound and the probability TV
distance), measured on the job's reference images (the source step adds deterministic variants when
the source finds few boxes). int8 MACs: the fraction of Conv/Gemm/MatMul MACs that run int8, read off
the artifact. Seconds: the plain int8 quantization and the whole int8 convert step (with --recover).

Models: YOLOv8n (nudenet 320n, letterbox 320; ``yolo_people``: the same on the task photos plus seven
group photos of people, edgekiln.demo.people_photo_folders), the ImageNet MobileNetV2 demo, PP-OCR's text-direction
classifier ch_ppocr_mobile_v2.0_cls (MobileNetV3: HardSwish/SE, 48x192), optionally PP-OCRv4 det.

    python bench/int8_recipes.py [--only yolo,yolo_people,mobilenet,ppocr_cls,ppocr] [--runtimes onnx,intel,jetson]
        [--no-ac] [--merge] [--option KEY=VALUE ...]

The builds are validated natively (EDGEKILN_QEMU_X86_64="": the x86-64-v3 recipe is built, its
emulated check is bench/int8_isa.py's). Writes bench/results/int8_recipes.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _common import flat_helpers  # noqa: E402
from recover_onnx_intel import BARE, BARE_OV, MOBILENET  # noqa: E402  (the bare tools as their docs call them)
from recover_rpi_jetson import BARE_MODELOPT  # noqa: E402

COLS = ["det_map50", "det_map50_low", "det_band_f1", "det_band_f1_low", "top1_agreement", "top1_agreement_low",
        "prob_tv", "region_f1", "int8_macs", "plain_s", "convert_s", "passed"]
KEY = {"yolo": "det_map50", "yolo_people": "det_map50", "ppocr": "region_f1", "mobilenet": "top1_agreement", "ppocr_cls": "top1_agreement"}


def models(tmp: Path) -> dict:
    from edgekiln.demo import (mobilenet_weights, people_photo_folders, photo_folders, task_photo_folders,
                               text_detector_onnx, wheel, yolov8n_onnx)

    yolo, ocr, cls = tmp / "yolov8n.onnx", tmp / "ppocr_det.onnx", tmp / "ppocr_cls.onnx"
    shutil.copy(yolov8n_onnx(), yolo)
    (tmp / "yolov8n.onnx.edgekiln.toml").write_text('shape = [1, 3, 320, 320]\nresize = "letterbox"\n')
    shutil.copy(text_detector_onnx(), ocr)
    (tmp / "ppocr_det.onnx.edgekiln.toml").write_text(
        'shape = [1, 3, 320, 320]\nresize = "stretch"\ncolor = "bgr"\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\n')
    with zipfile.ZipFile(wheel("rapidocr-onnxruntime")) as zf:
        cls.write_bytes(zf.read("rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"))
    (tmp / "ppocr_cls.onnx.edgekiln.toml").write_text(
        'shape = [1, 3, 48, 192]\nresize = "stretch"\ncolor = "bgr"\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\n')
    task = [str(p) for p in task_photo_folders()]
    return {
        "yolo": ("YOLOv8n (320, letterbox)", [str(yolo)], task, []),
        # the same on 36 photos: the task photos plus seven group photos of people (12 photos give boxes)
        "yolo_people": ("YOLOv8n (320, letterbox), 36 photos with 7 group photos", [str(yolo)],
                        lambda: [str(p) for p in people_photo_folders()], []),  # fetched when asked for
        "mobilenet": ("MobileNetV2 (ImageNet demo)", [str(mobilenet_weights()), *MOBILENET],
                      [str(p) for p in photo_folders(tmp / "photos")], []),
        "ppocr_cls": ("PP-OCR cls (MobileNetV3, HardSwish/SE)", [str(cls)], task, ["--task", "classify"]),
        "ppocr": ("PP-OCRv4 det (map)", [str(ocr)], task, []),
    }


def edgekiln_rows(job: Path, target: str) -> list[dict]:
    """The plain int8 and the kept artifact of one `--recover` build."""
    rep = json.loads((job / "work" / target / "int8" / "report.json").read_text())
    conv = json.loads(next((job / "work" / "results").glob(f"*-{target}-int8-convert.json")).read_text())
    q = conv.get("quantization") or {}
    trt = conv.get("tensorrt") or {}
    rec = q.get("recovery") or trt.get("recovery") or {}
    macs = q.get("int8_mac_fraction", trt.get("int8_mac_fraction"))
    plain_s = rec.get("plain_int8_seconds") or trt.get("plain_int8_seconds") or q.get("seconds")
    convert_s = q.get("seconds") if target != "jetson" else trt.get("seconds")
    final = dict(rep["metrics"])
    kept = {"variant": "edgekiln --recover", **{k: final.get(k) for k in COLS if k in final},
            "int8_macs": macs, "plain_s": plain_s, "convert_s": convert_s,
            "float": [r["layer"] for r in rec.get("float_layers") or []], "unit": rec.get("unit", "layer"),
            "recovery": "passes" if rec.get("attempted") and rec.get("passed") else
            ("not needed" if not rec.get("attempted") else "best kept" if rec.get("float_layers") else "plain kept")}
    before = (rec.get("before") or {}).get("metrics") if rec.get("attempted") else None
    plain = {"variant": "edgekiln defaults (plain int8)", **({k: v for k, v in (before or final).items() if k in COLS}),
             "int8_macs": macs if not rec.get("float_layers") else rec.get("plain_int8_mac_fraction"), "plain_s": plain_s}
    return [plain, kept]


def bare_row(job: Path, target: str, key: str, ac: bool = False) -> dict:
    """The bare tool (or NNCF accuracy control) in the environment the build used, on the job's data."""
    from edgekiln.runners.local import LocalRunner

    if target == "onnx":
        image, code, args, label = "onnx", BARE, [], "bare ORT quantize_static defaults"
    elif target == "intel":
        image, code, label = "openvino", BARE_OV, ("NNCF accuracy control (task metric)" if ac else "bare NNCF defaults")
        args = [key, "0.95", "ac" if ac else "q"]
    else:
        image, code, label = "trtprep", BARE_MODELOPT, "bare modelopt defaults (ORT proxy)"
        params = json.loads(next((job / "steps").glob(f"*-{target}-int8-convert.json")).read_text())
        args = [json.dumps(params["input"])]
    with tempfile.TemporaryDirectory() as helpers:
        flat_helpers(Path(helpers))
        t = time.perf_counter()
        proc = subprocess.run([LocalRunner().prepare(image).ref, "-c", code, helpers, *args],
                              capture_output=True, text=True, cwd=job)
    if proc.returncode:
        return {"variant": label, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    m = r["metrics"]
    row = {"variant": label, **{k: m.get(k) for k in COLS if k in m}, "plain_s": r.get("seconds"),
           "wall_s": round(time.perf_counter() - t, 1)}
    if r.get("int8_mac_share") is not None:
        row["int8_macs"] = round(r["int8_mac_share"], 4)
    if ac:
        row["float"] = r.get("float_layers")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="yolo,yolo_people,mobilenet,ppocr_cls")
    ap.add_argument("--runtimes", default="onnx,intel,jetson")
    ap.add_argument("--no-ac", action="store_true", help="skip NNCF accuracy control (slow)")
    ap.add_argument("--out", default=str(HERE / "results" / "int8_recipes"))
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of the existing results that this run does not measure again")
    ap.add_argument("--option", action="append", default=[],
                    help="KEY=VALUE passed to the edgekiln builds (their rows are labelled with it; no bare rows)")
    a = ap.parse_args()
    from _common import cli_build

    os.environ["EDGEKILN_QEMU_X86_64"] = ""  # natively validated; the emulated identity is int8_isa's
    tmp = Path(tempfile.mkdtemp(prefix="int8-recipes-"))
    catalog = models(tmp)
    rows = []
    for name in a.only.split(","):
        label, args, photos, extra = catalog[name]
        photos = photos() if callable(photos) else photos
        for target in a.runtimes.split(","):
            out = tmp / name / target
            print(f"{label} / {target}: edgekiln int8 --recover ...", flush=True)
            opts = [x for o in a.option for x in ("--option", o)]
            job, wall, code = cli_build(target, "int8", args, photos, out, ["--recover", *extra, *opts])
            try:
                got = edgekiln_rows(job, target)
            except (OSError, StopIteration, KeyError) as e:
                got = [{"variant": "edgekiln", "error": f"{type(e).__name__}: {e}"[:300]}]
            got[-1].update(wall_s=wall, passed=code == 0)
            for r in got:
                r["variant"] += "".join(f" [{o}]" for o in a.option)
            variants = [bare_row(job, target, KEY[name])] if not a.option else []
            if target == "intel" and not a.no_ac and not a.option:
                variants.append(bare_row(job, target, KEY[name], ac=True))
            for r in got + variants:
                rows.append(dict(model=label, target=target, **r))
                print("   ", {k: v for k, v in r.items() if k != "float"}, flush=True)
    meta = {"machine": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"), "models": a.only, "runtimes": a.runtimes}
    if a.merge and Path(a.out + ".json").is_file():
        rows, meta = merged(json.loads(Path(a.out + ".json").read_text()), rows, meta)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n")
    print(markdown(meta, rows, a.out))
    shutil.rmtree(tmp, ignore_errors=True)


def merged(old: dict, rows: list, meta: dict) -> tuple[list, dict]:
    """The existing results with this run's rows in place of the same (model, target, variant), new ones
    after their model's and target's last row; meta says which runs the file holds."""
    out = list(old.get("rows") or [])
    for r in rows:
        key = (r["model"], r["target"], r["variant"])
        at = [i for i, o in enumerate(out) if (o["model"], o["target"], o["variant"]) == key]
        if at:
            out[at[0]] = r
            continue
        same = [i for i, o in enumerate(out) if (o["model"], o["target"]) == (r["model"], r["target"])] or \
            [i for i, o in enumerate(out) if o["model"] == r["model"]]
        out.insert(same[-1] + 1 if same else len(out), r)
    runs = list((old.get("meta") or {}).get("runs") or [dict(old.get("meta") or {})])
    return out, dict(old.get("meta") or meta, date=meta["date"], runs=runs + [meta])


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown(meta: dict, rows: list, out: str) -> str:
    lines = [f"# int8 recipes side by side (issue 19; {meta['cores']} cores {meta['machine']}, {meta['date']})", "",
             "Artifact vs the fp32 source on the job's reference images, the gates' own metrics (docs/gates.md): "
             "det mAP@0.5 vs the source's boxes and ambiguity-band F1 with their lower bounds; top-1 agreement, "
             "its Wilson bound, the mean probability TV distance. int8_macs: share of Conv/Gemm/MatMul MACs int8 "
             "(read off the artifact). plain_s: the plain int8 quantization; convert_s: the int8 convert step "
             "with --recover. jetson: the ONNX Runtime proxy of the Q/DQ ONNX (graph optimizations off).", ""]
    cols = ["target", "variant"] + COLS + ["float"]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += [f"## {model}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            if r["model"] != model:
                continue
            if "error" in r:
                lines.append(f"| {r['target']} | {r['variant']}: {r['error']} |" + " |" * (len(cols) - 2))
                continue
            cells = [fmt(r.get(c)) if c != "float" else (", ".join(r.get("float") or [])[:160] or "-") for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += goals(rows)
    if meta.get("note"):
        lines += ["Notes: " + meta["note"], ""]
    Path(out + ".md").write_text("\n".join(lines))
    return "\n".join(lines)


def goals(rows: list) -> list[str]:
    """Issue 19's goals, per model and runtime, for the artifact edgekiln keeps (--recover)."""
    out = ["## Goals (issue 19), the artifact edgekiln keeps", "",
           "| model | target | goal | value | met |", "|---|---|---|---|---|"]
    for r in rows:
        if not str(r.get("variant", "")).startswith("edgekiln --recover") or "error" in r:
            continue
        bare = next((b for b in rows if b["model"] == r["model"] and b["target"] == r["target"]
                     and b["variant"].startswith("bare")), {})
        checks = []
        if r.get("det_map50") is not None:
            checks += [("mAP@0.5 vs source >= 0.95", r["det_map50"], r["det_map50"] >= 0.95),
                       ("band F1 >= 0.95", r.get("det_band_f1"), (r.get("det_band_f1") or 0) >= 0.95),
                       ("band F1 lower bound >= 0.90", r.get("det_band_f1_low"), (r.get("det_band_f1_low") or 0) >= 0.90),
                       ("int8 MACs >= 0.85", r.get("int8_macs"), (r.get("int8_macs") or 0) >= 0.85),
                       ("mAP >= bare tool's", f"{r['det_map50']:.3f} vs {bare.get('det_map50') or 0:.3f}",
                        r["det_map50"] >= (bare.get("det_map50") or 0))]
        if r.get("top1_agreement") is not None:
            checks += [("top-1 agreement >= 19/20", r["top1_agreement"], r["top1_agreement"] >= 0.95)]
        if r.get("region_f1") is not None:
            checks += [("region F1 >= 0.95", r["region_f1"], r["region_f1"] >= 0.95)]
        if r.get("plain_s") and r.get("convert_s"):
            ratio = r["convert_s"] / r["plain_s"]
            checks += [("int8 convert <= 3x plain int8", f"{ratio:.2f}x", ratio <= 3.0)]
        for goal, value, ok in checks:
            where = r["target"] + r["variant"][len("edgekiln --recover"):]  # e.g. "intel [cpu=avx512-vnni]"
            out.append(f"| {r['model']} | {where} | {goal} | {fmt(value)} | {'yes' if ok else 'NO'} |")
    return out + [""]


if __name__ == "__main__":
    main()
