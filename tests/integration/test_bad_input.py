"""Bad input gets one clear line, a distinct exit code, no traceback, and nothing published."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from edgekiln import errors
from tests.conftest import run_cli, run_json

SHAPE = ["--input-shape", "1,3,224,224"]


def fails(code: int, *args, match: str = "") -> str:
    proc = run_cli("build", *args, check=code)
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("error:"), err
    assert match.lower() in last.lower(), last
    return last


@pytest.fixture
def onnx_model(tmp_path) -> Path:
    """A tiny real ONNX classifier (made with the onnx package from the test's own numbers)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(10, 3)).astype("float32"), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    return path


def test_missing_empty_and_non_models(tmp_path):
    fails(errors.ModelNotFound.exit_code, "--model", tmp_path / "nope.onnx", match="does not exist")
    (tmp_path / "empty.onnx").write_bytes(b"")
    fails(errors.InvalidModel.exit_code, "--model", tmp_path / "empty.onnx", match="empty")
    (tmp_path / "readme.txt").write_text("hello")
    fails(errors.InvalidModel.exit_code, "--model", tmp_path / "readme.txt", match="not a model")
    (tmp_path / "weights.pt").write_text("not torch")
    fails(errors.InvalidModel.exit_code, "--model", tmp_path / "weights.pt", match="not a PyTorch file")


def test_target_precision_calibration_errors(onnx_model, tmp_path):
    fails(errors.TargetError.exit_code, "--model", onnx_model, "--target", "toaster", match="unknown target")
    fails(errors.TargetError.exit_code, "--model", onnx_model, "--precision", "fp8", match="does not offer")
    fails(errors.DataError.exit_code, "--model", onnx_model, "--precision", "int8", match="calibration")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    fails(errors.DataError.exit_code, "--model", onnx_model, "--precision", "int8", "--calib", empty,
          match="no images")
    fails(errors.DataError.exit_code, "--model", onnx_model, "--precision", "int8", "--calib", onnx_model,
          match="not a folder")
    fails(errors.UsageError.exit_code, "--model", onnx_model, "--input-shape", "1,3,224", match="input-shape")
    fails(errors.UsageError.exit_code, "--model", onnx_model, "--version", "../x", match="version")
    fails(errors.UsageError.exit_code, "--model", onnx_model, "--option", "nonsense=1", match="no option")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_calibration_folder(onnx_model, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        fails(errors.DataError.exit_code, "--model", onnx_model, "--precision", "int8", "--calib", locked)
    finally:
        locked.chmod(0o755)


@pytest.mark.integration
def test_truncated_onnx(onnx_model, tmp_path):
    data = onnx_model.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    fails(errors.InvalidModel.exit_code, "--model", cut, "--out", tmp_path / "d", "--runner", "local",
          match="cut.onnx")
    assert not (tmp_path / "d" / "cut").exists()


@pytest.mark.integration
def test_shape_mismatch(onnx_model, tmp_path):
    fails(errors.ShapeError.exit_code, "--model", onnx_model, "--input-shape", "1,3,64,64",
          "--out", tmp_path / "d", "--runner", "local", match="shape")


@pytest.mark.integration
def test_awkward_images_are_converted_or_skipped(onnx_model, photos, tmp_path):
    calib, _ = photos
    odd = tmp_path / "odd"
    odd.mkdir()
    sources = sorted(calib.glob("*.jpg"))
    with Image.open(sources[0]) as im:
        im.convert("L").save(odd / "gray.png")
    with Image.open(sources[1]) as im:
        im.convert("CMYK").save(odd / "cmyk.jpg")
    with Image.open(sources[2]) as im:
        import numpy as np
        deep = (np.asarray(im.convert("L"), dtype="uint16") * 257)
        Image.fromarray(deep).save(odd / "deep16.png")  # 16-bit grayscale PNG
    (odd / "corrupt.jpg").write_bytes(sources[3].read_bytes()[:300])
    (odd / "text.png").write_text("not an image")
    # judged on the 20 validation photos: three usable images cannot bound int8 agreement (docs/gates.md)
    result = run_cli("build", "--model", onnx_model, "--precision", "fp32,int8", "--calib", odd,
                     "--val", photos[1], "--out", tmp_path / "d", "--runner", "local", "--json", check=0)
    assert "corrupt.jpg" in result.stderr and "text.png" in result.stderr  # each skipped file is named
    assert result.stderr.count("corrupt.jpg") == 1 and result.stderr.count("text.png") == 1  # once
    built = json.loads(result.stdout)
    assert {a["status"] for a in built["artifacts"]} == {"built"}
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"garbage")
    (broken / "b.png").write_text("also garbage")
    fails(errors.DataError.exit_code, "--model", onnx_model, "--precision", "int8", "--calib", broken,
          "--out", tmp_path / "d2", "--runner", "local", match="image")


@pytest.mark.integration
@pytest.mark.parametrize("name", ['a"; import os; os.system("touch /tmp/pwned") #', "my model",
                                  "modèle ünïcode", "../../escape"])
def test_hostile_model_names_stay_inside_the_output_root(onnx_model, tmp_path, name):
    out = tmp_path / "dist"
    result = run_json("build", "--model", onnx_model, "--name", name, "--out", out, "--runner", "local")
    path = Path(result["artifacts"][0]["path"]).resolve()
    assert out.resolve() in path.parents
    assert path.parent.parent.parent.parent == out.resolve()
    assert not Path("/tmp/pwned").exists()
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["model"]["name"] == result["model"]
