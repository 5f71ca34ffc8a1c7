"""Smoke test of images/rknn, run INSIDE the built image (as any user, no network).

Converts a tiny conv net (ONNX, written here) to .rknn for rk3588 in fp16 and runs it in the
toolkit's x86 simulator against ONNX Runtime; prints one JSON line of versions.
"""

import json
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def main() -> int:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "smoke",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    from rknn.api import RKNN

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        onnx.save(model, path)
        rknn = RKNN(verbose=False)
        assert rknn.config(target_platform="rk3588") == 0
        assert rknn.load_onnx(model=path) == 0
        assert rknn.build(do_quantization=False) == 0
        assert rknn.init_runtime() == 0
        x = rng.random((1, 8, 8, 3), dtype=np.float32)
        y = rknn.inference(inputs=[x], data_format="nhwc")[0]
        rknn.release()
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x.transpose(0, 3, 1, 2)})[0]
    assert np.allclose(y, ref, atol=2e-2), float(np.abs(y - ref).max())
    from importlib.metadata import version

    print(json.dumps({"smoke": "rknn", "ok": True, "python": sys.version.split()[0],
                      "rknn-toolkit2": version("rknn-toolkit2"), "numpy": np.__version__,
                      "onnx": onnx.__version__, "onnxruntime": ort.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
