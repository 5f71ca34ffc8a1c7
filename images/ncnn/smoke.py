"""Smoke test of images/ncnn, run INSIDE the built image (as any user, no network).

Traces a two-op torch module, converts it with the pnnx binary, runs the ncnn files with ncnn's
Python bindings, checks the answer and prints one JSON line of versions.
"""

import importlib.util
import json
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import ncnn
import numpy as np
import torch


class DoubleRelu(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x * 2.0)


def main() -> int:
    binary = Path(importlib.util.find_spec("pnnx").submodule_search_locations[0]) / "pnnx"
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        torch.jit.trace(DoubleRelu(), torch.zeros(1, 1, 2, 2)).save(str(t / "m.pt"))
        names = {k: str(t / f"m.{k}") for k in ("pnnxparam", "pnnxbin", "pnnxpy", "pnnxonnx",
                                                 "ncnnparam", "ncnnbin", "ncnnpy")}
        proc = subprocess.run([str(binary), str(t / "m.pt"), "inputshape=[1,1,2,2]"]
                              + [f"{k}={v}" for k, v in names.items()],
                              capture_output=True, text=True, timeout=120, cwd=tmp)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        net = ncnn.Net()
        assert net.load_param(names["ncnnparam"]) == 0 and net.load_model(names["ncnnbin"]) == 0
        x = np.array([[[-1.0, 0.5], [2.0, 3.0]]], dtype=np.float32)  # CHW (ncnn has no batch)
        ex = net.create_extractor()
        ex.input("in0", ncnn.Mat(x).clone())  # an owned copy: in-place first layers write into it
        ret, out = ex.extract("out0")
        got = np.array(out).reshape(-1)
    assert ret == 0 and np.allclose(got, [0.0, 1.0, 4.0, 6.0]), got
    print(json.dumps({"smoke": "ncnn", "ok": True, "python": sys.version.split()[0],
                      "ncnn": ncnn.__version__, "pnnx": version("pnnx"), "torch": torch.__version__,
                      "numpy": np.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
