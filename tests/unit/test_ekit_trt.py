"""converters/ekit_trt.py (operator and Q/DQ lints, shape ranges) and converters/trt/preflight.py,
on small ONNX graphs built here and a fake /etc/nv_tegra_release (no GPU, no TensorRT needed)."""

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekiln.resources import data_dir

sys.path.insert(0, str(data_dir("converters")))
sys.path.insert(0, str(data_dir("converters") / "trt"))
import ekit_trt  # noqa: E402
import preflight  # noqa: E402


def graph(nodes, inits, shape=(1, 3, 8, 8), opset=17):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def qdq_conv(zp_dtype=np.int8, zp_value=0, axis=0, op="Conv", w_scale_shape=(4,)):
    w = np.ones((4, 3, 3, 3) if op == "Conv" else (3, 4, 3, 3), np.int8)
    inits = {"s": np.array(0.1, np.float32), "z": np.array(zp_value, zp_dtype), "w": w,
             "ws": np.full(w_scale_shape, 0.01, np.float32), "wz": np.zeros(w_scale_shape, np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="dq_w", axis=axis),
             helper.make_node(op, ["xd", "wd"], ["y"], name="conv")]
    return graph(nodes, inits)


def test_qdq_lint_accepts_tensorrt_style_quantization():
    assert ekit_trt.lint_qdq(qdq_conv())["problems"] == []
    assert ekit_trt.lint_qdq(qdq_conv(op="ConvTranspose", axis=1))["problems"] == []


@pytest.mark.parametrize("kwargs,expected", [
    ({"zp_dtype": np.uint8, "zp_value": 128}, "zero point is uint8"),
    ({"zp_value": 3}, "is not 0"),
    ({"axis": 1}, "per-channel on axis 1, TensorRT takes axis 0"),
    ({"op": "ConvTranspose", "axis": 0}, "per-channel on axis 0, TensorRT takes axis 1"),
    ({"w_scale_shape": (4, 1)}, "block quantization"),
])
def test_qdq_lint_names_each_broken_rule(kwargs, expected):
    problems = ekit_trt.lint_qdq(qdq_conv(**kwargs))["problems"]
    assert any(expected in p for p in problems), problems


def test_op_lint_names_unparsable_operators_with_the_table():
    model = graph([helper.make_node("Unique", ["x"], ["y"], name="u"),
                   helper.make_node("Relu", ["x"], ["r"], name="r")], {})
    lint = ekit_trt.lint_ops(model, "10.3.0")
    assert [p["op"] for p in lint["unsupported"]] == ["Unique"]
    assert "release/10.1-GA" in lint["table"] and "10.1 table" in lint["note"]
    assert ekit_trt.lint_ops(model, "8.6.2")["table_version"] == "8.6"
    # opset 18 is above what TensorRT 8.5 documents (17)
    assert "opset 18" in ekit_trt.lint_ops(graph([], {}, opset=18), "8.5.2")["opset_problem"]
    with pytest.raises(ValueError):
        ekit_trt.op_table("7.1")


def test_operator_tables_name_their_source():
    data = json.loads(ekit_trt.OPS_FILE.read_text())
    assert "onnx/onnx-tensorrt" in data["source"]
    for key, table in data["tables"].items():
        assert len(table["commit"]) == 40 and table["tag"].startswith("release/")
        assert {"Conv", "QuantizeLinear", "DequantizeLinear", "Resize"} <= set(table["supported"])


def test_shape_range():
    static = [{"name": "x", "shape": [1, 3, 224, 224]}]
    dynamic = [{"name": "x", "shape": ["batch", 3, 224, 224]}]
    assert ekit_trt.shape_range(static, "") is None
    with pytest.raises(ValueError, match="dynamic dimensions"):
        ekit_trt.shape_range(dynamic, "")
    r = ekit_trt.shape_range(dynamic, "1x3x224x224:4x3x224x224:8x3x224x224")
    assert r == {"input": "x", "min": [1, 3, 224, 224], "opt": [4, 3, 224, 224], "max": [8, 3, 224, 224]}
    assert ekit_trt.shape_range(dynamic, "x:1x3x224x224:1x3x224x224:2x3x224x224")["max"][0] == 2
    for bad in ("1x3x224x224:8x3x224x224", "1x3x224x224:8x3x224x224:4x3x224x224",
                "1x3x320x320:1x3x320x320:1x3x320x320", "y:1x3x224x224:1x3x224x224:1x3x224x224", "axb:c:d"):
        with pytest.raises(ValueError):
            ekit_trt.shape_range(dynamic, bad)


