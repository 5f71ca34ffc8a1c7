"""Reports of builds and releases: ``report.md`` and a self-contained ``report.html``.

Per model, a table of target × precision (size, top-1 agreement, cosine, accuracy, any task metric
the manifest carries in ``validation.metrics``, latency, thresholds, verdict) and two charts:
size against accuracy, and latency per target/precision.

Charts are drawn by matplotlib and inlined as SVG. Why matplotlib: it is the most widely kept
plotting library in Python (no JavaScript runtime, nothing to vendor from npm), renders SVG
without a display, and with ``svg.fonttype = none`` keeps labels as real text, so the page stays
small, searchable and offline — the HTML loads nothing (a Content-Security-Policy forbids it).
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any, Iterable

from .errors import UsageError

# what ekit.compare gives every artifact; anything else in validation.metrics is a task metric (mAP, …)
STANDARD = ("n", "max_abs", "mean_abs", "cosine", "cosine_mean", "top1_agreement", "accuracy", "source_accuracy",
            "labelled", "nonfinite", "cosine_blank", "top1_agreement_low", "prob_tv", "prob_tv_max", "augmented")
# the task cell: what the gates read (docs/gates.md), each value with its 95 % lower bound when it has
# one, then what the judgement rests on; an older manifest without them shows every task number
SHOWN = {"detect": (("mAP50", "det_map50", "det_map50_low"), ("mAP50-95", "det_map", None),
                    ("band F1", "det_band_f1", "det_band_f1_low"), ("F1", "det_f1", None)),
         "map": (("pixel IoU", "map_iou", "map_iou_low"), ("region F1", "region_f1", "region_f1_low")),
         "segment": (("mIoU", "miou", "miou_low"),)}
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


# ---------------------------------------------------------------- rows


def row_of(manifest: dict) -> dict[str, Any]:
    """One table row from a build manifest, or from a refused artifact's record ({"target",
    "precision", "model", "refused": [why, …]}): any field may be absent (shown as "–")."""
    val = manifest.get("validation") or {}
    metrics = val.get("metrics") or {}
    size = val.get("size_bytes") or sum(f.get("size") or 0 for f in manifest.get("files") or []) or None
    task = {k: v for k, v in metrics.items()
            if k not in STANDARD and isinstance(v, (int, float)) and not isinstance(v, bool)}
    latency = (val.get("latency_ms") or {}).get("median")
    not_executed = manifest.get("not_executed") or []
    refused = manifest.get("refused") or []
    verdict = ("refused" if refused else "not executed" if not_executed
               else "pass" if val.get("passed") else "fail")
    return {"model": (manifest.get("model") or {}).get("name") or "?", "target": manifest.get("target"),
            "precision": manifest.get("precision"), "size": size, "cosine": metrics.get("cosine"),
            "agreement": metrics.get("top1_agreement"), "agreement_low": metrics.get("top1_agreement_low"),
            "prob_tv": metrics.get("prob_tv"), "metrics": metrics, "accuracy": metrics.get("accuracy"),
            "source_accuracy": metrics.get("source_accuracy"), "task": task, "latency": latency,
            "thresholds": val.get("thresholds") or {}, "gates": val.get("gates") or [], "verdict": verdict,
            "notes": refused or not_executed}


def by_model(manifests: Iterable[dict]) -> dict[str, list[dict]]:
    models: dict[str, list[dict]] = {}
    for m in manifests:
        row = row_of(m)
        models.setdefault(row["model"], []).append(row)
    return models


def _pct(v) -> str:
    return "–" if v is None else _num(100 * v if isinstance(v, (int, float)) else v, "{:.1f}%")


def _num(v, fmt="{:.5f}") -> str:
    if v is None:
        return "–"
    try:
        return fmt.format(v)
    except (TypeError, ValueError):  # not a number: shown as it is
        return str(v)


def _text(v) -> str:
    return "–" if v is None or v == "" else str(v)


def _applicable(g: dict) -> bool:
    return g.get("passed") is not None


def _gate(g: dict) -> str:
    """``min_cosine 0.9: 0.973 ✓`` (or ``✗``) from manifest.validation.gates."""
    head = f"{_text(g.get('threshold'))} {_num(g.get('limit'), '{:g}')}"
    return f"{head}: {_num(g.get('value'), '{:.4g}')} {'✓' if g.get('passed') else '✗'}"


def not_applicable(rows: list[dict]) -> str | None:
    """One note for the gates that did not apply (e.g. the detection gates of a classifier):
    ``not applicable: min_det_f1, min_det_recall (the model's task is classify, …)``."""
    names, reasons = {}, {}
    for row in rows:
        for g in row["gates"]:
            if not _applicable(g):
                names[_text(g.get("threshold"))] = True
                reasons[g.get("reason") or "not applicable"] = True
    if not names:
        return None
    return f"Not applicable here: {', '.join(names)} ({'; '.join(reasons)})."


def task_text(row: dict) -> str:
    """The task cell: ``mAP50 0.97 (≥ 0.93), …, on 54 source boxes / 64 images (35 augmented)``."""
    m = row.get("metrics") or {}
    shown = [(label, m.get(key), m.get(low) if low else None) for label, key, low in SHOWN.get(m.get("task"), ())]
    shown = [s for s in shown if s[1] is not None]
    if not shown:
        return ", ".join(f"{k} {v:.4g}" for k, v in sorted(row["task"].items())) or "–"
    text = ", ".join(f"{label} {v:.3f}" + (f" (≥ {lo:.3f})" if lo is not None else "") for label, v, lo in shown)
    if m.get("task") == "detect" and m.get("det_boxes") is not None:
        text += f"; on {m['det_boxes']} source boxes / {m.get('det_images')} images"
    elif m.get("task") == "map" and m.get("regions_source") is not None:
        text += f"; on {m['regions_source']} source regions / {m.get('n')} images"
    if m.get("augmented"):
        text += f" ({m['augmented']} augmented)"
    return text


def cells(row: dict) -> list[str]:
    acc = _pct(row["accuracy"])
    if row["accuracy"] is not None and row["source_accuracy"] is not None:
        acc += f" (source {_pct(row['source_accuracy'])})"
    agree = _pct(row["agreement"])
    if row.get("agreement_low") is not None:
        agree += f" (≥ {_pct(row['agreement_low'])})"
    if row.get("prob_tv") is not None:
        agree += f", TV {row['prob_tv']:.3f}"
    task = task_text(row)
    gates = [g for g in row["gates"] if _applicable(g)]
    skipped = len(row["gates"]) - len(gates)
    limits = ", ".join(_gate(g) for g in gates) if row["gates"] else \
        ", ".join(f"{k} {_num(v, '{:g}')}" for k, v in sorted(row["thresholds"].items())) or "–"
    if skipped:
        limits += f" (+{skipped} not applicable)"
    verdict = row["verdict"] + (f": {'; '.join(map(str, row['notes']))}" if row["notes"] else "")
    return [_text(row["target"]), _text(row["precision"]), _num(row["size"] and row["size"] / 1e6, "{:.2f} MB"),
            agree, _num(row["cosine"]), acc, task, _num(row["latency"], "{:.2f} ms"), limits, verdict]


HEADER = ["target", "precision", "size", "top-1 agreement", "cosine", "accuracy", "task metrics",
          "latency (median)", "thresholds", "verdict"]


# ---------------------------------------------------------------- charts


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


NO_CHARTS = "Charts skipped: matplotlib is not installed (pip install edgekiln[report] draws them)."


def charts_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def charts(rows: list[dict]) -> dict[str, str]:
    """{"size": svg, "latency": svg} for one model's rows (latency only where it was measured;
    only rows with a size; none without matplotlib: the page says so)."""
    rows = [r for r in rows if r["size"]]
    if not rows or not charts_available():
        return {}
    import matplotlib
    from matplotlib.figure import Figure

    found = {}
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "edgekiln", "font.size": 9}):
        labels = [f"{r['target']}/{r['precision']}" for r in rows]
        use_acc = any(r["accuracy"] is not None for r in rows)
        ys = [(r["accuracy"] if use_acc else r["agreement"]) for r in rows]
        fig = Figure(figsize=(6.4, 3.4), layout="constrained")
        ax = fig.add_subplot()
        # colour = target, marker = precision, named in the legend (points of equal size and
        # accuracy overlap: labels beside them would too)
        targets = list(dict.fromkeys(r["target"] for r in rows))
        precisions = list(dict.fromkeys(r["precision"] for r in rows))
        colour = {t: f"C{i % 10}" for i, t in enumerate(targets)}
        marker = {p: MARKERS[i % len(MARKERS)] for i, p in enumerate(precisions)}
        for label, row, y in zip(labels, rows, ys):
            if y is not None:
                ax.scatter(row["size"] / 1e6, 100 * y, s=56, color=colour[row["target"]],
                           marker=marker[row["precision"]], label=label, alpha=0.85)
        ax.legend(fontsize=7, loc="lower right", ncols=2 if len(rows) > 4 else 1)
        source = next((r["source_accuracy"] for r in rows if use_acc and r["source_accuracy"] is not None), None)
        if source is not None:
            ax.axhline(100 * source, color="gray", linestyle="--", linewidth=1)
            ax.annotate("source model", (0, 100 * source), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(4, 4), color="gray")
        ax.margins(x=0.2, y=0.2)
        ax.set_xlabel("size (MB)")
        ax.set_ylabel("top-1 accuracy (%)" if use_acc else "top-1 agreement with the source (%)")
        ax.set_title("size vs accuracy")
        ax.grid(alpha=0.3)
        found["size"] = _svg(fig)
        timed = [(label, r["latency"]) for label, r in zip(labels, rows) if r["latency"] is not None]
        if timed:
            fig = Figure(figsize=(6.4, 0.6 + 0.45 * len(timed)), layout="constrained")
            ax = fig.add_subplot()
            ax.barh([t[0] for t in timed], [t[1] for t in timed],
                    color=[colour[label.split("/")[0]] for label, _ in timed])
            ax.invert_yaxis()
            ax.set_xlabel("median latency (ms, batch 1, the build host)")
            ax.set_title("latency per target/precision")
            ax.grid(axis="x", alpha=0.3)
            found["latency"] = _svg(fig)
    return found


