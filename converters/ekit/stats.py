"""ekit.stats — confidence bounds for the validation gates (plain numpy, seeded: deterministic).

Every gate that decides on a sample of images says how sure it is (docs/gates.md):

* ``wilson_low(k, n)`` — the lower end of the Wilson score interval of a proportion k/n (two-sided
  95 %: z = 1.96). 20/20 -> 0.839, 19/20 -> 0.764, 8/8 -> 0.676, 100/100 -> 0.963;
* ``boot_weights(n, groups=None)`` — B x n multiplicities of a seeded bootstrap over the n images
  (each row a resample with replacement; the same seed gives the same rows: a gate never flips
  between runs); with ``groups`` a cluster bootstrap: a photo and all its augmented variants are
  drawn together;
* ``low_bound(samples, value, k, n)`` — what the gates compare: the smaller of the bootstrap's
  2.5th percentile (errors that cluster in a few images widen it) and ``wilson_low`` of the value
  read as a proportion of the n units it rests on (a bootstrap of a perfect score is degenerate:
  8 of 8 boxes found says [1, 1], Wilson says >= 0.68).
"""

from __future__ import annotations

import math

import numpy as np

Z = 1.959963984540054  # two-sided 95 %
BOOTSTRAP = 200  # resamples: the 2.5th percentile moves by ~0.002 between seeds at 200 boxes
SEED = 20260 + 19  # fixed: the same images give the same bounds


def wilson_low(k: float, n: float, z: float = Z) -> float | None:
    """Lower end of the Wilson score interval of k successes in n trials (None when n is 0)."""
    if not n or n <= 0:
        return None
    p = min(max(float(k) / float(n), 0.0), 1.0)
    d = 1.0 + z * z / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / d)


def boot_weights(n: int, b: int = BOOTSTRAP, seed: int = SEED, groups=None) -> np.ndarray:
    """[b, n] float multiplicities: row r is the r-th resample (with replacement) of n images.
    ``groups`` (one id per image; the gate's augmentation gives each variant its photo's id):
    a cluster bootstrap, resampling the groups, an image weighing what its group was drawn —
    variants of one photo are not independent, so they come and go together."""
    if n <= 0:
        return np.zeros((b, 0))
    rng = np.random.default_rng(seed)
    if groups is not None and len(groups) == n:
        ids, inv = np.unique(np.asarray(groups), return_inverse=True)
        idx = rng.integers(0, len(ids), size=(b, len(ids)))
        gw = np.zeros((b, len(ids)))
        np.add.at(gw, (np.repeat(np.arange(b), len(ids)), idx.ravel()), 1.0)
        return gw[:, inv.reshape(-1)]
    idx = rng.integers(0, n, size=(b, n))
    w = np.zeros((b, n))
    np.add.at(w, (np.repeat(np.arange(b), n), idx.ravel()), 1.0)
    return w


def percentile_low(samples, q: float = 2.5) -> float | None:
    """The q-th percentile of the finite bootstrap samples (None when there are none)."""
    a = np.asarray([s for s in samples if s is not None], dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(np.percentile(a, q)) if a.size else None


def low_bound(samples, value: float | None, n: float) -> float | None:
    """min(bootstrap 2.5th percentile, Wilson lower bound of ``value`` as a proportion of ``n``)."""
    if value is None:
        return None
    lows = [percentile_low(samples), wilson_low(value * n, n) if n else None]
    lows = [v for v in lows if v is not None]
    return float(min(lows)) if lows else None


def ratio_boot(num: np.ndarray, den: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bootstrap samples of sum(num) / sum(den) over images (per-image counts, weights [B, n]);
    NaN where a resample has no denominator."""
    n_ = weights @ np.asarray(num, dtype=np.float64)
    d_ = weights @ np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d_ > 0, n_ / d_, np.nan)


def f1_counts(tp, fp, fn):
    """F1 = 2TP / (2TP + FP + FN) from (summed) counts; None when there is nothing to judge."""
    den = 2 * tp + fp + fn
    return (2 * tp / den) if den else None


def f1_boot(tp, fp, fn, weights: np.ndarray) -> np.ndarray:
    """Bootstrap samples of the F1 of per-image counts."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    return ratio_boot(2 * tp, 2 * tp + fp + fn, weights)


def f1_low(tp, fp, fn, weights: np.ndarray | None = None) -> float | None:
    """The gate's lower bound of the F1 of per-image counts: the bootstrap's 2.5th percentile and
    Wilson on TP out of (2TP + FP + FN) / 2 (F1 is exactly that proportion), the smaller."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    value = f1_counts(tp.sum(), fp.sum(), fn.sum())
    if value is None:
        return None
    w = boot_weights(len(tp)) if weights is None else weights
    return low_bound(f1_boot(tp, fp, fn, w), value, (2 * tp.sum() + fp.sum() + fn.sum()) / 2)
