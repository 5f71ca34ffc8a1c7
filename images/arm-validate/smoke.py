"""Smoke test of images/arm-validate, run INSIDE the built image (any user, no network).

``--lock FILE``: only check that every pin of the lock is installed at its version (fast under
emulation; the image build runs this). Without it: import both runtimes, run a two-node model in
ONNX Runtime and print one JSON line of versions and the machine. Exit code 0: usable.
"""

import json
import platform
import re
import sys
from importlib import metadata


def check_lock(path: str) -> int:
    wrong = []
    for line in open(path):
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if not m:
            continue
        try:
            have = metadata.version(m.group(1))
        except metadata.PackageNotFoundError:
            have = None
        if have != m.group(2):
            wrong.append(f"{m.group(1)}=={m.group(2)} (installed: {have})")
    if wrong:
        print("the venv does not match the lock: " + ", ".join(wrong), file=sys.stderr)
        return 1
    print(json.dumps({"smoke": "arm-validate", "lock": "ok", "machine": platform.machine()}))
    return 0


def main() -> int:
    if sys.argv[1:2] == ["--lock"]:
        return check_lock(sys.argv[2])
    import numpy as np
    import onnx
    import onnxruntime as ort
    import PIL
    from ai_edge_litert.interpreter import Interpreter  # noqa: F401  (imports: the runtime loads)
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "smoke", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.array([[-1.0, 0.5, 2.0]], dtype=np.float32)})[0]
    assert np.allclose(out, [[0.0, 0.5, 2.0]]), out
    print(json.dumps({"smoke": "arm-validate", "ok": True, "machine": platform.machine(),
                      "python": sys.version.split()[0], "numpy": np.__version__,
                      "onnxruntime": ort.__version__, "ai-edge-litert": metadata.version("ai-edge-litert"),
                      "pillow": PIL.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
