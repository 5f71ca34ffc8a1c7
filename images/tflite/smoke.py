"""Smoke test of images/tflite, run INSIDE the built image (as any user, no network).

Imports TensorFlow, onnx2tf and LiteRT, converts a tiny tf.function to .tflite and runs it in
the LiteRT interpreter; prints one JSON line of versions.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ai_edge_litert  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx2tf  # noqa: E402,F401
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402


def main() -> int:
    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def double_relu(x):
        return tf.nn.relu(x * 2.0)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [double_relu.get_concrete_function()], double_relu)
    model = converter.convert()
    interp = Interpreter(model_content=model)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.set_tensor(inp["index"], np.array([[-1.0, 0.0, 0.5, 2.0]], dtype=np.float32))
    interp.invoke()
    y = interp.get_tensor(out["index"])
    assert np.allclose(y, [[0.0, 0.0, 1.0, 4.0]]), y
    from importlib.metadata import version
    print(json.dumps({"smoke": "tflite", "ok": True, "python": sys.version.split()[0],
                      "tensorflow": tf.__version__, "onnx2tf": version("onnx2tf"),
                      "ai-edge-litert": version("ai-edge-litert"), "onnx": onnx.__version__,
                      "numpy": np.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
