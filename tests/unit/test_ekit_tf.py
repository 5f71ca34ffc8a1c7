"""converters/ekit_tf.py without TensorFlow: the numpy parts (pixels <-> tensors, quantization,
output order, onnx2tf error parsing) and the rpi templates rendering to valid Python."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

CONVERTERS = Path(__file__).resolve().parents[2] / "converters"
TARGETS = Path(__file__).resolve().parents[2] / "targets"


def ekit_tf_convert_module():
    import ekit_tf_convert  # tests/conftest.py puts the helpers on sys.path

    return ekit_tf_convert


@pytest.fixture(scope="module")
def ek():
    sys.path.insert(0, str(CONVERTERS))
    try:
        import ekit
        import ekit_tf
        yield ekit, ekit_tf
    finally:
        sys.path.remove(str(CONVERTERS))


SPECS = [
    {"shape": [1, 3, 8, 6], "layout": "nchw", "color": "rgb", "scale": 255.0,
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    {"shape": [1, 8, 6, 3], "layout": "nhwc", "color": "bgr", "scale": 1.0, "mean": [103.9, 116.8, 123.7],
     "std": None},
    {"shape": [1, 8, 6, 1], "layout": "nhwc", "color": "rgb", "scale": 255.0, "mean": None, "std": None},
]


@pytest.mark.parametrize("spec", SPECS)
def test_pixels_from_x_inverts_preprocess(ek, spec):
    ekit, ekit_tf = ek
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, (4, 8, 6, 3), dtype=np.uint8)
    if ekit.input_hw(spec)[2] == 1:
        pix = np.repeat(pix[..., :1], 3, axis=-1)  # grey images: R = G = B
    x = ekit.preprocess(pix, spec)
    back = ekit_tf.pixels_from_x(x, spec)
    grey = ekit.input_hw(spec)[2] == 1
    assert back.shape == (4, 8, 6, 1 if grey else 3) and back.dtype == np.float32
    np.testing.assert_array_equal(back, (pix[..., :1] if grey else pix).astype(np.float32))
    if grey:
        np.testing.assert_array_equal(ekit_tf.grey_pixels(pix), pix[..., :1])
    # and the NHWC tensor a TFLite float artifact takes
    nhwc = ekit_tf.model_input_nhwc(x, spec)
    assert nhwc.shape[1:3] == (8, 6)


def test_quantize_dequantize_roundtrip(ek):
    _, ekit_tf = ek
    detail = {"dtype": np.uint8, "quantization_parameters": {"scales": np.array([0.5]),
                                                             "zero_points": np.array([10])}}
    q = ekit_tf.quantize(np.array([-10.0, 0.0, 1.24, 200.0]), detail)
    assert q.dtype == np.uint8 and q.tolist() == [0, 10, 12, 255]
    np.testing.assert_allclose(ekit_tf.dequantize(q, detail), [-5.0, 0.0, 1.0, 122.5])
    pix = {"dtype": np.int8, "quantization_parameters": {"scales": np.array([1.0]), "zero_points": np.array([-128])}}
    assert ekit_tf.quantize(np.array([0.0, 255.0]), pix).tolist() == [-128, 127]


def test_output_order_and_layout(ek):
    _, ekit_tf = ek
    assert ekit_tf.output_keys(["output_10", "output_2", "output_0", "boxes"]) == \
        ["output_0", "output_2", "output_10", "boxes"]
    ref = np.zeros((2, 5, 4, 3))
    out, note = ekit_tf.match_layout(ref, np.zeros((2, 4, 3, 5)))
    assert out.shape == ref.shape and "NHWC" in note
    same, note = ekit_tf.match_layout(np.zeros((2, 10)), np.zeros((2, 10)))
    assert note is None


def test_onnx2tf_failure_names_the_op(ek):
    _, ekit_tf = ek
    log = ("INFO: ...\nERROR: The trace log is below.\n...\nERROR: input_onnx_file_path: model.onnx\n"
           "ERROR: onnx_op_name: /features/Foo_3\nERROR: onnx_op_type: GridSample\nValueError: x")
    assert ekit_tf_convert_module().onnx2tf_failure(log) == (["GridSample"], ["/features/Foo_3"])
    assert ekit_tf_convert_module().onnx2tf_failure("nothing useful") == ([], [])


def test_rpi_target_and_sources_load():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from edgekiln.targets import load_target, source_kinds

    t = load_target(TARGETS / "rpi.toml")
    assert t.runtime == "litert" and t.image == "tflite" and t.platform == "linux/arm64"
    assert t.precisions == ("fp32", "fp16", "dynamic", "int8", "int8x16")
    assert set(t.calibration) == {"int8", "int8x16"} and t.artifacts == ("model.tflite",)
    assert t.via["keras"]["convert"] == "tflite/convert_from_tf.py.jinja"
    assert t.via["saved_model"]["source"] == "tflite/source_tf.py.jinja"
    kinds = source_kinds(TARGETS)
    assert kinds["keras"].suffixes == (".keras", ".h5", ".hdf5") and kinds["keras"].layout == "nhwc" and kinds["saved_model"].image == "tflite"
    for p in t.precisions:
        assert t.thresholds_for(p), p


@pytest.mark.parametrize("template", ["tflite/convert.py.jinja", "tflite/validate.py.jinja",
                                      "tflite/convert_from_tf.py.jinja", "tflite/source_tf.py.jinja",
                                      "tflite/source_tf_onnx.py.jinja"])
def test_templates_render_to_python(template):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from edgekiln.render import render_text

    evil = 'a"; import os; os.system("x") #'
    ctx = {"params": {}, "step": evil, "kind": "convert", "target": "rpi", "precision": "int8"}
    text = render_text(template, ctx, CONVERTERS)
    compile(text, template, "exec")
    assert json.dumps(evil) in text  # only ever as a JSON string literal
    if template.startswith("source_tf"):
        assert ("WRITE_ONNX = True" in text) == (template == "tflite/source_tf_onnx.py.jinja")


def test_ops_without_a_tflite_builtin_get_onnx2tf_rtpo(ek, tmp_path):
    """A GELU export's Erf: onnx2tf -rtpo erf is added (and said), unless the user chose -rtpo."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    _, ekit_tf = ek
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Erf", ["x"], ["e"]), helper.make_node("Relu", ["e"], ["y"])],
                              "gelu_part", [x], [y])
    path = tmp_path / "erf.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    args, note = ekit_tf_convert_module().pseudo_op_args(path)
    assert args == ["-rtpo", "erf"] and "Erf have no TFLite builtin" in note
    assert ekit_tf_convert_module().pseudo_op_args(path, ["-rtpo", "gelu"]) == ([], None)
