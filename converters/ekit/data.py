"""ekit.data — labels, image sets, the reference file and what a source step writes from them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .images import _load, _pad, input_hw, list_images, preprocess
from .steps import IMAGE_EXTENSIONS, LABEL_FILES, fail, log, paths, warn, work

# --------------------------------------------------------------------------- labels

def _int_or_none(text):
    try:
        return int(str(text).strip())
    except ValueError:
        return None


def read_label_file(path: Path) -> dict[str, int]:
    """``filename,label`` lines (comma, tab or whitespace separated; '#' comments and a
    non-numeric header line are ignored) -> {relative posix path or basename: label}."""
    out: dict[str, int] = {}
    for raw in path.read_text(encoding="utf-8-sig", errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "," in line:
            name, _, label = line.rpartition(",")
        elif "\t" in line:
            name, _, label = line.rpartition("\t")
        else:
            bits = line.rsplit(None, 1)
            if len(bits) != 2:
                continue
            name, label = bits
        value = _int_or_none(label)
        if value is None:
            continue  # header or junk
        out[name.strip().strip('"').replace("\\", "/")] = value
    return out


def discover_labels(folder, files: list[Path]) -> tuple[list[int], str]:
    """Labels for ``files`` (all under ``folder``) and where they came from.

    1. ``labels.csv`` / ``labels.txt`` in the folder: ``filename,label`` (path relative to the
       folder, or bare file name);
    2. else one subfolder per class: integer folder names are the label itself; other names are
       numbered in sorted order (only when there are >= 2 class folders and no loose images);
    3. else -1 (unknown).
    """
    root = Path(folder)
    for name in LABEL_FILES:
        lf = root / name
        if lf.is_file():
            table = read_label_file(lf)
            labels = []
            for f in files:
                rel = f.relative_to(root).as_posix()
                labels.append(table.get(rel, table.get(f.name, -1)))
            return labels, name
    tops = [f.relative_to(root).parts for f in files]
    if tops and all(len(p) >= 2 for p in tops):
        classes = sorted({p[0] for p in tops})
        if all(_int_or_none(c) is not None for c in classes):
            return [int(p[0]) for p in tops], "integer class folders"
        if len(classes) >= 2:
            index = {c: i for i, c in enumerate(classes)}
            return [index[p[0]] for p in tops], "class folders (sorted order)"
    return [-1] * len(files), "none"


# --------------------------------------------------------------------------- data sets

def _pick_order(n: int, limit: int | None) -> list[int]:
    """Indices to try: an evenly spread selection of ``limit`` first, then the rest (fallbacks
    for unreadable files)."""
    if not limit or limit >= n:
        return list(range(n))
    first = sorted(set(int(round(i)) for i in np.linspace(0, n - 1, limit)))
    rest = [i for i in range(n) if i not in set(first)]
    return first + rest


def load_set(folder, input_spec: dict, limit: int | None = None, min_count: int = 1,
             purpose: str = "validation") -> dict:
    """Load up to ``limit`` images of ``folder`` preprocessed per ``input_spec``.

    Returns ``{"x": float32 [N,...] (model layout), "pixels": uint8 [N,H,W,3], "labels": int64
    [N], "files": [relative paths], "skipped": [(file, reason)], "labels_from": str}``.
    Unreadable files are warned about and skipped; fewer than ``min_count`` usable images (or a
    missing/empty/unreadable folder) is a ``data`` failure.
    """
    if not folder:
        fail("data", f"no {purpose} images were given")
    root = Path(folder)
    if not root.exists():
        fail("data", f"the {purpose} folder {root} does not exist")
    if not root.is_dir():
        fail("data", f"the {purpose} path {root} is not a folder of images")
    try:
        files = list_images(root)
    except OSError as e:
        fail("data", f"cannot read the {purpose} folder {root}: {e}")
    if not files:
        fail("data", f"the {purpose} folder {root} holds no images "
                     f"({', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS[:5])}, ...)")
    h, w, _ = input_hw(input_spec)
    resize = input_spec.get("resize", "crop")
    all_labels, labels_from = discover_labels(root, files)
    pixels, labels, names, skipped = [], [], [], []
    for i in _pick_order(len(files), limit):
        if limit and len(pixels) >= limit:
            break
        rel = files[i].relative_to(root).as_posix()
        arr, reason = _load(files[i], (h, w), resize, _pad(input_spec))
        if arr is None:
            warn(f"skipping {purpose} image {rel}: {reason}")
            skipped.append((rel, reason))
            continue
        pixels.append(arr)
        labels.append(all_labels[i])
        names.append(rel)
    if len(pixels) < max(1, int(min_count)):
        detail = "; ".join(f"{f}: {r}" for f, r in skipped[:5])
        fail("data", f"only {len(pixels)} usable image(s) in the {purpose} folder {root} "
                     f"(need at least {min_count}; {len(skipped)} unreadable"
                     + (f": {detail}" if detail else "") + ")",
             "add more images or fix the unreadable ones")
    order = sorted(range(len(names)), key=lambda k: names[k])  # stable, listing order
    pix = np.stack([pixels[k] for k in order])
    result = {
        "x": preprocess(pix, input_spec),
        "pixels": pix,
        "labels": np.asarray([labels[k] for k in order], dtype=np.int64),
        "files": [names[k] for k in order],
        "skipped": skipped,
        "labels_from": labels_from,
    }
    n_lab = int((result["labels"] >= 0).sum())
    log(f"{purpose}: {len(names)} image(s) from {root}"
        + (f", {len(skipped)} skipped" if skipped else "")
        + (f", {n_lab} labelled ({labels_from})" if n_lab else ", no labels"))
    return result


def synthetic_set(input_spec: dict, n: int = 8, seed: int = 0) -> dict:
    """Seeded uniform-noise pixels through the same preprocessing (no images given at all)."""
    h, w, _ = input_hw(input_spec)
    rng = np.random.default_rng(seed)
    pix = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    return {"x": preprocess(pix, input_spec), "pixels": pix,
            "labels": np.full(n, -1, dtype=np.int64),
            "files": [f"synthetic-{seed}-{i}" for i in range(n)], "skipped": [],
            "labels_from": "none"}


# --------------------------------------------------------------------------- reference file

def write_reference(path, data: dict, outputs) -> None:
    """``reference.npz``: x, pixels, labels, files (from a load_set/synthetic_set dict) and
    y0, y1, ... (the source framework's outputs, each stacked on axis 0)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"x": np.asarray(data["x"], dtype=np.float32),
              "pixels": np.asarray(data["pixels"], dtype=np.uint8),
              "labels": np.asarray(data["labels"], dtype=np.int64),
              "files": np.asarray([str(f) for f in data["files"]], dtype=str)}
    for i, y in enumerate(outputs):
        arrays[f"y{i}"] = np.asarray(y)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def read_reference(path=None) -> dict:
    """-> {"x", "pixels", "labels", "files": list[str], "y": [y0, y1, ...]}."""
    path = Path(path) if path else work() / "source" / "reference.npz"
    with np.load(path, allow_pickle=False) as z:
        ys = []
        while f"y{len(ys)}" in z.files:
            ys.append(z[f"y{len(ys)}"])
        return {"x": z["x"], "pixels": z["pixels"], "labels": z["labels"],
                "files": [str(f) for f in z["files"]], "y": ys}



