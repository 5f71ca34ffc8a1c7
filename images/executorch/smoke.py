"""Smoke test of images/executorch, run INSIDE the built image (as any user, no network).

Lowers a tiny conv net to an XNNPACK .pte and runs it in the ExecuTorch runtime against PyTorch;
prints one JSON line of versions.
"""

import json
import os
import sys
import tempfile
from importlib.metadata import version

import numpy as np
import torch


def main() -> int:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.rand(1, 3, 16, 16)
    program = to_edge_transform_and_lower(torch.export.export(net, (x,)),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.pte")
        with open(path, "wb") as f:
            f.write(program.buffer)
        y = Runtime.get().load_program(path).load_method("forward").execute([x])[0]
    with torch.no_grad():
        ref = net(x)
    assert np.allclose(y.numpy(), ref.numpy(), atol=1e-5)
    print(json.dumps({"smoke": "executorch", "ok": True, "python": sys.version.split()[0],
                      "executorch": version("executorch"), "torch": torch.__version__,
                      "numpy": np.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
