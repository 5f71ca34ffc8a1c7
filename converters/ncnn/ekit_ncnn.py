"""ekit_ncnn — pnnx/ncnn helpers for the ncnn target's scripts (copied next to them).

Plain Python at import time (the ``ncnn`` module is passed in by the caller), so the pure
functions are unit-testable without ncnn installed.

* pnnx is a standalone binary in the ``pnnx`` wheel; ``import pnnx`` would import torch (its
  Python API), so the binary is found by the package's location and run as a subprocess.
* pnnx names the ncnn blobs ``in0, in1, ...`` and ``out0, out1, ...`` in the source model's
  input/output order; ``blob_names`` pairs them with the ONNX names.
* An ONNX op pnnx cannot map is written into the .param as a layer type ncnn does not have
  (``Hardmax``, ``pnnx.Expression``...) and pnnx still exits 0: ``unknown_layers`` finds them.
* ncnn's Python ``Mat(ndarray)`` borrows the array's memory; a first layer that works in place
  (ReLU, BinaryOp) then crashes the process: ``run`` feeds an owned copy (``Mat(x).clone()``).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

PARAM_MAGIC = "7767517"
OUTPUT_KEYS = ("ncnnparam", "ncnnbin", "ncnnpy", "pnnxparam", "pnnxbin", "pnnxpy", "pnnxonnx")


def pnnx_binary() -> Path:
    spec = importlib.util.find_spec("pnnx")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the pnnx package is not installed in this environment")
    path = Path(list(spec.submodule_search_locations)[0]) / "pnnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (a pnnx wheel without its binary?)")
    return path


def shape_arg(shape) -> str:
    """``[1, 3, 224, 224]`` -> ``"[1,3,224,224]f32"`` (pnnx's inputshape syntax)."""
    return "[" + ",".join(str(int(d)) for d in shape) + "]f32"


def pnnx_command(model: Path, shape, work: Path, fp16: bool, optlevel: int) -> tuple[list[str], dict]:
    """The pnnx argument list (every output named inside ``work``) and {key: path}."""
    names = {"ncnnparam": "model.ncnn.param", "ncnnbin": "model.ncnn.bin", "ncnnpy": "model_ncnn.py",
             "pnnxparam": "model.pnnx.param", "pnnxbin": "model.pnnx.bin", "pnnxpy": "model_pnnx.py",
             "pnnxonnx": "model.pnnx.onnx"}
    paths = {k: work / v for k, v in names.items()}
    cmd = [str(pnnx_binary()), str(model), f"inputshape={shape_arg(shape)}", f"fp16={int(bool(fp16))}",
           f"optlevel={int(optlevel)}"] + [f"{k}={paths[k]}" for k in OUTPUT_KEYS]
    return cmd, paths


def run_pnnx(model: Path, shape, work: Path, fp16: bool, optlevel: int = 2, timeout: float = 900):
    """Run pnnx on a copy of ``model`` inside ``work`` (pnnx also writes ``<model>.pnnxsim.onnx``
    beside its input, which must not land in the shared source folder); -> (paths, seconds, log
    text, command). Raises CalledProcessError / TimeoutExpired."""
    work.mkdir(parents=True, exist_ok=True)
    copy = work / "model.onnx"
    shutil.copyfile(model, copy)
    cmd, paths = pnnx_command(copy, shape, work, fp16, optlevel)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=work)
    seconds = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
    return paths, seconds, text, cmd


def param_layers(text: str) -> list[dict]:
    """Layers of an ncnn .param text: [{"type", "name", "inputs", "outputs"}]."""
    lines = [l for l in text.splitlines() if l.strip()]
    if not lines or lines[0].strip() != PARAM_MAGIC:
        raise ValueError("not an ncnn .param file (no 7767517 magic)")
    layers = []
    for line in lines[2:]:
        parts = line.split()
        n_in, n_out = int(parts[2]), int(parts[3])
        layers.append({"type": parts[0], "name": parts[1], "inputs": parts[4:4 + n_in],
                       "outputs": parts[4 + n_in:4 + n_in + n_out]})
    return layers


def unknown_layers(layers: list[dict], has_layer) -> list[str]:
    """Layer types ncnn cannot create (``has_layer(type) -> bool``), in order, once each."""
    found: list[str] = []
    for layer in layers:
        t = layer["type"]
        if t not in found and not has_layer(t):
            found.append(t)
    return found


def source_ops(pnnx_log: str, types: list[str]) -> list[str]:
    """pnnx's `ignore <Op> ...` lines name the ONNX ops it left unconverted."""
    ops = []
    for line in pnnx_log.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "ignore" and parts[1] not in ops:
            ops.append(parts[1])
    return ops or list(types)


def blob_names(layers: list[dict]) -> tuple[list[str], list[str]]:
    """(input blobs, output blobs): pnnx's in<i> / out<i>, sorted by i."""
    blobs = {b for layer in layers for b in layer["outputs"]}

    def numbered(prefix):
        found = [b for b in blobs if b.startswith(prefix) and b[len(prefix):].isdigit()]
        return sorted(found, key=lambda b: int(b[len(prefix):]))

    return numbered("in"), numbered("out")


LOW_PRECISION = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage")


def make_net(ncnn, param: Path, weights: Path, threads: int, low_precision: bool):
    """An ncnn.Net with ncnn's default Option (``low_precision``: fp16 storage/arithmetic wherever
    the CPU has them, what a device runs) or with every fp16/bf16 path off (exact float32)."""
    net = ncnn.Net()
    opt = net.opt
    opt.num_threads = int(threads)
    if not low_precision:
        for key in LOW_PRECISION:
            setattr(opt, key, False)
    if net.load_param(str(param)) != 0:
        raise ValueError(f"ncnn could not load {param.name}")
    if net.load_model(str(weights)) != 0:
        raise ValueError(f"ncnn could not load {weights.name}")
    return net


def options_of(net) -> dict:
    return {key: bool(getattr(net.opt, key)) for key in LOW_PRECISION}


def run(ncnn, net, inputs: list[str], outputs: list[str], x: np.ndarray) -> list[np.ndarray]:
    """One sample (no batch dim: ncnn has none) -> the outputs, each with a batch dim of 1."""
    ex = net.create_extractor()
    ex.input(inputs[0], ncnn.Mat(np.ascontiguousarray(x, dtype=np.float32)).clone())
    outs = []
    for name in outputs:
        ret, mat = ex.extract(name)
        if ret != 0:
            raise RuntimeError(f"ncnn could not compute blob {name} (error {ret})")
        outs.append(np.array(mat)[None, ...].copy())
    return outs


def run_all(ncnn, net, inputs, outputs, xs: np.ndarray) -> list[np.ndarray]:
    """Every sample of ``xs`` ([N, C, H, W]: samples on axis 0) -> outputs stacked on axis 0."""
    per = [run(ncnn, net, inputs, outputs, x) for x in xs]
    return [np.concatenate([p[i] for p in per], axis=0) for i in range(len(outputs))]
