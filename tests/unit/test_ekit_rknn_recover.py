"""converters/rknn/ekit_rknn_recover.py without the toolkit: the config is edited as text (step2
refuses re-printed scales), and a ranked tensor becomes its block (conv output + activation outputs)."""

from __future__ import annotations

import sys

import onnx
from onnx import TensorProto, helper

from tests.unit.test_ekit_task import CONVERTERS

sys.path.insert(0, str(CONVERTERS / "rknn"))
sys.path.insert(0, str(CONVERTERS / "onnx"))

import ekit_rknn_recover as RR  # noqa: E402

CFG = """custom_quantize_layers:
    /head/Conv_output_0: float16
quantize_parameters:
    /b/conv/Conv_output_0:
        qtype: asym
        scale:
        -   1.521577184340533
        zero_point:
        -   2
"""


def test_write_cfg_adds_float16_tensors_and_leaves_every_other_line(tmp_path):
    got = RR.write_cfg(CFG, ["/b/conv/Conv_output_0", "/b/act/Mul_output_0"], tmp_path / "a.cfg").read_text()
    lines = got.splitlines()
    assert lines[:4] == ["custom_quantize_layers:", "    /b/conv/Conv_output_0: float16",
                         "    /b/act/Mul_output_0: float16", "    /head/Conv_output_0: float16"]
    assert lines[4:] == CFG.splitlines()[2:]  # the scales byte for byte
    empty = RR.write_cfg(CFG.replace("custom_quantize_layers:\n    /head/Conv_output_0: float16\n",
                                     "custom_quantize_layers: {}\n"), ["/x"], tmp_path / "b.cfg").read_text()
    assert empty.startswith("custom_quantize_layers:\n    /x: float16\nquantize_parameters:\n")


def _silu_chain(path):
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], [0.1] * 12)
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [4, 4, 1, 1], [0.1] * 16)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
             helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig1"),
             helper.make_node("Mul", ["c1", "s1"], ["a1"], name="mul1"),
             helper.make_node("Conv", ["a1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["y"], name="relu2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [w, w2])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_blocks_group_a_conv_with_its_activation_outputs(tmp_path):
    model = _silu_chain(tmp_path / "m.onnx")
    params = {t: {} for t in ("c1", "s1", "a1", "c2", "y")}
    rows = [{"layer": "a1", "op": "Mul", "sensitivity": 0.5}, {"layer": "y", "op": "Relu", "sensitivity": 0.1},
            {"layer": "c1", "op": "Conv", "sensitivity": 0.2}]
    got = RR.blocks(model, rows, params)
    assert [b["layer"] for b in got] == ["c1", "c2"]
    assert got[0]["tensors"] == ["c1", "s1", "a1"] and got[0]["sensitivity"] == 0.5 and got[0]["node"] == "conv1"
    assert got[1]["tensors"] == ["c2", "y"] and got[1]["op"] == "Conv"
    # a tensor the config does not name is left out of the block (step2 would refuse it)
    assert RR.blocks(model, rows[:1], {"c1": {}, "a1": {}})[0]["tensors"] == ["c1", "a1"]
