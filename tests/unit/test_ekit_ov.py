"""converters/ekit_ov.py: the pure parts (no OpenVINO needed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("numpy")
CONVERTERS = Path(__file__).resolve().parents[2] / "converters"


@pytest.fixture(scope="module")
def ekit_ov():
    sys.path.insert(0, str(CONVERTERS))
    try:
        spec = importlib.util.spec_from_file_location("ekit_ov", CONVERTERS / "openvino" / "ekit_ov.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(CONVERTERS))


SPEC = {"name": "input", "shape": [1, 3, 224, 224], "layout": "nchw", "color": "rgb", "scale": 255.0,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": "crop",
        "dynamic_batch": False}

OV_MESSAGE = """Check 'false' failed at src/frontends/common_translators/src/unconverted_ops_report.cpp:151:
FrontEnd API failed with OpConversionFailure:
Model wasn't fully converted.
Summary:
-- No conversion rule found for operations: com.example.vision.FancyWarp, MyOp
-- Conversion is failed for: GridSample
"""


def test_unconverted_ops_are_named(ekit_ov):
    assert ekit_ov.unconverted_ops(OV_MESSAGE) == ["com.example.vision.FancyWarp", "MyOp", "GridSample"]
    assert ekit_ov.unconverted_ops("some other failure") == []


def test_feed_float_and_baked(ekit_ov):
    f = ekit_ov.feed_for(SPEC, None, dynamic_batch=True)
    assert f["dtype"] == "float32" and f["layout"] == "nchw" and f["shape"] == [1, 3, 224, 224]
    assert "subtract mean" in f["preprocessing"] and "dynamic" in f["preprocessing"]
    b = ekit_ov.feed_for(SPEC, {"steps": []}, dynamic_batch=False)
    assert b["dtype"] == "uint8" and b["layout"] == "nhwc" and b["shape"] == [1, 224, 224, 3]
    assert b["preprocessing"].startswith("Resize the image (bilinear) so its shorter side is 256 px")
    assert "mean" not in b["preprocessing"].split("inside")[0].replace("mean/std", "")


class _FakeNncf:
    class QuantizationPreset(str):
        def __new__(cls, v):
            if v not in ("performance", "mixed"):
                raise ValueError(v)
            return str.__new__(cls, v)

    class ModelType(str):
        def __new__(cls, v):
            if v != "transformer":
                raise ValueError(v)
            return str.__new__(cls, v)

    class TargetDevice:
        CPU, GPU, NPU, ANY = "CPU", "GPU", "NPU", "ANY"

    class IgnoredScope:
        def __init__(self, names, patterns, types, validate):
            self.names, self.patterns, self.types = names, patterns, types


def test_nncf_kwargs_from_options(ekit_ov):
    kw = ekit_ov.nncf_kwargs(_FakeNncf, {"preset": "mixed", "model_type": "", "device": "npu",
                                         "fast_bias_correction": False,
                                         "ignored_scopes": ["head", "re:.*Gemm.*", "type:MatMul"]})
    assert kw["preset"] == "mixed" and "model_type" not in kw and kw["target_device"] == "NPU"
    assert kw["fast_bias_correction"] is False
    desc = ekit_ov.describe_kwargs(kw)
    assert desc["ignored_scope"] == {"names": ["head"], "patterns": [".*Gemm.*"], "types": ["MatMul"]}
    assert "ignored_scope" not in ekit_ov.nncf_kwargs(_FakeNncf, {"ignored_scopes": []})


def test_stable_name_map_renumbers_only_names_openvino_made_up(ekit_ov):
    names = ["input", "Constant_25_compressed", "Constant_25", "Conv_12", "Convolution_31", "Constant_40",
             "Result_28", "onnx::Conv_7", "Relu_3"]
    types = {"Parameter", "Constant", "Convert", "Convolution", "Relu", "Result"}
    assert ekit_ov.stable_name_map(names, types) == {
        "Constant_25_compressed": "Constant_1_compressed", "Constant_25": "Constant_1",
        "Convolution_31": "Convolution_1", "Constant_40": "Constant_2", "Result_28": "Result_1", "Relu_3": "Relu_1"}
    shifted = [n.replace("25", "125").replace("31", "131").replace("40", "140").replace("28", "128") for n in names]
    assert set(ekit_ov.stable_name_map(shifted, types).values()) == set(ekit_ov.stable_name_map(names, types).values())


def test_fast_bias_correction_detect_is_fast_for_detectors_only(ekit_ov):
    assert ekit_ov.fast_bias_correction("detect", "detect") is True
    assert ekit_ov.fast_bias_correction("detect", "classify") is False
    assert ekit_ov.fast_bias_correction("detect", None) is False
    assert ekit_ov.fast_bias_correction(True, "classify") is True
    assert ekit_ov.fast_bias_correction("false", "detect") is False
    with pytest.raises(SystemExit):
        ekit_ov.fast_bias_correction("sometimes", "detect")
