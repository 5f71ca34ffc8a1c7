"""Task-aware validation on real models, for real: the CLI builds a real Ultralytics YOLOv8n
export (nudenet's 320n.onnx, with its metadata) and a real text-detection probability-map model
(PP-OCRv4 det from rapidocr-onnxruntime, opset 12) on real photos (Ultralytics' bus/zidane,
scikit-image's samples, the ImageNet photos; validation on their mirror images).

Outputs made useless on purpose — the detector's class scores multiplied by 0 and the map scaled
by 0.25, both by editing the ONNX graph — are validated by the real validate step as if they were
artifacts: the old cosine gate passes them, the task gates refuse them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli, run_json

pytestmark = pytest.mark.integration

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def task_photos():
    from edgekiln.demo import task_photo_folders

    return task_photo_folders()


@pytest.fixture(scope="module")
def onnx_python() -> str:
    if os.environ.get("EDGEKILN_ONNX_PYTHON"):
        return os.environ["EDGEKILN_ONNX_PYTHON"]
    from edgekiln.runners.local import LocalRunner

    return LocalRunner().prepare("onnx").ref


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The two real models, each beside an input-spec sidecar (how they are fed)."""
    from edgekiln.demo import text_detector_onnx, yolov8n_onnx

    root = tmp_path_factory.mktemp("task-models")
    yolo = root / "yolov8n.onnx"
    shutil.copy(yolov8n_onnx(), yolo)
    (root / "yolov8n.onnx.edgekiln.toml").write_text(
        'shape = [1, 3, 320, 320]\nresize = "letterbox"\n')
    ocr = root / "ppocr_det.onnx"
    shutil.copy(text_detector_onnx(), ocr)
    (ocr.parent / "ppocr_det.onnx.edgekiln.toml").write_text(
        'shape = [1, 3, 320, 320]\nresize = "stretch"\ncolor = "bgr"\nmean = [0.5, 0.5, 0.5]\n'
        'std = [0.5, 0.5, 0.5]\n')
    return {"yolo": yolo, "ocr": ocr}


def build(model, photos, out, precision, check=0):
    calib, val = photos
    args = ["build", "--target", "onnx", "--model", model, "--precision", precision, "--calib", calib,
            "--val", val, "--out", out, "--runner", "local", "--keep-job"]
    if check == 0:
        return run_json(*args)
    return run_cli(*args, check=check)


def job_of(out: Path) -> Path:
    jobs = sorted((out / ".edgekiln" / "jobs").iterdir(), key=lambda p: p.stat().st_mtime)
    return jobs[-1]


