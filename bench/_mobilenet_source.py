"""Make a contract-shaped ``work/source/`` from the real ImageNet MobileNetV2 (torchvision weights)
without the host: model.onnx (opset 17, dynamic batch), reference.npz (PyTorch outputs on the
validation photos), calib.npy, io.json. Used by bench/intel_vs_bare.py and the intel template
tests; an edgekiln build's source step writes the same files.

Run it with a Python that has torch + onnx (the torch image's environment):

    python bench/_mobilenet_source.py OUT_SOURCE_DIR --weights mobilenet_v2-b0353104.pth \
        --calib photos/ --val photos-mirrored/ [--static]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"name": "input", "shape": [1, 3, 224, 224], "layout": "nchw", "color": "rgb",
        "scale": 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "resize": "crop", "dynamic_batch": True}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--calib", type=Path, required=True)
    ap.add_argument("--val", type=Path, required=True)
    ap.add_argument("--static", action="store_true", help="fixed batch 1 instead of dynamic")
    args = ap.parse_args(argv)
    from _common import flat_helpers  # noqa: E402

    sys.path[:0] = [flat_helpers()]
    import numpy as np
    import onnx
    import torch

    import ekit
    from zoo.mobilenet_v2 import mobilenet_v2

    spec = dict(SPEC, dynamic_batch=not args.static)
    model = mobilenet_v2()
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    val = ekit.load_set(args.val, spec, purpose="validation")
    calib = ekit.load_set(args.calib, spec, purpose="calibration")
    with torch.no_grad():
        y = model(torch.from_numpy(val["x"])).numpy()
    ekit.write_reference(args.out / "reference.npz", val, [y])
    np.save(args.out / "calib.npy", calib["x"])
    extra = {} if args.static else {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), str(args.out / "model.onnx"),
                      input_names=["input"], output_names=["logits"], opset_version=17,
                      dynamo=False, **extra)
    proto = onnx.load(str(args.out / "model.onnx"))
    onnx.checker.check_model(proto)

    def dims(t):
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in t.type.tensor_type.shape.dim]

    ekit.write_json(args.out / "io.json", {
        "inputs": [{"name": i.name, "shape": dims(i), "dtype": "float32"} for i in proto.graph.input],
        "outputs": [{"name": o.name, "shape": dims(o), "dtype": "float32"} for o in proto.graph.output]})
    acc = float((y.argmax(1) == val["labels"]).mean())
    ekit.write_json(args.out / "spec.json", spec)
    print(f"source: {len(val['x'])} validation / {len(calib['x'])} calibration images, "
          f"PyTorch top-1 {acc:.3f} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
