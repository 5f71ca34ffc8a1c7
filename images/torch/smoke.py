"""Smoke test of images/torch, run INSIDE the built image (as any user, no network).

Checks that the CPU build of torch imports (no CUDA wheel slipped in), exports a tiny conv net
with the TorchScript-based exporter (dynamo=False, opset 17) and that ONNX Runtime gives the same
numbers; prints one JSON line of versions.
"""

import io
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import PIL
import torch


def main() -> int:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref = net(x).numpy()
    buf = io.BytesIO()
    torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["out"])
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": x.numpy()})[0]
    assert np.allclose(out, ref, atol=1e-5), float(np.abs(out - ref).max())
    print(json.dumps({"smoke": "torch", "ok": True, "python": sys.version.split()[0],
                      "torch": torch.__version__, "cuda": torch.version.cuda,
                      "numpy": np.__version__, "onnx": onnx.__version__,
                      "onnxruntime": ort.__version__, "pillow": PIL.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
