"""Smoke test of images/openvino, run INSIDE the built image (as any user, no network).

Imports OpenVINO and NNCF, converts a two-node ONNX model with ov.convert_model, runs it on CPU
in f32 and prints one JSON line of versions.
"""

import json
import sys
import tempfile
from pathlib import Path

import nncf
import numpy as np
import onnx
import openvino as ov
from onnx import TensorProto, helper


def main() -> int:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
        "smoke", [x], [y], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        onnx.save(model, path)
        ov_model = ov.convert_model(str(path))
        ov.save_model(ov_model, str(Path(tmp) / "m.xml"), compress_to_fp16=False)
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(Path(tmp) / "m.xml")), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32"})
        out = compiled(np.array([[-1.0, 0.5, 2.0]], dtype=np.float32))[0]
    assert np.allclose(out, [[0.0, 1.0, 4.0]]), out
    print(json.dumps({"smoke": "openvino", "ok": True, "python": sys.version.split()[0],
                      "openvino": ov.get_version(), "nncf": nncf.__version__,
                      "onnx": onnx.__version__, "numpy": np.__version__,
                      "devices": core.available_devices}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
