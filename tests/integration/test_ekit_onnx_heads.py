"""ekit_onnx's graph helpers on the real models the int8 recipes are measured on (issue 19):
``head_convs`` finds each detection-head branch's last learned layer by structure (YOLOv8n's six
``cv2/cv3.*.2`` 1x1 convs; the DFL Conv is decode, part of the tail), a classifier's final Gemm,
PP-OCR det's last ConvTranspose; ``int8_mac_fraction`` reads the int8 share of the MACs off a
source model and a float list, or off a QDQ model."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.unit.test_ekit_task import CONVERTERS

sys.path.insert(0, str(CONVERTERS))
sys.path.insert(0, str(CONVERTERS / "onnx"))

onnx = pytest.importorskip("onnx")
import ekit_onnx  # noqa: E402


def test_yolov8n_head_convs_are_the_six_branch_ends(yolo):
    model = onnx.load(str(yolo[0]))
    convs = ekit_onnx.head_convs(model)
    names = sorted(n.name for n in convs)
    assert names == sorted(f"/model.22/cv{k}.{i}/cv{k}.{i}.2/Conv" for k in (2, 3) for i in range(3))
    tail = ekit_onnx.head(model)
    dfl = [n for n in tail if n.op_type == "Conv"]
    assert [n.name for n in dfl] == ["/model.22/dfl/conv/Conv"] and ekit_onnx.is_dfl(dfl[0], model)
    assert {"Softmax", "Sigmoid", "Concat"} <= {n.op_type for n in tail}
    assert not any(ekit_onnx.is_dfl(n, model) for n in convs)
    # they are ~1 % of the MACs: keeping them float leaves > 98 % int8
    frac = ekit_onnx.int8_mac_fraction(model, names, (1, 3, 320, 320))
    assert 0.97 < frac < 0.999
    macs = ekit_onnx.macs(model, (1, 3, 320, 320))
    assert 0.9e9 < sum(macs.values()) < 1.2e9  # YOLOv8n at 320: ~1.0 GMAC (8.7 GFLOPs at 640)


def test_classifier_head_conv_is_its_final_gemm(mobilenet_onnx):
    model = onnx.load(str(mobilenet_onnx))
    assert ekit_onnx.head(model) == []
    assert [n.op_type for n in ekit_onnx.head_convs(model)] == ["Gemm"]
    macs = ekit_onnx.macs(model)
    assert 0.28e9 < sum(macs.values()) < 0.33e9  # MobileNetV2: 300 M MACs
    assert ekit_onnx.int8_mac_fraction(model, []) == 1.0
    gemm = ekit_onnx.head_conv_names(model)
    assert ekit_onnx.int8_mac_fraction(model, gemm) == pytest.approx(1 - 1280 * 1000 / sum(macs.values()))


def test_text_detector_head_conv_is_its_last_conv_transpose():
    from edgekiln.demo import text_detector_onnx

    model = onnx.load(str(text_detector_onnx()))
    tail = {n.op_type for n in ekit_onnx.head(model)}
    assert {"Add", "Sigmoid"} <= tail and not tail & set(ekit_onnx.COMPUTE_OPS)  # the bias Add, sigmoid
    assert [n.op_type for n in ekit_onnx.head_convs(model)] == ["ConvTranspose"]


def test_int8_mac_fraction_reads_a_qdq_model():
    """A two-conv QDQ graph with only the first conv fed by DequantizeLinear on both inputs: half
    the MACs (equal convs) run int8; the float one is named."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    wq = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.int8), "wq")
    sc = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(0, np.uint8), "z")
    wz = numpy_helper.from_array(np.array(0, np.int8), "wz")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "s", "wz"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["a"], name="int8conv"),
             helper.make_node("Conv", ["a", "w"], ["y"], name="floatconv")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w, wq, sc, zp, wz])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    assert ekit_onnx.int8_compute_nodes(m) == {"int8conv"}
    assert ekit_onnx.float_compute_nodes(m) == ["floatconv"]
    assert ekit_onnx.int8_mac_fraction(m) == pytest.approx(0.5)
