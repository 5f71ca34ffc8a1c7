"""The ncnn and mnn targets through the CLI, for real: the real ImageNet MobileNetV2 weights and
the real YOLOv8n detector converted with pnnx / MNNConvert (MNN int8 calibrated on the real
photos), validated with ncnn's and MNN's own runtimes on held-out (mirrored) photos with the
task metrics; a model with an op neither converter has, an unsupported precision, and outputs
made useless on purpose (the detector's class scores zeroed in the graph) refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MOBILENET, run_cli, run_json

pytestmark = pytest.mark.integration

onnx = pytest.importorskip("onnx")

FAST = ["--option", "latency_runs=5", "--option", "latency_warmup=1"]


def job_of(out: Path) -> Path:
    return max((out / ".edgekiln" / "jobs").iterdir(), key=lambda p: p.stat().st_mtime)


def env_python(image: str) -> str:
    from edgekiln.runners.local import LocalRunner

    return LocalRunner().prepare(image).ref


def rerun(job: Path, pattern: str, image: str) -> None:
    """Run one rendered step of a kept job again, as the local runner does."""
    script = next((job / "steps").glob(pattern))
    env = dict(os.environ, PYTHONPATH=".", EKIT_PATHS=json.dumps({"model": None, "calib": None, "val": None}))
    for var in ("PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(var, None)
    proc = subprocess.run([env_python(image), f"steps/{script.name}"], cwd=job, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def arts(result) -> dict:
    return {(a["target"], a["precision"]): a for a in result["artifacts"]}


@pytest.fixture(scope="module")
def mobilenet(weights, photos, tmp_path_factory):
    calib, val = photos
    out = tmp_path_factory.mktemp("mnv2-dist")
    result = run_json("build", "--target", "ncnn,mnn", "--model", weights, *MOBILENET, "--name", "mnv2",
                      "--precision", "fp32,fp16", "--calib", calib, "--val", val, "--out", out,
                      "--runner", "local", "--keep-job", *FAST)
    return {"arts": arts(result), "job": job_of(out), "out": out}


@pytest.fixture(scope="module")
def yolo_built(yolo, tmp_path_factory):
    model, (calib, val) = yolo
    out = tmp_path_factory.mktemp("yolo-ncnn-mnn") / "dist"
    # fp16, the targets' default (fp32 is measured in bench/results/ncnn_mnn_vs_bare.md): ncnn is slow on x86
    result = run_json("build", "--target", "ncnn,mnn", "--model", model, "--precision", "fp16",
                      "--calib", calib, "--val", val, "--out", out, "--runner", "local", "--keep-job", *FAST)
    return {"arts": arts(result), "job": job_of(out), "model": model, "photos": (calib, val)}


def test_mobilenet_fp32_fp16_on_ncnn_and_mnn(mobilenet):
    a = mobilenet["arts"]
    assert set(a) == {("ncnn", "fp32"), ("ncnn", "fp16"), ("mnn", "fp32"), ("mnn", "fp16")}
    for target in ("ncnn", "mnn"):
        fp32, fp16 = a[(target, "fp32")], a[(target, "fp16")]
        assert fp32["metrics"]["top1_agreement"] == 1.0 and fp32["metrics"]["cosine"] > 0.9999
        assert fp16["metrics"]["top1_agreement"] >= 0.95 and fp16["metrics"]["cosine"] > 0.998
        assert fp16["size_bytes"] < 0.55 * fp32["size_bytes"]
        assert fp32["metrics"]["accuracy"] == fp32["metrics"]["source_accuracy"]
    ncnn = json.loads((Path(a[("ncnn", "fp16")]["path"]) / "manifest.json").read_text())
    assert ncnn["files"] and {f["path"] for f in ncnn["files"]} == {"model.ncnn.param", "model.ncnn.bin"}
    assert [t["name"] for t in ncnn["io"]["inputs"]] == ["in0"]
    assert ncnn["io"]["outputs"][0]["name"] == "out0" and ncnn["io"]["outputs"][0]["source_name"] == "output"
    assert "ncnn.Mat" in ncnn["feed"]["preprocessing"] and ncnn["feed"]["shape"] == [3, 224, 224]
    assert ncnn["validation"]["runtime"]["low_precision"] is True and "use_fp16_storage" in ncnn["validation"]["runtime"]["options"]
    assert not list((mobilenet["job"] / "work" / "source").glob("*pnnx*"))  # pnnx ran on a private copy
    mnn = json.loads((Path(a[("mnn", "fp32")]["path"]) / "manifest.json").read_text())
    assert [t["name"] for t in mnn["io"]["outputs"]] == ["output"] and mnn["feed"]["shape"] == [1, 3, 224, 224]
    assert mnn["validation"]["runtime"]["name"] == "mnn"
    assert any("uuid" in n for n in mnn["notes"])


def test_mnn_conversion_gives_the_same_bytes_twice(mobilenet):
    job = mobilenet["job"]
    published = Path(mobilenet["arts"][("mnn", "fp32")]["path"]) / "model.mnn"
    rerun(job, "*-mnn-fp32-convert.py", "mnn")
    again = job / "work" / "mnn" / "fp32" / "model.mnn"
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(published.read_bytes()).digest()


def mnn_mobilenet(mobilenet, photos, tmp_path, precision):
    """The MobileNetV2 ONNX of the fp32 build, built for mnn at ``precision`` -> (artifact, out)."""
    calib, val = photos
    onnx_model = tmp_path / "mnv2.onnx"
    shutil.copy(mobilenet["job"] / "work" / "source" / "model.onnx", onnx_model)
    out = tmp_path / "dist"
    result = run_json("build", "--target", "mnn", "--model", onnx_model, "--input-shape", "1,3,224,224",
                      "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--precision", precision,
                      "--calib", calib, "--val", val, "--out", out, "--runner", "local", "--keep-job", *FAST)
    return result["artifacts"][0], out


def test_mnn_int8_calibrated_on_the_photos(mobilenet, photos, tmp_path):
    art, out = mnn_mobilenet(mobilenet, photos, tmp_path, "int8")
    fp32 = mobilenet["arts"][("mnn", "fp32")]
    assert art["metrics"]["top1_agreement"] >= 0.85 and art["metrics"]["cosine"] >= 0.90
    assert art["size_bytes"] < 0.3 * fp32["size_bytes"]
    conv = json.loads(next((job_of(out) / "work" / "results").glob("*-mnn-int8-convert.json")).read_text())
    q = conv["quantization"]
    assert q["images"] == 20 and q["pixel_rounding_error"] < 0.01
    # feature_quantize_method=auto: KL, EMA and MINMAX built and measured; the best kept, nothing float
    assert q["calibrator_choice"] == "auto" and q["feature_quantize_method"] in ("KL", "EMA", "MINMAX")
    assert set(q["calibrators_tried"]) == {"KL", "EMA", "MINMAX"} and q["float_head"] == q["float_ops"] == []
    assert q["mean"] == pytest.approx([123.675, 116.28, 103.53]) and q["width"] == 224


def test_mnn_w8_is_weight_only_int8_and_says_so(mobilenet, photos, tmp_path):
    """w8: MNNConvert --weightQuantBits 8, a quarter of the size, float compute; no calibration
    step, and the result says it is not int8 inference."""
    art, out = mnn_mobilenet(mobilenet, photos, tmp_path, "w8")
    assert art["precision"] == "w8" and art["metrics"]["top1_agreement"] >= 0.95
    assert art["size_bytes"] < 0.3 * mobilenet["arts"][("mnn", "fp32")]["size_bytes"]
    conv = json.loads(next((job_of(out) / "work" / "results").glob("*-mnn-w8-convert.json")).read_text())
    assert conv["quantization"] is None and any("NOT int8 inference" in n for n in conv["notes"])


def test_yolov8n_on_ncnn_and_mnn_keeps_the_boxes(yolo_built):
    for (target, precision), art in yolo_built["arts"].items():
        m = art["metrics"]
        assert (m["task"], m["head"]) == ("detect", "yolov8"), (target, precision)
        assert m["det_boxes_source"] >= 5
        assert m["det_f1"] >= (0.99 if precision == "fp32" else 0.98), (target, precision, m["det_f1"])
    assert set(yolo_built["arts"]) == {("ncnn", "fp16"), ("mnn", "fp16")}
    manifest = json.loads((Path(yolo_built["arts"][("ncnn", "fp16")]["path"]) / "manifest.json").read_text())
    assert "Letterbox" in manifest["feed"]["preprocessing"] and manifest["feed"]["shape"] == [3, 320, 320]
    assert manifest["io"]["outputs"][0]["source_name"] == "output0"


def test_yolov8n_mnn_int8_keeps_f1_or_is_refused_naming_it(yolo_built, tmp_path):
    calib, val = yolo_built["photos"]
    proc = run_cli("build", "--target", "mnn", "--model", yolo_built["model"], "--precision", "int8", "--calib", calib,
                   "--val", val, "--out", tmp_path, "--runner", "local", "--json", *FAST)
    if proc.returncode == 0:
        assert json.loads(proc.stdout)["artifacts"][0]["metrics"]["det_band_f1"] >= 0.95
    else:
        assert proc.returncode == 10, proc.stderr[-2000:]
        assert "min det" in json.loads(proc.stdout)["error"]["message"]  # mAP50 / band F1 (docs/gates.md)


def zeroed_scores(model):
    """The detector with every class score multiplied by 0 in the graph (boxes untouched)."""
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    name = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = [o + "_unscaled" if o == name else o for o in node.output]
    mask = np.ones((1, 22, 1), dtype=np.float32)
    mask[:, 4:] = 0.0
    m.graph.initializer.append(numpy_helper.from_array(mask, "edgekiln_break"))
    m.graph.node.append(helper.make_node("Mul", [name + "_unscaled", "edgekiln_break"], [name]))
    return m


def test_zeroed_scores_are_refused_by_the_detection_gate(yolo_built):
    """A useless detector converted and validated by the real steps of both targets: no box
    survives, and the detection gate refuses it, naming det F1."""
    from edgekiln.plan import check_thresholds
    from edgekiln.targets import all_targets

    job = yolo_built["job"]
    source = job / "work" / "source" / "model.onnx"
    onnx.save(zeroed_scores(onnx.load(str(source))), str(source))
    for target in ("ncnn", "mnn"):
        rerun(job, f"*-{target}-fp16-convert.py", target)
        rerun(job, f"*-{target}-fp16-validate.py", target)
        m = json.loads((job / "work" / target / "fp16" / "report.json").read_text())["metrics"]
        assert m["det_boxes_artifact"] == 0 and m["det_f1"] == 0.0, target
        failures = check_thresholds(m, all_targets()[target].thresholds_for("fp16"))
        assert any(f.startswith("min det f1 0.98 missed") for f in failures), failures


def hardmax_model(path: Path) -> Path:
    """A real ONNX op neither pnnx/ncnn nor MNNConvert has: Conv -> Hardmax."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                               helper.make_node("Hardmax", ["c"], ["y"], axis=1)], "hardmax", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_an_op_the_converters_lack_is_one_line_naming_it(photos, tmp_path):
    model = hardmax_model(tmp_path / "hardmax.onnx")
    proc = run_cli("build", "--target", "ncnn,mnn", "--model", model, "--precision", "fp32",
                   "--val", photos[1], "--max-images", "4", "--out", tmp_path / "dist", "--runner", "local")
    assert proc.returncode == 8, proc.stdout[-2000:] + proc.stderr[-2000:]
    error = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in proc.stderr
    assert "has no layer for ONNX operation(s) Hardmax (pnnx left them as Hardmax)" in error[0]
    assert "MNN 3.6.1 cannot convert ONNX operation(s) Hardmax" in error[0]
    assert not list((tmp_path / "dist").glob("hardmax/*/ncnn")), "nothing may be published"


def test_unsupported_precision_is_refused_before_anything_runs(weights, photos, tmp_path):
    proc = run_cli("build", "--target", "ncnn", "--model", weights, *MOBILENET, "--precision", "int8",
                   "--calib", photos[0], "--out", tmp_path / "dist")
    assert proc.returncode == 5
    assert "target ncnn does not offer precision 'int8'" in proc.stderr and "fp32, fp16" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "dist").exists()
