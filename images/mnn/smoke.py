"""Smoke test of images/mnn, run INSIDE the built image (as any user, no network).

Builds a two-op graph with MNN.expr, saves it as .mnn, loads it back with MNN's module API on
CPU, checks the answer and prints one JSON line of versions. Never imports MNN.tools (its
wrappers phone home and pip-install at import).
"""

import json
import sys
import tempfile
from pathlib import Path

import MNN
import MNN.expr as F
import numpy as np


def main() -> int:
    x = F.placeholder([1, 3], F.NCHW)
    x.name = "x"
    y = F.relu(x * F.const(np.array([2.0], dtype=np.float32), [1]))
    y.name = "y"
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "m.mnn")
        F.save([y], path)
        net = MNN.nn.load_module_from_file(path, ["x"], ["y"])
        out = net.forward([F.const(np.array([[-1.0, 0.5, 2.0]], dtype=np.float32), [1, 3], F.NCHW)])
        got = np.array(out[0].read())
    assert np.allclose(got, [[0.0, 1.0, 4.0]]), got
    print(json.dumps({"smoke": "mnn", "ok": True, "python": sys.version.split()[0],
                      "mnn": MNN.version(), "numpy": np.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
