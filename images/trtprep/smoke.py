"""Smoke test of images/trtprep, run INSIDE the built image (as any user, no network).

Imports modelopt's ONNX quantizer and AutoCast (they need torch, onnxscript, onnx-graphsurgeon,
lief: the lock must hold them), checks that torch is the CPU build and that no CUDA onnxruntime
slipped in, runs a two-node model through ONNX Runtime and prints one JSON line of versions.
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper


def main() -> int:
    import modelopt
    import modelopt.onnx.autocast  # noqa: F401
    import modelopt.onnx.quantization  # noqa: F401

    assert torch.version.cuda is None, f"a CUDA torch ({torch.version.cuda}) is in the image"
    assert ort.get_available_providers() == ["CPUExecutionProvider"] or \
        "CUDAExecutionProvider" not in ort.get_available_providers(), ort.get_available_providers()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "smoke", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": np.array([[-1.0, 0.5, 2.0]], dtype=np.float32)})[0]
    assert np.allclose(out, [[0.0, 0.5, 2.0]]), out
    print(json.dumps({"smoke": "trtprep", "ok": True, "python": sys.version.split()[0],
                      "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                      "torch": torch.__version__, "modelopt": modelopt.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
