"""What the user sees: per-step progress with elapsed time, warnings, and the summary table.

Progress goes to stderr (rich live display on a terminal, plain lines otherwise), so stdout stays
clean for ``--json``.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Only edgekiln's own warnings (ekit.warn prints "warning: ...") reach the screen; pip's index
# warnings, TensorFlow's absl lines and other tools' noise stay in the step's log.
WARN_PREFIX = "warning: "


class PlainUI:
    """Line-based progress (non-terminals, CI logs, ``--json``)."""

    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.warnings: list[str] = []
        self._lock = threading.Lock()
        self._start: dict[str, float] = {}
        self._labels: dict[str, str] = {}

    def stage(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]·[/] {escape(text)}")

    def step_start(self, key: str, label: str) -> None:
        self._start[key] = time.monotonic()
        self._labels[key] = label
        if not self.quiet:
            self.console.print(f"[cyan]▶[/] {escape(label)}")

    def step_line(self, key: str, line: str) -> None:
        if line.startswith(WARN_PREFIX):
            text = line[len(WARN_PREFIX):].strip()
            with self._lock:
                if text in self.warnings:
                    return  # each warning once per build
                self.warnings.append(text)
            self.warn(text, key)

    def step_done(self, key: str, seconds: float, text: str | None = None) -> None:
        if not self.quiet:
            self.console.print(f"[green]✓[/] {escape(text or self._labels.get(key, key))} [dim]{seconds:.1f}s[/]")

    def warn(self, text: str, key: str = "") -> None:
        self.console.print(f"[yellow]![/] {escape(key + ': ' if key else '')}{escape(text)}")

    def close(self) -> None:
        pass


class RichUI(PlainUI):
    """A live display: one line per step with a spinner, its last log line and elapsed time."""

    def __init__(self, console: Console | None = None):
        super().__init__(console)
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), TextColumn("[dim]{task.fields[last]}"),
                                 console=self.console, transient=False)
        self.tasks: dict[str, Any] = {}
        self.progress.start()

    def stage(self, text: str) -> None:
        self.progress.console.print(f"[dim]·[/] {escape(text)}")

    def step_start(self, key: str, label: str) -> None:
        self.tasks[key] = self.progress.add_task(label, total=1, last="")

    def step_line(self, key: str, line: str) -> None:
        super().step_line(key, line)
        if key in self.tasks:
            self.progress.update(self.tasks[key], last=line.strip()[:70])

    def step_done(self, key: str, seconds: float, text: str | None = None) -> None:
        if key in self.tasks:
            update = {"description": text} if text else {}
            self.progress.update(self.tasks[key], completed=1, last=f"done in {seconds:.1f}s", **update)

    def warn(self, text: str, key: str = "") -> None:
        self.progress.console.print(f"[yellow]![/] {escape(key + ': ' if key else '')}{escape(text)}")

    def close(self) -> None:
        self.progress.stop()


def make_ui(json_mode: bool) -> PlainUI:
    if not json_mode and sys.stderr.isatty():
        return RichUI()
    return PlainUI(quiet=False)


def fmt_size(size: int | None) -> str:
    if size is None:
        return "-"
    return f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def fmt(value, spec: str = ".4f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


SUMMARY_METRICS = (("agree", "top1_agreement", ".1%"), ("cosine", "cosine", ".5f"), ("accuracy", "accuracy", ".1%"))
# the gates that can tell (docs/gates.md): the value, then its lower bound; det_f1/det_recall stay
# in the report (informational), the table shows what the int8 gates read
# (the note under the table says what they rest on: "F1" is the ambiguity-band F1, "low" its bound)
TASK_COLUMNS = {"detect": (("mAP50", "det_map50"), ("F1", "det_band_f1"), ("low", "det_band_f1_low")),
                "map": (("IoU", "map_iou"), ("region F1", "region_f1"), ("low", "region_f1_low")),
                "segment": (("mIoU", "miou"),)}
STATUS_CELL = {"deferred: bundle ready": "deferred"}  # the reason and the next command go below the table


def compact_table(title: str | None = None) -> Table:
    """A table that fits 80 columns: no outer edge, one space between columns."""
    from rich import box

    return Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)


def summary_table(result) -> Table:
    """One row per artifact, short cells only (readable at 80 columns): a metric column none of the
    artifacts has is left out; task metrics get a column each (named in the task line below);
    the reasons (deferred, noisy latency, not applicable) are lines below the table."""
    table = compact_table(f"{result.model} {result.version} ({result.runner} runner, {result.seconds:.1f}s)")
    vals = [a.manifest.get("validation", {}) for a in result.artifacts]
    metrics = [v.get("metrics") or {} for v in vals]
    tasks = list(dict.fromkeys(m.get("task") for m in metrics if m.get("task") in TASK_COLUMNS))
    columns = [(label, key, spec) for label, key, spec in SUMMARY_METRICS]
    columns += [(label, key, ".3f") for task in tasks for label, key in TASK_COLUMNS[task]]
    columns = [c for c in columns if any(m.get(c[1]) is not None for m in metrics)]
    if all(m.get("task") in TASK_COLUMNS for m in metrics):  # a detector's cosine says little: its task columns do
        columns = [c for c in columns if c[1] != "cosine"]
    for col in ("target", "precision", "status", "size", *(c[0] for c in columns), "latency"):
        table.add_column(col, no_wrap=col not in ("precision", "status"))  # those two wrap at a word
    for art, val, m in zip(result.artifacts, vals, metrics):
        lat = val.get("latency_ms") or {}
        table.add_row(art.target, precision_text(art.precision, art.manifest, short=True),
                      STATUS_CELL.get(art.status, art.status), fmt_size(val.get("size_bytes")),
                      *(fmt(m.get(key), spec) for _, key, spec in columns),
                      fmt(lat.get("median"), ".2f", " ms*" if lat.get("noisy") else " ms"))
    return table


def rests_on(metrics: dict) -> str | None:
    """What a task judgement rests on: ``54 source boxes (24 in the band [0.2, 0.3)) on 64 images,
    35 of them augmented`` / ``20 images, top-1 agreement >= 83.9 % (95 % bound), probabilities
    moved 0.041``; None when the metrics say nothing of it."""
    m = metrics or {}
    aug = f", {m['augmented']} of them augmented variants" if m.get("augmented") else ""
    if m.get("task") == "detect" and m.get("det_boxes") is not None:
        band = m.get("det_band") or ["?", "?"]
        return (f"{m['det_boxes']} source boxes ({m.get('det_band_ignored')} in the band "
                f"[{band[0]:g}, {band[1]:g}) count neither way in F1; low: its 95 % bound) on "
                f"{m.get('det_images')} images{aug}")
    if m.get("task") == "map" and m.get("regions_source") is not None:
        return f"{m['regions_source']} source regions on {m.get('n')} images{aug}"
    if m.get("top1_agreement_low") is not None:
        return (f"{m.get('n')} images, top-1 agreement >= {m['top1_agreement_low']:.1%} (95 % bound), "
                f"probabilities moved {fmt(m.get('prob_tv'), '.3f')} (mean total variation)")
    return None


def summary_notes(result) -> list[str]:
    """What the table's short cells leave out: what the gates rest on, noisy latencies, recovered
    layers."""
    lines, said = [], {}
    for a in result.artifacts:
        text = rests_on(a.manifest.get("validation", {}).get("metrics") or {})
        if text:
            said.setdefault(text, []).append(f"{a.target}/{a.precision}")
    lines += [f"{', '.join(keys)}: judged on {text}" for text, keys in said.items()]
    noisy = [f"{a.target}/{a.precision}" for a in result.artifacts
             if (a.manifest.get("validation", {}).get("latency_ms") or {}).get("noisy")]
    if noisy:
        lines.append(f"latency marked *: noisy (a wide p10-p90 spread) for {', '.join(noisy)}")
    for a in result.artifacts:
        if (a.manifest.get("recovery") or {}).get("float_layers"):
            lines.append(f"{a.target}/{a.precision}: {precision_text(a.precision, a.manifest)} (kept by --recover; "
                         f"the manifest's recovery lists them)")
    return lines


def precision_text(precision: str, manifest: dict, short: bool = False) -> str:
    """"int8", or "int8 (3 layers float)" for a model --recover left mixed — never plain "int8"
    (``short``: "int8 (3 float)", the table's cell)."""
    n = len((manifest.get("recovery") or {}).get("float_layers") or [])
    if not n:
        return precision
    return f"{precision} ({n} float)" if short else f"{precision} ({n} layer{'s' if n != 1 else ''} float)"


def task_lines(result) -> list[str]:
    """Per artifact: what the outputs were taken to be and why, and the thresholds that could
    not be computed for this model (never a silent '-')."""
    lines, said, skips = [], set(), {}
    for art in result.artifacts:
        val = art.manifest.get("validation", {})
        metrics = val.get("metrics") or {}
        if metrics.get("task") and metrics.get("task_reason") not in said:
            said.add(metrics.get("task_reason"))
            lines.append(f"task {metrics['task']}" + (f"/{metrics['head']}" if metrics.get("head") else "")
                         + f": {metrics.get('task_reason')}")
        skipped = [g["threshold"] for g in val.get("gates") or []
                   if g.get("passed") is None and "not the task this metric is for" not in (g.get("reason") or "")]
        if skipped and metrics.get("task") == "raw":
            why = f"checks not possible for a raw model: {', '.join(skipped)} (only the tensors were compared)"
        elif skipped:
            why = f"not applicable here: {', '.join(skipped)}"
        else:
            continue
        skips.setdefault(why, []).append(f"{art.target}/{art.precision}")
    return lines + [f"{', '.join(keys)}: {why}" for why, keys in skips.items()]  # one line per reason


def where_lines(result) -> list[str]:
    """Per artifact: the CPU class an int8 is declared for and where it was validated, and every
    validation elsewhere (on Arm with --platform linux/arm64, on the declared x86 class under QEMU):
    where it ran, its numbers, the difference to this machine's outputs; an emulated latency is
    labelled and the native figure stays beside it (the table's latency column is always the native one)."""
    from .isa import cpu_sentence

    lines = []
    for art in result.artifacts:
        if art.manifest.get("cpu"):
            lines.append(f"{art.target}/{art.precision}: {cpu_sentence(art.manifest['cpu'])}")
        for key in ("arm_validation", "cpu_validation"):
            if art.manifest.get(key):
                lines.append(_elsewhere_line(art, art.manifest[key]))
    return lines


def _elsewhere_line(art, other: dict) -> str:
    """One validation of ``art`` elsewhere, against this machine's."""
    from .emulation import where_text

    m, vs, lat = other.get("metrics") or {}, other.get("vs_native") or {}, other.get("latency_ms") or {}
    here = art.manifest.get("validation", {}).get("where")
    same = ("identical outputs" if vs.get("identical")
            else f"max |diff| {fmt(vs.get('max_abs'), '.3g')}, top-1 agreement {fmt(vs.get('top1_agreement'), '.1%')}")
    latency = fmt(lat.get("median"), ".1f", " ms")
    if lat.get("label"):
        latency += f" ({lat['label']})"
    native = fmt((other.get("native_latency_ms") or {}).get("median"), ".2f", " ms")
    runtime = other.get("runtime") or {}
    return (f"{art.target}/{art.precision}: validated on {where_text(here)} and on {where_text(other.get('where'))} "
            f"[{runtime.get('name')} {runtime.get('version')}]: agreement {fmt(m.get('top1_agreement'), '.1%')}, "
            f"cosine {fmt(m.get('cosine'), '.5f')}; vs native: {same}; latency {latency}, native: {native}")


def feed_lines(result) -> list[str]:
    """How to feed each artifact (one line when they are all fed the same way)."""
    feeds = {}
    for art in result.artifacts:
        feed = art.manifest.get("feed") or {}
        if feed:
            feeds[f"{art.target}/{art.precision}"] = feed.get("preprocessing") or str(feed)
    if len(set(feeds.values())) == 1 and len(feeds) > 1:
        return [f"input of every artifact: {next(iter(feeds.values()))}"]
    return [f"{key} input: {text}" for key, text in feeds.items()]


def result_json(result) -> dict[str, Any]:
    return {
        "model": result.model, "version": result.version, "runner": result.runner,
        "seconds": round(result.seconds, 3),
        "artifacts": [{"target": a.target, "precision": a.precision, "status": a.status,
                       "failures": a.failures or None,
                       "path": str(a.path), "manifest": str(a.path / "manifest.json"),
                       "size_bytes": a.manifest.get("validation", {}).get("size_bytes"),
                       "metrics": a.manifest.get("validation", {}).get("metrics"),
                       "gates": a.manifest.get("validation", {}).get("gates"),
                       "task": a.manifest.get("task"),
                       "latency_ms": a.manifest.get("validation", {}).get("latency_ms"),
                       "feed": a.manifest.get("feed"),
                       "summary": precision_text(a.precision, a.manifest),
                       "recovery": a.manifest.get("recovery"),
                       "validated_on": a.manifest.get("validation", {}).get("where"),
                       "arm_validation": a.manifest.get("arm_validation")}
                      for a in result.artifacts],
    }
