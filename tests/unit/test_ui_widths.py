"""The build summary and `edgekiln targets` read well in an 80- and a 100-column terminal: no cell
cut short ("…"), no line wider than the terminal, the reasons below the table."""

import io
from pathlib import Path

import pytest
from rich.console import Console

from edgekiln.build import ArtifactResult, BuildResult
from edgekiln.ui import summary_notes, summary_table
from tests.conftest import run_cli, run_json


def art(target, precision, status, metrics, latency=None, recovery=None):
    manifest = {"validation": {"metrics": metrics, "size_bytes": 13_350_000, "latency_ms": latency},
                "recovery": recovery}
    return ArtifactResult(target, precision, status, Path("/dist/m/v") / target / precision, manifest)


def rendered(renderable, width: int) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, force_terminal=False, highlight=False).print(renderable)
    return buf.getvalue()


WIDE = BuildResult("mobilenet_v2", "1a2b3c4d5e6f", [
    art("executorch", "int8x16", "cached", {"top1_agreement": 0.95, "cosine": 0.99998, "accuracy": 0.714,
                                            "prob_tv": 0.0412, "top1_agreement_low": 0.764, "n": 20},
        {"median": 12.345, "noisy": True}),
    art("jetson", "fp16", "deferred: bundle ready", {"top1_agreement": 1.0, "cosine": 0.99999, "accuracy": 0.75}),
    art("rpi", "int8", "built", {"top1_agreement": 0.9, "cosine": 0.987, "accuracy": 0.7},
        {"median": 3.21}, recovery={"float_layers": [{}, {}, {}]}),
], 123.4, "docker")

DETECT = BuildResult("yolov5s", "0123456789ab", [
    art("x86-gpu", "int8", "deferred: bundle ready",
        {"task": "detect", "cosine": 0.99, "det_f1": 0.857, "det_recall": 0.75, "det_map50": 0.857,
         "det_band_f1": 0.912, "det_band_f1_low": 0.834, "det_boxes": 54, "det_band_ignored": 24,
         "det_band": [0.2, 0.3], "det_images": 64, "augmented": 35}, {"median": 41.5}),
    art("executorch", "fp32", "built", {"task": "detect", "cosine": 1.0, "det_f1": 1.0, "det_recall": 1.0,
                                        "det_map50": 1.0, "det_band_f1": 1.0, "det_band_f1_low": 0.921},
        {"median": 90.12}),
], 300.0, "local")


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize("result", [WIDE, DETECT], ids=["classify", "detect"])
def test_summary_fits_the_terminal(result, width):
    text = rendered(summary_table(result), width)
    assert "…" not in text, text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width, text
    for a in result.artifacts:
        assert a.target in text
    if result is DETECT:  # the task's metrics have a column each; no empty agreement/accuracy columns
        assert "mAP50" in text and "F1" in text and "low" in text and "0.834" in text
        assert "agree" not in text and "recall" not in text
    else:
        assert "deferred" in text and "12.35 ms*" in text and "int8 (3" in text


def test_summary_notes_say_what_the_cells_leave_out():
    det = "\n".join(summary_notes(DETECT))
    assert "x86-gpu/int8: judged on 54 source boxes (24 in the band [0.2, 0.3) count neither way in F1; " \
           "low: its 95 % bound) on 64 images, 35 of them augmented variants" in det
    notes = "\n".join(summary_notes(WIDE))
    assert "executorch/int8x16: judged on 20 images, top-1 agreement >= 76.4% (95 % bound), probabilities " \
           "moved 0.041 (mean total variation)" in notes
    assert "noisy" in notes and "executorch/int8x16" in notes
    assert "rpi/int8: int8 (3 layers float)" in notes


@pytest.mark.parametrize("width", [80, 100])
def test_targets_fit_the_terminal(width):
    text = run_cli("targets", check=0, env={"COLUMNS": str(width)}).stdout
    assert "…" not in text, text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width, text
    flat = " ".join(text.split())
    for row in run_json("targets"):  # every description whole; every "no" has its reason below
        assert " ".join(row["description"].split()) in flat
        if not row["runs_here"]:
            assert " ".join(row["why"].split()) in flat


def test_gates_that_do_not_apply_are_one_line_per_reason():
    from edgekiln.ui import task_lines

    gates = [{"threshold": "min_det_f1", "passed": None, "reason": "not computed"},
             {"threshold": "min_miou", "passed": None, "reason": "not computed"}]
    arts = [ArtifactResult("onnx", p, "built", Path("/x"), {"validation": {"metrics": {"task": "raw"}, "gates": gates}})
            for p in ("fp32", "int8")]
    lines = task_lines(BuildResult("m", "v", arts, 1.0, "local"))
    assert lines[1:] == ["onnx/fp32, onnx/int8: checks not possible for a raw model: min_det_f1, min_miou "
                     "(only the tensors were compared)"]
