"""Smoke test of images/onnx, run INSIDE the built image (as any user, no network).

Imports every runtime the onnx steps use, runs a two-node model through ONNX Runtime and prints
one JSON line of versions. Exit code 0 means the image is usable.
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import PIL
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
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.array([[-1.0, 0.5, 2.0]], dtype=np.float32)})[0]
    assert np.allclose(out, [[0.0, 1.0, 4.0]]), out
    print(json.dumps({"smoke": "onnx", "ok": True, "python": sys.version.split()[0],
                      "numpy": np.__version__, "onnx": onnx.__version__,
                      "onnxruntime": ort.__version__, "pillow": PIL.__version__,
                      "providers": ort.get_available_providers()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
