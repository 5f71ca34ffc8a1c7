"""converters/ekit_ncnn.py and ekit_mnn.py: the pure parts (no ncnn or MNN needed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
CONVERTERS = Path(__file__).resolve().parents[2] / "converters"


def load(name):
    sys.path.insert(0, str(CONVERTERS))
    try:
        spec = importlib.util.spec_from_file_location(name, CONVERTERS / name.split("_", 1)[1] / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(CONVERTERS))


@pytest.fixture(scope="module")
def kn():
    return load("ekit_ncnn")


@pytest.fixture(scope="module")
def km():
    return load("ekit_mnn")


PARAM = """7767517
4 5
Input                    in0                      0 1 in0
Convolution              conv_0                   1 1 in0 1 0=4 1=3 4=1 6=108
Hardmax                  Hardmax_1                1 1 1 2 0=1
Split                    splitncnn_0              1 2 2 out1 out0
"""


def test_param_layers_blobs_and_unknown_types(kn):
    layers = kn.param_layers(PARAM)
    assert [l["type"] for l in layers] == ["Input", "Convolution", "Hardmax", "Split"]
    assert layers[3]["inputs"] == ["2"] and layers[3]["outputs"] == ["out1", "out0"]
    assert kn.blob_names(layers) == (["in0"], ["out0", "out1"])  # by number, not by position
    known = {"Input", "Convolution", "Split"}
    assert kn.unknown_layers(layers, known.__contains__) == ["Hardmax"]
    assert kn.source_ops("ignore Hardmax Hardmax_1 param axis=1\n", ["Hardmax"]) == ["Hardmax"]
    assert kn.source_ops("", ["pnnx.Expression"]) == ["pnnx.Expression"]
    with pytest.raises(ValueError, match="magic"):
        kn.param_layers("not a param\n")


def test_pnnx_arguments_name_every_output(kn, tmp_path, monkeypatch):
    monkeypatch.setattr(kn, "pnnx_binary", lambda: Path("/x/pnnx"))
    cmd, paths = kn.pnnx_command(Path("m.onnx"), [1, 3, 224, 224], tmp_path, True, 2)
    assert cmd[:5] == ["/x/pnnx", "m.onnx", "inputshape=[1,3,224,224]f32", "fp16=1", "optlevel=2"]
    assert {c.split("=", 1)[0] for c in cmd[5:]} == set(kn.OUTPUT_KEYS)
    assert all(p.parent == tmp_path for p in paths.values())  # nothing lands beside the source model


def test_mnn_unsupported_ops_and_last_lines(km):
    log = ("The device supports: i8sdot:0\n[23:50:54] :220: These Op Not Support: ONNX::Hardmax ONNX::Foo \n"
           "Converted Failed!\n")
    assert km.unsupported_ops(log) == ["Hardmax", "Foo"]
    assert km.unsupported_ops("Converted Success!\n") == []
    assert "device supports" not in km.last_lines(log)


def test_mnn_tools_never_go_through_the_wheels_console_scripts(km):
    cmd = km.tool_command("quant", ["a.mnn", "b.mnn", "c.json"])
    assert cmd[0] == sys.executable and "_tools.mnnquant([" in cmd[2] and "MNN.tools" not in cmd[2]
    assert cmd[3:] == ["a.mnn", "b.mnn", "c.json"]


def test_stable_uuid_depends_on_content_only(km, tmp_path):
    def fake(uid, body):
        p = tmp_path / f"{uid[:4]}-{body}.mnn"
        p.write_bytes(b"\x00head" + uid.encode() + b"tail" + body.encode())
        return p

    a = fake("f6326e7d-1eb1-4ea3-8825-c0b2ffa9cf30", "same")
    b = fake("e9a69f2d-ec38-4a7a-8e0a-f5a398357908", "same")
    c = fake("e9a69f2d-ec38-4a7a-8e0a-f5a398357908", "other")
    ua = km.stable_uuid(a, "f6326e7d-1eb1-4ea3-8825-c0b2ffa9cf30")
    ub = km.stable_uuid(b, "e9a69f2d-ec38-4a7a-8e0a-f5a398357908")
    uc = km.stable_uuid(c, "e9a69f2d-ec38-4a7a-8e0a-f5a398357908")
    assert ua == ub != uc and len(ua) == 36 and a.read_bytes() == b.read_bytes()
    assert km.stable_uuid(a, "") == ""  # no uuid in the file: nothing to replace
    with pytest.raises(ValueError, match="exactly once"):
        km.stable_uuid(a, "00000000-0000-4000-8000-000000000000")


SPEC = {"shape": [1, 3, 4, 5], "layout": "nchw", "color": "rgb", "scale": 255.0,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def test_calibration_tensors_become_the_same_pixels_and_config(km, tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, size=(4, 5, 3)).astype(np.float64)
    x = ((pixels / 255.0 - np.array(SPEC["mean"])) / np.array(SPEC["std"])).transpose(2, 0, 1).astype(np.float32)
    back, err = km.to_pixels(x, SPEC)
    assert err < 0.01 and np.array_equal(back, pixels.astype(np.uint8))
    n, worst = km.calibration_images(x[None], dict(SPEC, color="bgr"), tmp_path / "cal", 10)
    from PIL import Image

    saved = np.asarray(Image.open(tmp_path / "cal" / "00000.png"))
    assert n == 1 and np.array_equal(saved, pixels.astype(np.uint8)[..., ::-1])  # files are RGB
    cfg = km.quant_config(dict(SPEC, color="bgr"), tmp_path / "cal", n, "KL", "MAX_ABS")
    assert cfg["format"] == "BGR" and (cfg["width"], cfg["height"]) == (5, 4) and cfg["path"].endswith("/")
    assert cfg["mean"] == pytest.approx([123.675, 116.28, 103.53])
    assert cfg["normal"] == pytest.approx([1 / (0.229 * 255), 1 / (0.224 * 255), 1 / (0.225 * 255)])
    # no mean/std, pixels scaled by 1: mean 0, normal 1; a tensor that is not 8-bit pixels shows
    plain = {"shape": [1, 3, 4, 5], "layout": "nchw", "scale": 1.0, "mean": None, "std": None}
    assert km.quant_config(plain, tmp_path, 1, "EMA", "ADMM")["normal"] == [1.0, 1.0, 1.0]
    assert km.to_pixels(np.full((3, 4, 5), 0.5, dtype=np.float32), plain)[1] == pytest.approx(0.5)


def test_minmax_is_ema_with_the_set_as_one_batch_capped_by_pixels(km, tmp_path):
    spec = {"shape": [1, 3, 320, 320], "layout": "nchw", "scale": 255.0, "mean": None, "std": None}
    cfg = km.quant_config(spec, tmp_path, 29, "MINMAX", "MAX_ABS")
    assert cfg["feature_quantize_method"] == "EMA" and cfg["batch_size"] == 29 and cfg["used_image_num"] == 29
    big = dict(spec, shape=[1, 3, 640, 640])  # 4x the pixels: a quarter of the batch at most
    assert km.quant_config(big, tmp_path, 500, "MINMAX", "MAX_ABS")["batch_size"] == 8
    assert "batch_size" not in km.quant_config(spec, tmp_path, 29, "EMA", "MAX_ABS")  # plain EMA: MNN's one a step


def _net(first):
    """A net as MNNConvert's JSON writes it: input -> Reshape(shape const) -> Reshape(same const) -> output."""
    return {"oplists": [
        {"type": "Input", "name": "x", "inputIndexes": [], "outputIndexes": [0]},
        {"type": "Const", "name": "shape", "inputIndexes": [], "outputIndexes": [1],
         "main": {"dims": [3], "int32s": [first, 82, -1]}},
        {"type": "Reshape", "name": "r1", "inputIndexes": [0, 1], "outputIndexes": [2]},
        {"type": "Reshape", "name": "r2", "inputIndexes": [2, 1], "outputIndexes": [3]},
        {"type": "Const", "name": "other", "inputIndexes": [], "outputIndexes": [4], "main": {"int32s": [1, 2]}},
        {"type": "BinaryOp", "name": "add", "inputIndexes": [3, 4], "outputIndexes": [5]}]}


def test_batchable_lets_reshape_constants_copy_the_batch(km):
    net = _net(1)
    assert km.batchable(net) == 1  # one constant, shared by two reshapes
    assert net["oplists"][1]["main"]["int32s"] == [0, 82, -1]
    assert net["oplists"][4]["main"]["int32s"] == [1, 2]  # not a reshape's shape: untouched
    assert km.batchable(_net(-1)) == 0 and km.batchable(_net(0)) == 0 and km.batchable({}) == 0
    assert km.json_args("a.mnn", "a.json", True) == ["-f", "MNN", "--modelFile", "a.mnn", "--JsonFile", "a.json"]
    assert km.json_args("a.json", "b.mnn", False)[:4] == ["-f", "JSON", "--modelFile", "a.json"]


def test_w8_is_weightquantbits_8(km):
    assert km.convert_args("a.onnx", "a.mnn", False, weight_bits=8)[-2:] == ["--weightQuantBits", "8"]
    assert "--weightQuantBits" not in km.convert_args("a.onnx", "a.mnn", True)
