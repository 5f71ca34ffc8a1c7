"""Run in a litert-torch 0.10 environment, in a kept edgekiln rpi job folder (cwd): the second
route for PyTorch sources into rpi, litert_torch.convert(module, (sample,)) -> .tflite, then BOTH
the job's onnx2tf artifact (work/rpi/fp32/model.tflite) and this one in LiteRT on the job's
reference images, scored with the validate step's metrics. One JSON line on stdout.

    python _inside_litert_torch.py mobilenet WEIGHTS.pth    (the demo module: zoo arch + weights)
    python _inside_litert_torch.py onnx                     (work/source/model.onnx via onnx2torch)
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import ekit
from ekit import task as ekit_task

src = Path("work/source")
ref = ekit.read_reference(src / "reference.npz")
io = json.loads((src / "io.json").read_text())
example = torch.from_numpy(ref["x"][0:1].copy())
if sys.argv[1] == "mobilenet":
    from zoo.mobilenet_v2 import mobilenet_v2

    module = mobilenet_v2()
    module.load_state_dict(torch.load(sys.argv[2], map_location="cpu"))
    module.eval()
else:
    import ekit_executorch

    module = ekit_executorch.from_onnx(src / "model.onnx", example)
import litert_torch  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

t = time.perf_counter()
try:
    litert_torch.convert(module, (example,)).export("work/litert_torch.tflite")
    seconds, error = round(time.perf_counter() - t, 1), None
except Exception as e:  # reported, not hidden: the route's coverage is what is measured
    seconds, error = round(time.perf_counter() - t, 1), f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def score(path: str) -> dict:
    it = Interpreter(model_path=path, num_threads=2)
    it.allocate_tensors()
    inp, outs = it.get_input_details()[0], it.get_output_details()
    x = ref["x"].astype(np.float32)
    if list(inp["shape"]) != list(x.shape[1:]) and inp["shape"][-1] == x.shape[1]:
        x = x.transpose(0, 2, 3, 1)  # onnx2tf's NHWC input
    ys = []
    for i in range(x.shape[0]):
        it.set_tensor(inp["index"], x[i:i + 1])
        it.invoke()
        ys.append([it.get_tensor(o["index"]).copy() for o in outs])
    ys = [np.concatenate([y[k] for y in ys]) for k in range(len(outs))]
    if len(ys) == len(ref["y"]) and ys[0].shape != ref["y"][0].shape and ys[0].ndim == 3:
        ys = [y.transpose(0, 2, 1) if y.shape[1:] == ref["y"][k].shape[:0:-1] else y for k, y in enumerate(ys)]
    m = ekit.compare(ref["y"], ys, ref["labels"])
    m.update(ekit_task.evaluate(ref, ys, [o["name"] for o in io["outputs"]]))
    x1 = x[0:1]

    def once():
        it.set_tensor(inp["index"], x1)
        it.invoke()

    lat = ekit.latency(once, runs=30, warmup=3)
    ops = {}
    for d in it._get_ops_details():
        ops[d["op_name"]] = ops.get(d["op_name"], 0) + 1
    keep = ("cosine", "top1_agreement", "accuracy", "det_f1", "det_recall")
    return {**{k: m.get(k) for k in keep}, "latency_ms": lat["median"], "latency_min_ms": lat["min"],
            "size_bytes": Path(path).stat().st_size, "ops": ops, "input": [int(d) for d in inp["shape"]]}


result = {"onnx2tf": score("work/rpi/fp32/model.tflite")}
result["litert_torch"] = {"error": error, "convert_seconds": seconds} if error else \
    {**score("work/litert_torch.tflite"), "convert_seconds": seconds}
print(json.dumps(result, default=float))