# --------------------------------------------------------------------------- source-step data

def reference_inputs(p: dict, spec: dict) -> tuple[dict, str]:
    """The images the reference outputs are computed on: ``val`` if given, else ``calib``, else
    (only with params ``allow_synthetic``) seeded noise; otherwise a ``data`` failure.
    -> (load_set dict, "val" | "calib" | "synthetic")."""
    where = paths()
    limit = int(p.get("reference_limit") or 200)
    if where.get("val"):
        return load_set(where["val"], spec, limit=limit, min_count=1, purpose="validation"), "val"
    if where.get("calib"):
        return load_set(where["calib"], spec, limit=limit, min_count=1,
                        purpose="calibration"), "calib"
    if p.get("allow_synthetic"):
        warn("no images given: the reference uses seeded random noise, so accuracy cannot be "
             "measured and int8 calibration would be meaningless")
        return synthetic_set(spec, n=int(p.get("synthetic_count") or 8),
                             seed=int(p.get("seed") or 0)), "synthetic"
    fail("data", "no validation or calibration images were given: edgekiln checks every "
                 "artifact against the source model on real images",
         "pass --val DIR (or --calib DIR)")


def write_calibration(p: dict, spec: dict, out_dir: Path) -> dict | None:
    """``calib.npy`` (float32, model layout) from the calibration folder, if one was given."""
    where = paths()
    if not where.get("calib"):
        return None
    data = load_set(where["calib"], spec, limit=int(p.get("calib_limit") or 500),
                    min_count=int(p.get("calib_min") or 1), purpose="calibration")
    n = len(data["files"])
    if n < 32:
        warn(f"only {n} calibration image(s): int8 ranges from few images are fragile "
             "(100-500 representative images are typical)")
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "calib.npy", data["x"].astype(np.float32))
    return {"n": n, "skipped": data["skipped"], "files_sha": _names_hash(data["files"])}


def _names_hash(names) -> str:
    import hashlib

    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
