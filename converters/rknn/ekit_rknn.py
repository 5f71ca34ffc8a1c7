"""rknn-toolkit2 helpers (images/rknn): the validated SoC list, the input folding (the model's
mean/std go into the .rknn, which then takes 0-255 pixels NHWC in the model's channel order), the
calibration set in that pixel domain, and one simulator session.

The simulator only runs a model built in the same session (``load_rknn`` + ``init_runtime()``
without a target returns no outputs, measured with 2.5.0), and ``export_rknn`` is not
byte-reproducible (two builds of one model differ), so the convert step runs the simulator on the
reference inputs right after the build; the validate step reads those outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import ekit

# rknn-toolkit2 2.5 RKNN.config(target_platform=...): the chips its docstring names
SOCS = ("rk3588", "rk3576", "rk3568", "rk3566", "rk3562", "rv1126b", "rv1106", "rv1106b", "rv1103",
        "rv1103b", "rk2118")


def check_soc(soc: str) -> str:
    soc = str(soc).lower()
    if soc not in SOCS:
        ekit.fail("usage", f"--option soc={soc!r} is not a Rockchip NPU rknn-toolkit2 2.5 builds for",
                  f"use one of: {', '.join(SOCS)}")
    return soc


def folding(spec: dict) -> tuple[list, list, int]:
    """(mean_values, std_values, channels) in 0-255 pixel units for RKNN.config: the input
    spec's x = (p / scale - mean) / std is x = (p - mean*scale) / (std*scale)."""
    if spec.get("layout", "nchw") != "nchw" or len(spec.get("shape") or []) != 4:
        ekit.fail("unsupported", f"the rknn target takes 4-D NCHW image models (this one: "
                                 f"{spec.get('layout')} {spec.get('shape')})",
                  "export the model with an NCHW image input")
    _, c, _, _ = [int(d) for d in spec["shape"]]
    scale = float(spec.get("scale") or 1.0)
    mean = np.asarray(spec.get("mean") if spec.get("mean") is not None else [0.0] * c, np.float64)
    std = np.asarray(spec.get("std") if spec.get("std") is not None else [1.0] * c, np.float64)
    mean, std = np.broadcast_to(mean, (c,)) * scale, np.broadcast_to(std, (c,)) * scale
    return [[round(float(v), 6) for v in mean]], [[round(float(v), 6) for v in std]], c


def to_pixels(x: np.ndarray, spec: dict) -> np.ndarray:
    """The preprocessed float NCHW tensors back in the pixel domain the .rknn takes (NCHW float32,
    0-255, the model's channel order): exact for RGB/BGR, the L value for greyscale models."""
    mean, std, c = folding(spec)
    m = np.asarray(mean[0], np.float32).reshape(1, c, 1, 1)
    s = np.asarray(std[0], np.float32).reshape(1, c, 1, 1)
    return (x.astype(np.float32) * s + m).astype(np.float32)


def feed(x: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 NHWC pixels, as a user feeds the .rknn (rounded from ``to_pixels``)."""
    p = np.clip(np.rint(to_pixels(x, spec)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(p.transpose(0, 2, 3, 1))


def dataset(calib: np.ndarray, spec: dict, folder: Path, limit: int) -> Path:
    """rknn's calibration list: one .npy per sample (NCHW pixel domain), one path a line."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = to_pixels(calib[:limit], spec)
    lines = []
    for i in range(pixels.shape[0]):
        path = folder / f"{i:05d}.npy"
        np.save(path, pixels[i:i + 1])
        lines.append(str(path.resolve()))
    listing = folder / "dataset.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def call(what: str, code) -> None:
    """rknn-toolkit2 returns 0 on success and logs its reason itself."""
    if code != 0:
        ekit.fail("unsupported", f"rknn-toolkit2 {what} failed (returned {code}); its reason is in "
                                 "the step log above")


def head_pairs(onnx_path, with_head_convs: bool = False) -> tuple[list[list[str]], list[str]]:
    """rknn's custom_hybrid pairs [[start, output], ...] that keep a detector's decode tail (the
    nodes after the last Conv/Gemm/MatMul: ``ekit_onnx.head``) in fp16 -- with ``with_head_convs``
    also the last conv of each head branch (``ekit_onnx.head_convs``: YOLOv8n's cv2/cv3.*.2) --,
    and the names of the head convs kept; ([], []) when there is no tail (a classifier). int8 there
    makes box coordinates and class scores share one scale."""
    import onnx

    import ekit_onnx

    model = onnx.load(str(onnx_path))
    tail = ekit_onnx.head(model)
    if not tail:
        return [], []
    convs = ekit_onnx.head_convs(model) if with_head_convs else []
    region = tail + convs
    made = {o for n in region for o in n.output}
    consts = {t.name for t in model.graph.initializer} | {o for n in region if n.op_type == "Constant"
                                                          for o in n.output}
    starts = sorted({i for n in region for i in n.input if i and i not in made and i not in consts})
    pairs = [[s, o.name] for s in starts for o in model.graph.output if o.name in made]
    return pairs, [n.name or n.output[0] for n in convs]
