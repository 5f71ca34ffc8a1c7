"""Run INSIDE the rknn environment, in a kept edgekiln job folder (cwd): rknn-toolkit2 run bare
on the job's work/source/model.onnx, then its simulator on the job's reference images, scored with
the validate step's own metrics (ekit.compare + ekit_task.evaluate). One JSON line on stdout.

    python _inside_rknn_bare.py JOB_SOURCE_SPEC_JSON MODE [ALGORITHM]
MODE: bare-int8  the toolkit's documented defaults: dataset.txt listing the calibration photo
                 FILES (the toolkit reads and resizes them itself), mean/std in config, normal
      tuned-int8 edgekiln's calibration (calib.npy folded back to pixels) with ALGORITHM
                 (normal | mmse | kl_divergence, "+auto_hybrid": build(auto_hybrid=True))
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

import ekit
import ekit_rknn
from ekit import task as ekit_task
from rknn.api import RKNN

spec = json.loads(sys.argv[1])
mode = sys.argv[2]
algorithm = sys.argv[3] if len(sys.argv) > 3 else "normal"
algorithm, _, hybrid = algorithm.partition("+")  # "normal+auto_hybrid": build(auto_hybrid=True)
src = Path("work/source")
ref = ekit.read_reference(src / "reference.npz")
io = json.loads((src / "io.json").read_text())
mean, std, _ = ekit_rknn.folding(spec)
tmp = Path("work/bench-rknn") / f"{mode}-{algorithm}-{hybrid or 'plain'}"
tmp.mkdir(parents=True, exist_ok=True)
if mode == "bare-int8":
    photos = ekit.list_images(ekit.paths()["calib"])
    listing = tmp / "dataset.txt"
    listing.write_text("\n".join(str(p) for p in photos) + "\n")
else:
    listing = ekit_rknn.dataset(np.load(src / "calib.npy"), spec, tmp, 200)
r = RKNN(verbose=False)
t0 = time.perf_counter()
r.config(mean_values=mean, std_values=std, target_platform="rk3588", quantized_algorithm=algorithm)
r.load_onnx(model=str(src / "model.onnx"), inputs=[io["inputs"][0]["name"]],
            input_size_list=[[int(d) for d in spec["shape"]]])
assert r.build(do_quantization=True, dataset=str(listing), auto_hybrid=hybrid == "auto_hybrid") == 0
seconds = time.perf_counter() - t0
r.export_rknn(str(tmp / "model.rknn"))
r.init_runtime()
pixels = ekit_rknn.feed(ref["x"], spec)
outs = None
for i in range(pixels.shape[0]):
    ys = r.inference(inputs=[pixels[i:i + 1]], data_format="nhwc")
    outs = [[] for _ in ys] if outs is None else outs
    for k, y in enumerate(ys):
        outs[k].append(np.asarray(y, np.float32))
outs = [np.concatenate(o) for o in outs]
m = ekit.compare(ref["y"], outs, ref["labels"])
m.update(ekit_task.evaluate(ref, outs, [o["name"] for o in io["outputs"]]))
keep = ("cosine", "top1_agreement", "accuracy", "det_f1", "det_recall", "det_boxes", "det_boxes_source")
print(json.dumps({"mode": mode, "algorithm": algorithm + ("+" + hybrid if hybrid else ""), "seconds": round(seconds, 2),
                  "size_bytes": (tmp / "model.rknn").stat().st_size,
                  **{k: m.get(k) for k in keep}}, default=float))
