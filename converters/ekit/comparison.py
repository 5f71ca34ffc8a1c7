"""ekit.comparison — validation: an artifact's outputs against the reference, latency, tensor specs, sizes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .stats import wilson_low
from .steps import jsonable, warn

# --------------------------------------------------------------------------- validation

def _squeeze_like(ref: np.ndarray, out: np.ndarray, i: int) -> np.ndarray:
    if ref.shape == out.shape:
        return out
    if ref.size == out.size and tuple(d for d in ref.shape if d != 1) == \
            tuple(d for d in out.shape if d != 1):
        return out.reshape(ref.shape)
    raise ValueError(f"output {i}: shape {list(out.shape)} does not match the reference "
                     f"{list(ref.shape)}")


def _classes(a: np.ndarray):
    """[N, C] scores (also [N,1,C] / [N,C,1,1]) -> [N, C]; None when not classification-like."""
    if a.ndim < 2:
        return None
    rest = [d for d in a.shape[1:] if d != 1]
    if len(rest) != 1 or rest[0] < 2:
        return None
    return a.reshape(a.shape[0], rest[0])


EMPTY_NORM = 1e-2  # see compare: both outputs of a sample below 1% of the set's largest norm: "empty"


def compare(ref_outputs, outputs, labels=None) -> dict:
    """How close ``outputs`` are to ``ref_outputs`` (lists of arrays, samples on axis 0).

    * ``max_abs`` / ``mean_abs``: over every element of every output;
    * ``cosine``: per sample, over all outputs flattened together; ``cosine`` is the MINIMUM
      over samples (one bad sample must show), ``cosine_mean`` the mean; a sample whose SOURCE
      output is blank (norm <= EMPTY_NORM x the largest source norm) counts 1 (``cosine_blank``);
    * ``top1_agreement``: argmax of the first output equal, only when it is classification-like
      ([N, C], C >= 2, size-1 dims ignored), else None; ``top1_agreement_low`` its Wilson 95 %
      lower bound (20/20: 0.839, 19/20: 0.764); ``prob_tv`` / ``prob_tv_max``: the mean / largest
      total-variation distance of the class probabilities (``prob_tv``);
    * ``accuracy`` / ``source_accuracy``: of ``outputs`` / ``ref_outputs`` on samples with a label
      >= 0 (None without labels or a classification-like first output);
    * ``nonfinite``: NaN/inf values in ``outputs`` (those make max/mean None, cosine 0).
    All values are plain floats/ints/None.
    """
    if len(ref_outputs) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs, the reference has {len(ref_outputs)}")
    if not ref_outputs:
        raise ValueError("no outputs to compare")
    refs = [np.asarray(r) for r in ref_outputs]
    outs = [_squeeze_like(r, np.asarray(o), i) for i, (r, o) in enumerate(zip(refs, outputs))]
    n = int(refs[0].shape[0])
    for i, r in enumerate(refs):
        if r.shape[0] != n:
            raise ValueError(f"output {i} has {r.shape[0]} samples, output 0 has {n}")
    R = np.concatenate([r.reshape(n, -1).astype(np.float64) for r in refs], axis=1)
    O = np.concatenate([o.reshape(n, -1).astype(np.float64) for o in outs], axis=1)
    nonfinite = int((~np.isfinite(O)).sum())
    finite = nonfinite == 0 and bool(np.isfinite(R).all())
    diff = np.abs(R - O)
    res = {"n": n,
           "max_abs": float(diff.max()) if finite and diff.size else None,
           "mean_abs": float(diff.mean()) if finite and diff.size else None}
    if finite:
        num = (R * O).sum(axis=1)
        nr, no = np.linalg.norm(R, axis=1), np.linalg.norm(O, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = num / (nr * no)
        # A sample whose SOURCE output is blank next to the others (a probability map of a photo
        # with nothing in it: 1e-7 noise or exact zeros) has no direction to compare: decided by
        # the source alone (norm <= EMPTY_NORM x the set's largest source norm), its cosine is not
        # meaningful and counts 1 (``cosine_blank`` says how many); what the artifact adds there is
        # judged by the task metrics (map/region F1 precision, max_abs). Otherwise the cosine as
        # usual (0 when the artifact is all zeros).
        tiny = EMPTY_NORM * float(nr.max(initial=0.0))
        empty = nr <= tiny
        cos = np.where(empty, 1.0, np.where(no == 0, 0.0, cos))
        cos = np.clip(cos, -1.0, 1.0)
        res["cosine"] = float(cos.min())
        res["cosine_mean"] = float(cos.mean())
        res["cosine_blank"] = int(empty.sum())
    else:
        res["cosine"] = 0.0
        res["cosine_mean"] = 0.0
        res["cosine_blank"] = 0
    rc, oc = _classes(refs[0]), _classes(outs[0])
    res.update(top1_agreement=None, top1_agreement_low=None, prob_tv=None, prob_tv_max=None)
    if rc is not None and oc is not None:
        rt, ot = rc.argmax(axis=1), oc.argmax(axis=1)
        agree = int((rt == ot).sum()) if finite else 0
        res["top1_agreement"] = agree / n
        res["top1_agreement_low"] = wilson_low(agree, n)
        tv = prob_tv(rc, oc) if finite else np.ones(n)
        res["prob_tv"], res["prob_tv_max"] = float(tv.mean()), float(tv.max())
    else:
        rt = ot = None
    res["accuracy"] = res["source_accuracy"] = None
    res["labelled"] = 0
    if labels is not None and rt is not None:
        lab = np.asarray(labels).reshape(-1)
        if lab.shape[0] != n:
            raise ValueError(f"{lab.shape[0]} labels for {n} samples")
        m = lab >= 0
        if m.any():
            res["labelled"] = int(m.sum())
            res["accuracy"] = float((ot[m] == lab[m]).mean())
            res["source_accuracy"] = float((rt[m] == lab[m]).mean())
    res["nonfinite"] = nonfinite
    return res


def probabilities(scores: np.ndarray, like: np.ndarray | None = None) -> np.ndarray:
    """[N, C] class scores -> probabilities: kept when the source's (``like``, default the scores
    themselves) rows already are (values in [0, 1] summing to 1 within 1e-3: a softmax inside the
    model), else a softmax of the scores (logits)."""
    a = np.asarray(scores, dtype=np.float64)
    ref = a if like is None else np.asarray(like, dtype=np.float64)
    if ref.min() >= 0 and ref.max() <= 1 and np.allclose(ref.sum(axis=1), 1.0, atol=1e-3):
        return np.clip(a, 0, None) / np.maximum(np.clip(a, 0, None).sum(axis=1, keepdims=True), 1e-12)
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def prob_tv(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per sample total-variation distance of the class probabilities, 0.5 * sum |p - q| in
    [0, 1]: how much probability mass int8 moved (scale-free, unlike a raw-logit cosine; a shifted
    logit vector or a temperature change the cosine, not the decision; docs/gates.md)."""
    p, q = probabilities(ref), probabilities(out, like=ref)
    return 0.5 * np.abs(p - q).sum(axis=1)