def revalidate(job: Path, python: str, broken) -> dict:
    """Put ``broken`` (a ModelProto) where the fp32 artifact was and run the real validate step."""
    onnx.save(broken, str(job / "work" / "onnx" / "fp32" / "model.onnx"))
    script = next((job / "steps").glob("*-onnx-fp32-validate.py"))
    env = dict(os.environ, PYTHONPATH=".", EKIT_PATHS=json.dumps({"model": None, "calib": None, "val": None}))
    for var in ("PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(var, None)
    proc = subprocess.run([python, f"steps/{script.name}"], cwd=job, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads((job / "work" / "onnx" / "fp32" / "report.json").read_text())["metrics"]


def scaled_output(model, factor: np.ndarray):
    """The model with its first output multiplied by ``factor`` (broadcast), in the graph."""
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    name = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = [o + "_unscaled" if o == name else o for o in node.output]
    m.graph.initializer.append(numpy_helper.from_array(factor.astype(np.float32), "edgekiln_break"))
    m.graph.node.append(helper.make_node("Mul", [name + "_unscaled", "edgekiln_break"], [name]))
    onnx.checker.check_model(m)
    return m


def limits(precision):
    from edgekiln.targets import all_targets

    return all_targets()["onnx"].thresholds_for(precision)


# --------------------------------------------------------------------------- YOLOv8n

@pytest.fixture(scope="module")
def yolo_fp32(models, task_photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("yolo-dist")
    result = build(models["yolo"], task_photos, out, "fp32")
    manifest = json.loads(Path(result["artifacts"][0]["manifest"]).read_text())
    return {"result": result, "manifest": manifest, "job": job_of(out)}


def test_yolov8n_report_has_the_detection_metrics_and_why(yolo_fp32):
    man = yolo_fp32["manifest"]
    m = man["validation"]["metrics"]
    assert (m["task"], m["head"]) == ("detect", "yolov8")
    assert "Ultralytics metadata task=detect" in m["task_reason"] and "18 names" in m["task_reason"]
    assert m["det_boxes_source"] >= 5 and m["det_f1"] == 1.0 and m["det_mean_iou"] == 1.0
    gates = {g["threshold"]: g for g in man["validation"]["gates"]}
    assert gates["min_det_f1"]["passed"] is True and gates["min_det_f1"]["value"] == 1.0
    assert gates["min_top1_agreement"]["passed"] is None
    assert gates["min_top1_agreement"]["reason"].startswith("not applicable:")
    assert gates["min_map_iou"]["reason"] == \
        "not applicable: the model's task is detect, not the task this metric is for"
    assert "Letterbox" in man["feed"]["preprocessing"] and "(114, 114, 114)" in man["feed"]["preprocessing"]
    assert man["task"]["params"]["score_threshold"] == 0.25 and man["task"]["params"]["nms_iou"] == 0.45
    assert "class-aware NMS at IoU 0.45" in man["task"]["decoding"]


def test_a_detector_without_a_resize_is_letterboxed_by_default(models, task_photos, yolo_fp32, tmp_path):
    """The YOLOv8n detector with no resize in its sidecar: fed as Ultralytics trains it
    (letterbox, pad 114), the feed sentence says so, the numbers are those of --resize letterbox."""
    model = tmp_path / "yolov8n.onnx"
    shutil.copy(models["yolo"], model)
    (tmp_path / "yolov8n.onnx.edgekiln.toml").write_text("shape = [1, 3, 320, 320]\n")
    result = build(model, task_photos, tmp_path / "dist", "fp32")
    man = json.loads(Path(result["artifacts"][0]["manifest"]).read_text())
    assert (man["input_spec"]["resize"], man["input_spec"]["pad"]) == ("letterbox", 114)
    assert "resize_auto" not in man["input_spec"]
    assert "the default for a detector" in man["feed"]["preprocessing"]
    given = yolo_fp32["manifest"]["validation"]["metrics"]
    assert man["validation"]["metrics"]["det_f1"] == given["det_f1"]


def test_zeroed_scores_pass_the_cosine_but_not_the_detection_gate(yolo_fp32, onnx_python):
    from edgekiln.plan import check_thresholds

    job = yolo_fp32["job"]
    source = onnx.load(str(job / "work" / "source" / "model.onnx"))
    mask = np.ones((1, 22, 1))
    mask[:, 4:] = 0.0  # every class score -> 0: no box survives
    m = revalidate(job, onnx_python, scaled_output(source, mask))
    assert m["cosine"] >= 0.90  # the old int8 cosine floor: passed
    assert m["det_boxes_artifact"] == 0 and m["det_f1"] == 0.0 and m["det_boxes"] >= 150
    failures = check_thresholds(m, limits("int8"))
    assert [f.split(" missed")[0] for f in failures] == [
        "min det map50 0.95", "min det map50 low 0.9", "min det band f1 0.95", "min det band f1 low 0.9"]
    assert "min_cosine" not in limits("int8") and "min_raw_cosine" in limits("int8")


def int8_build(model, photos, out):
    """int8 on the onnx target (published or refused): (process, convert result, metrics)."""
    proc = run_cli("build", "--target", "onnx", "--model", model, "--precision", "int8",
                   "--calib", photos[0], "--val", photos[1], "--out", out, "--runner", "local", "--json")
    if proc.returncode == 0:
        art = json.loads(proc.stdout)["artifacts"][0]
        return proc, {"notes": json.loads(Path(art["manifest"]).read_text())["notes"]}, art["metrics"]
    job = job_of(out)  # a refused build keeps its job for inspection
    conv = json.loads(next((job / "work" / "results").glob("*-onnx-int8-convert.json")).read_text())
    report = json.loads((job / "work" / "onnx" / "int8" / "report.json").read_text())
    return proc, conv, report["metrics"]


def intel_int8_build(model, photos, out):
    """int8 on the intel target, its job kept: (process, convert result, metrics)."""
    proc = run_cli("build", "--target", "intel", "--model", model, "--precision", "int8",
                   "--calib", photos[0], "--val", photos[1], "--out", out, "--runner", "local", "--json",
                   "--keep-job")
    job = job_of(out)
    conv = json.loads(next((job / "work" / "results").glob("*-intel-int8-convert.json")).read_text())
    return proc, conv, json.loads((job / "work" / "intel" / "int8" / "report.json").read_text())["metrics"]


def test_yolov8n_int8_keeps_f1_or_is_refused_naming_it(models, task_photos, tmp_path):
    proc, conv, m = int8_build(models["yolo"], task_photos, tmp_path)
    # 8 source boxes on the 29 photos: the source step added mosaics of them (docs/gates.md)
    assert m["augmented"] > 0 and m["det_boxes"] >= 150 and "deterministic variant" in m["augmentation"]
    assert "mosaic3x3" in m["augmentation"]
    assert m["det_images"] == 29 + m["augmented"] <= 64 and m["det_f1"] is not None  # still reported
    assert not [n for n in conv["notes"] if "compute ops only" in n]  # the map recipe leaves a detector alone
    if proc.returncode == 0:
        assert m["det_map50"] >= 0.95 and m["det_band_f1"] >= 0.95 and m["det_band_f1_low"] >= 0.90
    else:
        assert conv["quantization"]["head_kept_float"] > 0  # the boxes+scores Concat stays float
        assert proc.returncode == 10, proc.stderr[-2000:]
        assert "min det" in proc.stderr and "min det f1 0.95" not in proc.stderr
        error = json.loads(proc.stdout)["error"]  # --json: JSON on failure too
        assert error["kind"] == "validation" and "min det" in error["message"]


# --------------------------------------------------------------------------- PP-OCRv4 det map

@pytest.fixture(scope="module")
def ocr_fp32(models, task_photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("ocr-dist")
    result = build(models["ocr"], task_photos, out, "fp32")
    return {"result": result, "job": job_of(out)}


def test_text_map_report_has_pixel_iou_and_region_f1(ocr_fp32):
    m = ocr_fp32["result"]["artifacts"][0]["metrics"]
    assert m["task"] == "map" and "probability map" in m["task_reason"]
    assert m["map_iou"] == 1.0 and m["region_f1"] == 1.0 and m["regions_source"] >= 5


def test_quartered_map_passes_the_fp32_cosine_but_not_the_map_gates(ocr_fp32, onnx_python):
    from edgekiln.plan import check_thresholds

    job = ocr_fp32["job"]
    source = onnx.load(str(job / "work" / "source" / "model.onnx"))
    m = revalidate(job, onnx_python, scaled_output(source, np.array(0.25)))
    assert m["cosine"] >= limits("fp32")["min_cosine"]  # scaling keeps the direction: cosine 1
    assert m["regions"] == 0
    failures = check_thresholds(m, limits("fp32"))
    assert [f.split(" missed")[0] for f in failures] == ["min map iou 0.99", "min region f1 0.99"]


def test_opset12_map_int8_upgrades_the_opset_and_is_judged_by_regions(models, task_photos, tmp_path):
    proc, conv, m = int8_build(models["ocr"], task_photos, tmp_path)
    assert m["task"] == "map" and m["map_iou"] is not None and m["region_f1"] is not None
    assert "opset upgraded 12 -> 13 (per-channel int8 needs opset 13)" in conv["notes"]
    assert m["region_f1_low"] is not None and m["map_iou_low"] is not None
    # a map's recipe: Q/DQ on its convs only, every MAC still int8
    assert [n for n in conv["notes"] if "compute ops only (quant_op_types=compute, a probability map)" in n
            and "(100.0% of MACs)" in n]
    if proc.returncode == 0:
        assert m["region_f1"] >= 0.90 and m["map_iou"] >= 0.80
    else:
        assert proc.returncode == 10, proc.stderr[-2000:]
        assert "min region f1" in proc.stderr or "min map iou" in proc.stderr
        assert "cosine" not in proc.stderr  # blank maps no longer refuse it (source-decided)


def test_map_int8_on_intel_quantizes_only_its_convs(models, task_photos, tmp_path):
    """intel's quant_op_types=auto for a map: NNCF ignores every non-compute op type, every MAC int8."""
    proc, conv, m = intel_int8_build(models["ocr"], task_photos, tmp_path)
    q = conv["quantization"]
    assert q["task"] == "map" and q["quant_op_types"] == "compute" and q["int8_mac_fraction"] == 1.0
    assert {"Add", "HSwish", "Interpolate", "Concat"} <= set(q["op_types_kept_float"])
    assert not {"Convolution", "GroupConvolution", "ConvolutionBackpropData"} & set(q["op_types_kept_float"])
    assert [n for n in conv["notes"] if "compute ops only (quant_op_types=compute, a probability map" in n]
    if proc.returncode == 0:
        assert m["region_f1"] >= 0.90 and m["map_iou"] >= 0.80
    else:
        assert proc.returncode == 10, proc.stderr[-2000:]
        assert "min region f1" in proc.stderr or "min map iou" in proc.stderr


def test_task_raw_by_flag_says_which_checks_were_not_possible(models, task_photos, tmp_path):
    """--task raw (the request field, through the CLI): only tensors compared, and the summary
    names the gates that could not be computed instead of a silent '-'."""
    proc = run_cli("build", "--target", "onnx", "--model", models["yolo"], "--precision", "fp32",
                   "--task", "raw", "--val", task_photos[1], "--max-images", "6", "--out", tmp_path,
                   "--runner", "local", check=0)
    assert "task raw: given (--task raw)" in proc.stdout
    assert "onnx/fp32: checks not possible for a raw model: min_det_band_f1, min_det_f1, min_det_map50, " \
           "min_map_iou, min_miou, min_region_f1, min_top1_agreement (only the tensors were compared)" in proc.stdout
    manifest = json.loads(next(tmp_path.glob("yolov8n/*/onnx/fp32/manifest.json")).read_text())
    gate = next(g for g in manifest["validation"]["gates"] if g["threshold"] == "min_det_f1")
    assert gate["passed"] is None and gate["reason"] == "not applicable: the model is 'raw' (given (--task raw))"
    assert manifest["task"]["task"] == "raw" and "compared the tensors only" in manifest["task"]["decoding"]
