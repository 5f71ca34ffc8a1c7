"""The Docker and local runners give the same validated result for the same request: the CLI in
a subprocess, a real (small) ONNX model, real labelled photos, fp32 and int8."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import run_json

from .conftest import STAND_IN


def _tiny_onnx(path: Path) -> Path:
    np = pytest.importorskip("numpy")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, .3, (8, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(np.zeros(8, np.float32), "B"),
             numpy_helper.from_array(rng.normal(0, .3, (8, 10)).astype(np.float32), "G")]
    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "G"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_docker_and_local_runners_give_the_same_artifacts(onnx_image, photos, tmp_path):
    calib, val = photos
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    args = ["build", "--target", "onnx", "--model", model, "--precision", "fp32,int8",
            "--calib", calib, "--val", val]
    docker = run_json(*args, "--out", tmp_path / "docker", "--runner", "docker",
                      env={"EDGEKILN_BASE_IMAGE": STAND_IN}, timeout=900)
    local = run_json(*args, "--out", tmp_path / "local", "--runner", "local", timeout=900)
    assert docker["runner"] == "docker" and local["runner"] == "local"
    assert docker["version"] == local["version"]
    for d, l in zip(docker["artifacts"], local["artifacts"]):
        assert (d["precision"], d["status"]) == (l["precision"], l["status"]) == (d["precision"], "built")
        assert d["metrics"] == l["metrics"]
        digests = [hashlib.sha256((Path(a["path"]) / "model.onnx").read_bytes()).hexdigest()
                   for a in (d, l)]
        assert digests[0] == digests[1], f"{d['precision']}: the artifacts differ"
        manifest = json.loads(Path(d["manifest"]).read_text())
        env = manifest["steps"][0]["environment"]
        assert env["runner"] == "docker" and env["ref"] == onnx_image.tag
        assert "--network none" in manifest["steps"][0]["command"]
