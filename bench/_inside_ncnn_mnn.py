"""Worker of bench/ncnn_mnn_vs_bare.py, run INSIDE the ncnn or mnn environment with converters/ on
PYTHONPATH and a kept edgekiln job as the working directory (its work/source: model.onnx,
reference.npz, task.json).

    python _inside_ncnn_mnn.py ncnn|mnn SPEC.json OUT.json [--photos DIR] [--artifact LABEL=PATH ...]

1. Runs the runtime's own tool BARE on work/source/model.onnx, as its documentation shows:
   ncnn: ``pnnx model.onnx inputshape=[...]`` (its defaults: fp16=1, optlevel=2), run with
   ncnn's default Option; MNN: ``MNNConvert -f ONNX`` (fp32) and ``--fp16``, and MNN's
   quantizer with the documented image config on the raw calibration photos (MNN's own
   preprocessing: a stretch resize to the input size, mean/normal), run with MNN's default
   runtime precision.
2. Runs each edgekiln artifact given (--artifact) the same way as its validate step.
3. Compares every variant with the source model's outputs on the validation tensors
   (ekit.compare + ekit_task.evaluate) and times all of them interleaved (rounds of one run each),
   so a busy machine hits them alike.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import ekit
from ekit import task as ekit_task

ROUNDS = 15


def ncnn_variants(spec, artifacts, tmp: Path):
    import ncnn

    import ekit_ncnn

    runs, info = {}, {}
    shape = [1] + list(spec["shape"][1:])
    t0 = time.perf_counter()
    files, seconds, _, _ = ekit_ncnn.run_pnnx(Path("work/source/model.onnx").resolve(), shape, tmp / "bare", True)
    cmd = ["pnnx", "model.onnx", f"inputshape={ekit_ncnn.shape_arg(shape)}"]
    info["bare pnnx (defaults: fp16=1)"] = {"convert_s": seconds, "command": " ".join(cmd),
                                            "files": [files["ncnnparam"], files["ncnnbin"]]}
    net = ncnn.Net()
    net.opt.num_threads = 2
    net.load_param(str(files["ncnnparam"]))
    net.load_model(str(files["ncnnbin"]))
    layers = ekit_ncnn.param_layers(files["ncnnparam"].read_text())
    ins, outs = ekit_ncnn.blob_names(layers)
    runs["bare pnnx (defaults: fp16=1)"] = (lambda n=net, i=ins, o=outs: lambda x: ekit_ncnn.run(ncnn, n, i, o, x))()
    for label, folder in artifacts.items():
        folder = Path(folder)
        blobs = json.loads((folder / "blobs.json").read_text()) if (folder / "blobs.json").is_file() else None
        layers = ekit_ncnn.param_layers((folder / "model.ncnn.param").read_text())
        ins, outs = ekit_ncnn.blob_names(layers)
        net = ekit_ncnn.make_net(ncnn, folder / "model.ncnn.param", folder / "model.ncnn.bin", 2, "fp16" in label)
        runs[label] = (lambda n=net, i=ins, o=outs: lambda x: ekit_ncnn.run(ncnn, n, i, o, x))()
        info[label] = {"files": [folder / "model.ncnn.param", folder / "model.ncnn.bin"], "blobs": blobs}
    return runs, info, (lambda x: x)  # ncnn: one CHW sample (no batch dim)


def mnn_variants(spec, artifacts, tmp: Path, photos: str | None):
    import MNN
    import MNN.expr as F

    import ekit_mnn

    runs, info = {}, {}
    src = Path("work/source/model.onnx").resolve()
    names = json.loads(Path("work/source/io.json").read_text())

    def load(path, precision="normal"):
        rt = MNN.nn.create_runtime_manager(({"backend": "CPU", "numThread": 2, "precision": precision},))
        net = MNN.nn.load_module_from_file(str(path), [t["name"] for t in names["inputs"]],
                                           [t["name"] for t in names["outputs"]], runtime_manager=rt)

        def run(x):
            var = F.const(np.ascontiguousarray(x), list(x.shape), F.NCHW)
            return [np.array(F.convert(o, F.NCHW).read(), dtype=np.float32) for o in net.forward([var])]
        return run

    for label, fp16 in (("bare MNNConvert (defaults)", False), ("bare MNNConvert --fp16", True)):
        dest = tmp / f"{'fp16' if fp16 else 'fp32'}.mnn"
        rc, text, seconds = ekit_mnn.run_tool("convert", ekit_mnn.convert_args(src, dest, fp16), 900)
        info[label] = {"convert_s": seconds, "files": [dest], "rc": rc}
        if dest.is_file():
            runs[label] = load(dest)
    if photos:  # MNN's documented quantizer config on the raw photos: its own resize, no crop/letterbox
        config = ekit_mnn.quant_config(spec, photos, 10_000, "KL", "MAX_ABS")
        config.pop("used_image_num")
        (tmp / "bare.json").write_text(json.dumps(config))
        label = "bare MNN quantizer (raw photos, KL)"
        dest = tmp / "bare-int8.mnn"
        rc, text, seconds = ekit_mnn.run_tool("quant", [tmp / "fp32.mnn", dest, tmp / "bare.json"], 900)
        info[label] = {"convert_s": seconds, "files": [dest], "rc": rc, "config": config}
        if rc == 0 and dest.is_file():
            runs[label] = load(dest)
    for label, folder in artifacts.items():
        path = Path(folder) / "model.mnn"
        runs[label] = load(path, "low" if "fp16" in label else "high")
        info[label] = {"files": [path]}
    return runs, info, (lambda x: x[None])  # MNN: the NCHW tensor with a batch dim of 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("runtime", choices=["ncnn", "mnn"])
    ap.add_argument("spec", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--photos")
    ap.add_argument("--artifact", action="append", default=[])
    args = ap.parse_args()
    spec = json.loads(args.spec.read_text())
    artifacts = dict(a.split("=", 1) for a in args.artifact)
    ref = ekit.read_reference(Path("work/source/reference.npz"))
    out_names = [t["name"] for t in json.loads(Path("work/source/io.json").read_text())["outputs"]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.runtime == "ncnn":
            runs, info, shape_of = ncnn_variants(spec, artifacts, tmp)
        else:
            runs, info, shape_of = mnn_variants(spec, artifacts, tmp, args.photos)
        rows = {}
        for label, run in runs.items():
            per = [run(shape_of(x)) for x in ref["x"]]
            ys = [np.concatenate([p[k] if p[k].shape[0] == 1 else p[k][None] for p in per], axis=0)
                  for k in range(len(per[0]))]
            m = ekit.compare(ref["y"], ys, ref["labels"])
            m.update(ekit_task.evaluate(ref, ys, out_names))
            rows[label] = {"metrics": m, "size_bytes": ekit.file_size(info[label]["files"])}
        times = {label: [] for label in runs}
        x0 = ref["x"][0]
        for label, run in runs.items():  # warm-up
            run(shape_of(x0))
        for _ in range(ROUNDS):
            for label, run in runs.items():
                t = time.perf_counter()
                run(shape_of(x0))
                times[label].append((time.perf_counter() - t) * 1000.0)
        for label in runs:
            a = np.asarray(times[label])
            rows[label]["latency_ms"] = {"median": float(np.median(a)), "min": float(a.min()), "runs": ROUNDS}
            rows[label].update({k: v for k, v in info[label].items() if k in ("convert_s", "command", "config", "rc")})
        for label in info:
            if label not in rows:
                rows[label] = {"failed": True, **{k: v for k, v in info[label].items() if k != "files"}}
    args.out.write_text(json.dumps(ekit.jsonable(rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
