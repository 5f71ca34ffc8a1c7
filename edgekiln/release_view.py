"""What ``edgekiln release``, ``release --check`` and ``verify`` print (tables, or JSON on stdout)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.table import Table

from .errors import IntegrityError
from .release import ReleaseResult
from .release_check import FileCheck, verify
from .ui import fmt, fmt_size


def release_json(result: ReleaseResult, rows: list[FileCheck] | None) -> dict:
    data = {"path": str(result.path), "status": result.status, "seconds": round(result.seconds, 3),
            "entries": {k: {"status": a.status, "build": str(a.path)} for k, a in result.entries.items()},
            "archives": result.archives()}
    if rows is not None:
        data["check"] = {"files": [{"path": r.path, "status": r.status, "detail": r.detail} for r in rows],
                         "counts": dict(Counter(r.status for r in rows))}
    return data


def print_release(console, result: ReleaseResult, rows: list[FileCheck] | None, as_json: bool) -> None:
    """Print the release (and the check); raise IntegrityError when a rebuilt file differs."""
    bad = [r for r in rows or [] if r.status in ("differing", "missing")]
    error = IntegrityError(f"the rebuild differs from the release in {len(bad)} file(s): "
                           f"{', '.join(r.path for r in bad[:5])}{' …' if len(bad) > 5 else ''}",
                           "see the list above; a converter is not deterministic here") if bad else None
    if as_json:
        data = release_json(result, rows)
        if error is not None:
            data["error"], error.json_done = error.to_json(), True
        console.print_json(data=data)
    else:
        if result.entries:
            table = Table(title=f"{result.path.name} ({result.seconds:.1f}s)")
            for col in ("entry", "status", "size", "agreement", "accuracy", "task"):
                table.add_column(col, no_wrap=True)
            for key, art in result.entries.items():
                val = art.manifest.get("validation", {})
                metrics = val.get("metrics") or {}
                table.add_row(key, art.status, fmt_size(val.get("size_bytes")),
                              fmt(metrics.get("top1_agreement"), ".1%"), fmt(metrics.get("accuracy"), ".1%"),
                              headline(metrics))
            console.print(table)
        for archive in result.archives():
            console.print(f"  {archive['path']}  {fmt_size(archive['size'])}", markup=False)
        console.print(f"{'released' if result.status == 'released' else 'already released'}: {result.path}",
                      markup=False)
    if rows is None:
        return
    counts = Counter(r.status for r in rows)
    compared = len(rows) - counts["excluded"]
    if not as_json:
        for r in rows:
            console.print(f"  {r.status:<10} {r.path}  {r.detail}", markup=False)
        console.print(f"check: {counts['identical']}/{compared} files identical"
                      f" ({counts['excluded']} excluded by the rule, see release.json rules)", markup=False)
    if error is not None:
        raise error


def headline(metrics: dict) -> str:
    """The task number the gates read first (docs/gates.md): ``mAP50 0.971`` for a detector,
    ``region F1 0.950`` for a map, ``mIoU 0.990`` for segmentation; "-" otherwise."""
    for label, key in (("mAP50", "det_map50"), ("region F1", "region_f1"), ("mIoU", "miou")):
        if metrics.get(key) is not None:
            return f"{label} {metrics[key]:.3f}"
    return "-"


def print_verify(console, path: Path, as_json: bool) -> None:
    checked, problems = verify(path)
    error = IntegrityError(f"{path}: {len(problems)} problem(s), first: {problems[0]}",
                           "the release changed after it was made: restore it from a copy or release again "
                           "under a new version") if problems else None
    if as_json:
        data = {"path": str(path), "checked": checked, "problems": problems}
        if error is not None:
            data["error"], error.json_done = error.to_json(), True
        console.print_json(data=data)
    else:
        for line in problems:
            console.print(f"  changed: {line}", markup=False)
        if not problems:
            console.print(f"ok: {checked} files of {path} match SHA256SUMS, every manifest and archive", markup=False)
    if error is not None:
        raise error