NOISY_SPREAD = 0.5  # (p90 - p10) / median above this: a busy machine, say so


def latency(fn, runs: int = 50, warmup: int = 5) -> dict:
    """Call ``fn()`` ``warmup`` times, then time ``runs`` calls: milliseconds. ``spread`` is
    (p90 - p10) / median; ``noisy`` flags a spread above ``NOISY_SPREAD`` (warned)."""
    for _ in range(max(0, int(warmup))):
        fn()
    times = []
    for _ in range(max(1, int(runs))):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    a = np.asarray(times)
    med, p10, p90 = float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90))
    spread = (p90 - p10) / med if med > 0 else 0.0
    res = {"median": med, "p90": p90, "min": float(a.min()), "runs": int(a.size),
           "spread": spread, "noisy": bool(spread > NOISY_SPREAD)}
    if res["noisy"]:
        warn(f"noisy latency: p10-p90 spans {spread:.0%} of the median ({p10:.2f}-{p90:.2f} ms, "
             f"min {res['min']:.2f} ms): the machine was busy; the min is the better estimate")
    return res


_ORT_TYPES = {"float": "float32", "double": "float64", "float16": "float16", "int8": "int8",
              "uint8": "uint8", "int16": "int16", "uint16": "uint16", "int32": "int32",
              "int64": "int64", "bool": "bool", "bfloat16": "bfloat16"}


def tensor_spec(name, shape, dtype, quantization=None) -> dict:
    """TensorSpec: dims are ints, or strings/None for dynamic ones; dtype a numpy-style name."""
    dims = []
    for d in (shape or []):
        if isinstance(d, (int, np.integer)) and int(d) >= 0:
            dims.append(int(d))
        else:
            dims.append(d if isinstance(d, str) else None)
    dt = dtype if not isinstance(dtype, str) else str(dtype)
    if isinstance(dt, str) and dt.startswith("tensor(") and dt.endswith(")"):  # onnxruntime's type strings
        dt = _ORT_TYPES.get(dt[7:-1], dt[7:-1])
    try:
        dt = np.dtype(dt).name
    except TypeError:
        dt = str(dt)
    q = None
    if quantization is not None:
        q = {"scale": [float(s) for s in np.asarray(quantization["scale"]).reshape(-1)],
             "zero_point": [int(z) for z in np.asarray(quantization["zero_point"]).reshape(-1)]}
        for k, v in quantization.items():
            if k not in q:
                q[k] = jsonable(v)
    return {"name": str(name), "shape": dims, "dtype": dt, "quantization": q}


def file_size(paths) -> int:
    """Total bytes of a file, a folder (recursive) or a list of them."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    total = 0
    for p in paths:
        p = Path(p)
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        else:
            total += p.stat().st_size
    return total