# ---------------------------------------------------------------- documents


def _md(text) -> str:
    """A Markdown table cell or heading: text only (manifest text can come from a step): HTML
    escaped, no line breaks, no cell separators."""
    text = " ".join(str(text).split())
    return html.escape(text, quote=False).replace("|", "\\|").replace("`", "\\`")


def markdown(title: str, models: dict[str, list[dict]]) -> str:
    lines = [f"# {_md(title)}", ""]
    for model, rows in models.items():
        lines += [f"## {_md(model)}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(_md(c) for c in cells(r)) + " |" for r in rows]
        note = not_applicable(rows)
        lines += [""] + ([_md(note), ""] if note else [])
        lines += ["Charts (size vs accuracy, latency): report.html." if charts_available() else NO_CHARTS, ""]
    return "\n".join(lines)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;
margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f3f3f3}
.pass{color:#1a7f37}.fail{color:#cf222e}figure.chart{display:inline-block;margin:0 1em 1em 0}
figure.chart svg{width:100%;max-width:40em;height:auto}"""


def page(title: str, models: dict[str, list[dict]]) -> str:
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
             f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><h1>{esc(title)}</h1>"]
    for i, (model, rows) in enumerate(models.items()):
        parts.append(f"<h2>{esc(model)}</h2><table><tr>{''.join(f'<th>{esc(h)}</th>' for h in HEADER)}</tr>")
        for row in rows:
            cls = {"pass": "pass", "fail": "fail", "refused": "fail"}.get(row["verdict"], "")
            parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells(row)[:-1])
                         + f"<td class=\"{esc(cls)}\">{esc(cells(row)[-1])}</td></tr>")
        parts.append("</table>")
        note = not_applicable(rows)
        if note:
            parts.append(f"<p>{esc(note)}</p>")
        if not charts_available():
            parts.append(f"<p>{esc(NO_CHARTS)}</p>")
            continue
        svgs = charts(rows)
        for kind in ("size", "latency"):
            if kind in svgs:
                parts.append(f"<figure class=\"chart\" id=\"chart-{kind}-{i}\">{svgs[kind]}</figure>")
        if "latency" not in svgs:
            parts.append("<p>No latency was measured for these artifacts.</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_reports(folder: Path, title: str, manifests: Iterable[dict]) -> tuple[Path, Path]:
    models = by_model(manifests)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.md").write_text(markdown(title, models))
    (folder / "report.html").write_text(page(title, models))
    return folder / "report.html", folder / "report.md"


def build_manifests(version_dir: Path) -> list[dict]:
    """The manifests of one published build version: ``<version>/<target>/<precision>/manifest.json``."""
    found = sorted(Path(version_dir).glob("*/*/manifest.json"))
    if not found:
        raise UsageError(f"{version_dir} holds no build (no <target>/<precision>/manifest.json)",
                         "give dist/<model>/<version> as published by `edgekiln build`")
    manifests = [json.loads(p.read_text()) for p in found]
    published = {(m.get("target"), m.get("precision")) for m in manifests}
    return manifests + [r for r in refused_records(version_dir) if (r["target"], r["precision"]) not in published]


REFUSED = "refused.json"  # <version>/refused.json: the artifacts of a build that were not published, and why


def record_refused(version_dir: Path, model: str, failed: dict[str, list[str]]) -> None:
    """Beside a build's published artifacts, the ones it refused (``edgekiln report`` shows them)."""
    version_dir = Path(version_dir)
    if not version_dir.is_dir():
        return
    path = version_dir / REFUSED
    try:
        known = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        known = {}
    for key, why in failed.items():
        target, _, precision = key.partition("/")
        known[key] = {"model": {"name": model}, "target": target, "precision": precision, "refused": list(why)}
    tmp = path.with_name(f".{REFUSED}.tmp")
    tmp.write_text(json.dumps(known, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)


def refused_records(version_dir: Path) -> list[dict]:
    try:
        return list(json.loads((Path(version_dir) / REFUSED).read_text()).values())
    except (OSError, ValueError, AttributeError):
        return []


def report_build(version_dir: Path, out: Path) -> tuple[Path, Path]:
    """Reports of one build version, written into ``out``."""
    version_dir = Path(version_dir).resolve()
    manifests = build_manifests(version_dir)
    return write_reports(Path(out), f"{version_dir.parent.name} {version_dir.name}", manifests)
