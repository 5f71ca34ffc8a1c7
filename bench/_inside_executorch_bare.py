"""Run INSIDE the executorch environment, in a kept edgekiln job folder (cwd): ExecuTorch's own
documented snippet run bare on the demo MobileNetV2 (the zoo architecture + the weights file):
torch.export -> to_edge_transform_and_lower(XnnpackPartitioner()) -> .pte; int8: XNNPACKQuantizer
with get_symmetric_quantization_config() (its default: per-tensor weights), calibrated on the
job's calib.npy. Scored in the ExecuTorch runtime with the validate step's metrics. One JSON line.

    python _inside_executorch_bare.py WEIGHTS.pth fp32|int8
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import ekit
import ekit_executorch
from ekit import task as ekit_task
from zoo.mobilenet_v2 import mobilenet_v2

weights, precision = sys.argv[1], sys.argv[2]
src = Path("work/source")
ref = ekit.read_reference(src / "reference.npz")
io = json.loads((src / "io.json").read_text())
model = mobilenet_v2()
model.load_state_dict(torch.load(weights, map_location="cpu"))
model.eval()
example = torch.from_numpy(ref["x"][0:1].copy())
t0 = time.perf_counter()
if precision == "int8":
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    q = XNNPACKQuantizer()
    q.set_global(get_symmetric_quantization_config())
    g = prepare_pt2e(torch.export.export(model, (example,)).module(), q)
    calib = np.load(src / "calib.npy")
    with torch.no_grad():
        for i in range(calib.shape[0]):
            g(torch.from_numpy(calib[i:i + 1].copy()))
    model = convert_pt2e(g)
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: E402
from executorch.exir import to_edge_transform_and_lower  # noqa: E402

buf = to_edge_transform_and_lower(torch.export.export(model, (example,)),
                                  partitioner=[XnnpackPartitioner()]).to_executorch().buffer
seconds = time.perf_counter() - t0
path = Path("work/bench-bare.pte")
path.write_bytes(buf)
method = ekit_executorch.load(path)
outs = ekit_executorch.run(method, ref["x"].astype(np.float32), torch.float32)
m = ekit.compare(ref["y"], outs, ref["labels"])
m.update(ekit_task.evaluate(ref, outs, [o["name"] for o in io["outputs"]]))
x1 = [example]
lat = ekit.latency(lambda: method.execute(x1), runs=20, warmup=3)
keep = ("cosine", "top1_agreement", "accuracy")
print(json.dumps({"mode": f"bare-{precision}", "seconds": round(seconds, 2), "size_bytes": len(buf),
                  "latency_ms": lat["median"], **{k: m.get(k) for k in keep}}, default=float))