ORIN_61 = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n"
MADE_FOR_61 = {"kind": "jetson", "label": "JetPack 6.1", "tensorrt": "10.3.0", "l4t": ["36.4"], "sm": ["8.7"]}


def test_preflight_reads_l4t_like_jetson_containers(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text(ORIN_61)
    assert preflight.l4t_version({}, str(release)) == "36.4.0"
    assert preflight.l4t_version({"EDGEKILN_NV_TEGRA_RELEASE": str(release)}) == "36.4.0"
    assert preflight.l4t_version({"L4T_VERSION": "r35.4.1"}, str(release)) == "35.4.1"  # the env var wins
    assert preflight.l4t_version({}, str(tmp_path / "missing")) is None
    assert preflight.parse_nv_tegra_release("garbage") is None


def test_preflight_accepts_the_device_it_was_made_for():
    assert preflight.check(MADE_FOR_61, {"l4t": "36.4.3", "tensorrt": "10.3.0.30", "sm": "8.7"}) == []


@pytest.mark.parametrize("found,expected", [
    ({"l4t": "35.4.1", "tensorrt": "10.3.0", "sm": "8.7"}, "runs L4T r35.4.1"),
    ({"l4t": "36.4.0", "tensorrt": "8.6.2", "sm": "8.7"}, "has TensorRT 8.6.2"),
    ({"l4t": "36.4.0", "tensorrt": None, "sm": None}, "no TensorRT on this device"),
    ({"l4t": None, "tensorrt": "10.3.0", "sm": "8.7"}, "no L4T release found"),
    ({"l4t": "36.4.0", "tensorrt": "10.3.0", "sm": "7.2"}, "compute capability 7.2"),
])
def test_preflight_refuses_the_wrong_device(found, expected):
    problems = preflight.check(MADE_FOR_61, found)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("l4t,ok", [("36.4.0", True), ("36.4.4", True), ("36.5.0", True), ("36.3.0", False),
                                    ("35.6.0", False), ("38.2.0", False)])
def test_preflight_takes_every_r36_4_or_later_host_for_the_jetpack_6_1_rows(l4t, ok):
    """An r36.4 container runs on every r36.4+ host (jetson-containers' l4t_version_compatible)."""
    made_for = dict(MADE_FOR_61, l4t=["36.4+"])
    problems = preflight.check(made_for, {"l4t": l4t, "tensorrt": "10.3.0", "sm": "8.7"})
    assert (problems == []) == ok, problems
    if not ok:
        assert "(L4T r36.4+)" in problems[0]


def test_preflight_needs_ampere_for_a_hardware_compatible_engine():
    from edgekiln.tensorrt import made_for, stack_for

    made = made_for(stack_for("x86"), hardware_compatible=True)
    assert "7.5" in made["sm"] and made["min_sm"] == "8.0"
    found = {"tensorrt": "10.7.0", "sm": "7.5"}
    assert any("below 8.0" in p for p in preflight.check(made, found))
    assert preflight.check(made, dict(found, sm="8.6")) == []
    assert preflight.check(made_for(stack_for("x86")), found) == []  # not hardware_compatible: Turing is fine


def test_preflight_does_not_trust_a_compute_capability_it_cannot_read(tmp_path, monkeypatch):
    """nvidia-smi printing [N/A] is 'unknown' (None), not a capability that mismatches."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '[N/A]'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setitem(sys.modules, "cuda", None)  # no cuda-python: the nvidia-smi fallback
    assert preflight.compute_capability() is None
    fake.write_text("#!/bin/sh\necho '8.7'\n")
    assert preflight.compute_capability() == "8.7"
    assert [preflight._capability(t) for t in ("N/A", "", "12.0", "8.7 ")] == [None, None, "12.0", "8.7"]


def matmul_qdq(axis, op="MatMul", trans_b=0, zero_point=True, scale=0.01):
    w = np.ones((8, 4) if not trans_b else (4, 8), np.int8)
    n = w.shape[0] if trans_b else w.shape[1]
    inits = {"w": w, "ws": np.full((n,), scale, np.float32), "wz": np.zeros((n,), np.int8)}
    dq = helper.make_node("DequantizeLinear", ["w", "ws", "wz"] if zero_point else ["w", "ws"], ["wd"],
                          name="dq_w", axis=axis)
    attrs = {"transB": trans_b} if op == "Gemm" else {}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([dq, helper.make_node(op, ["x", "wd"], ["y"], name="mm", **attrs)], "g", [x], [y],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_qdq_lint_takes_matmul_and_gemm_weights_on_their_output_channel_axis():
    """ONNX Runtime and modelopt quantize a [K, N] MatMul/Gemm weight per channel on axis 1."""
    assert ekit_trt.lint_qdq(matmul_qdq(1))["problems"] == []
    assert ekit_trt.lint_qdq(matmul_qdq(1, op="Gemm"))["problems"] == []
    assert ekit_trt.lint_qdq(matmul_qdq(0, op="Gemm", trans_b=1))["problems"] == []
    assert "takes axis 1" in ekit_trt.lint_qdq(matmul_qdq(0))["problems"][0]


def test_qdq_lint_wants_a_zero_point_for_tensorrt_8_and_a_positive_scale():
    no_zp = matmul_qdq(1, zero_point=False)
    assert ekit_trt.lint_qdq(no_zp)["problems"] == []  # TensorRT 10 takes 2-input Q/DQ
    assert "no zero point" in ekit_trt.lint_qdq(no_zp, require_zero_point=True)["problems"][0]
    assert "not positive" in ekit_trt.lint_qdq(matmul_qdq(1, scale=0.0))["problems"][0]
    assert ekit_trt.lint_qdq(qdq_conv(), require_zero_point=True)["problems"] == []


def reduce_model(opset, op="ReduceMean"):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=1)
    model = helper.make_model(helper.make_graph([node], "r", [x], [y], [axes]),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def test_an_opset_18_model_is_lowered_to_17_with_the_same_answers():
    """TensorRT 8.5/8.6 parse opset <= 17; opset 18 moved ReduceMean's axes into an input."""
    from onnx.reference import ReferenceEvaluator

    model = reduce_model(18)
    low, note = ekit_trt.lower_opset(model, 17)
    assert "opset 18 lowered to 17" in note and low.opset_import[0].version == 17
    assert [a.name for a in low.graph.node[0].attribute if a.name == "axes"] == ["axes"]
    x = np.random.default_rng(0).normal(size=(1, 3, 4, 4)).astype(np.float32)

    def run(m):
        return ReferenceEvaluator(m).run(None, {"x": x})[0]

    np.testing.assert_allclose(run(low), run(model), rtol=1e-6)
    assert ekit_trt.lower_opset(reduce_model(17, "ReduceSum"), 17)[1] is None  # nothing to do
    assert ekit_trt.lint_ops(model, "8.5.2")["opset_max"] == 17
    split = helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2)  # opset 18's num_outputs
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "ab"]
    model = helper.make_model(helper.make_graph([split], "s", [x], outs), opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(ValueError, match="cannot lower it .No Adapter From Version .18 for Split"):
        ekit_trt.lower_opset(model, 17)


def test_feed_problem_names_a_profile_that_cannot_take_the_reference_images():
    shapes = {"input": "x", "min": [2, 3, 224, 224], "opt": [4, 3, 224, 224], "max": [8, 3, 224, 224]}
    assert ekit_trt.feed_problem(shapes, (8, 3, 224, 224)) is None  # fed at batch 2
    assert "outside the shape range" in ekit_trt.feed_problem(shapes, (8, 3, 320, 320))
    assert ekit_trt.feed_problem(None, (8, 3, 320, 320)) is None
