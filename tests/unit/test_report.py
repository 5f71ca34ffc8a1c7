"""edgekiln/report.py: every row it can be given renders (missing figures "–"), refused artifacts are
shown with why, the gates that do not apply are one note, and a missing matplotlib skips the charts."""

import json
import sys

import pytest

from edgekiln import report


GATES = [{"threshold": "min_cosine", "limit": 0.99, "value": 0.998, "passed": True}] + [
    {"threshold": name, "limit": 0.5, "value": None, "passed": None,
     "reason": "not applicable: the model's task is classify, not the task this metric is for"}
    for name in ("min_det_f1", "min_det_recall", "min_map_iou", "min_region_f1", "min_miou")]
FULL = {"model": {"name": "m"}, "target": "onnx", "precision": "int8",
        "validation": {"passed": True, "size_bytes": 3_500_000, "latency_ms": {"median": 1.5},
                       "metrics": {"cosine": 0.998, "top1_agreement": 0.95, "accuracy": 0.7, "source_accuracy": 0.75},
                       "gates": GATES}}
EMPTY_ROWS = [
    {},  # every optional field absent
    {"model": {}, "validation": {"metrics": None, "gates": None, "latency_ms": None, "size_bytes": None},
     "files": [{"path": "x"}], "not_executed": None},
    {"model": {"name": "m"}, "target": "onnx", "precision": "fp32",
     "validation": {"gates": [{"threshold": "min_cosine"}], "thresholds": {"min_cosine": None}}},
]


@pytest.mark.parametrize("manifest", EMPTY_ROWS, ids=["nothing", "nones", "bare-gate"])
def test_every_row_renders_with_dashes(manifest, tmp_path):
    html_path, md_path = report.write_reports(tmp_path, "t 1", [FULL, manifest])
    md = md_path.read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "target" not in line]
    assert len(rows) == 2 and "–" in rows[1]
    assert "None" not in md
    assert html_path.read_text().count("<tr><td") == 2


def test_refused_artifacts_are_shown_with_why(tmp_path):
    version = tmp_path / "m" / "v1"
    (version / "onnx" / "fp32").mkdir(parents=True)
    (version / "onnx" / "fp32" / "manifest.json").write_text(json.dumps(dict(FULL, precision="fp32")))
    report.record_refused(version, "m", {"onnx/int8": ["min cosine 0.99 missed: got 0.8"]})
    _, md = report.report_build(version, tmp_path / "out")
    text = md.read_text()
    assert "| onnx | int8 |" in text and "refused: min cosine 0.99 missed: got 0.8" in text
    # published later in the same version: the refusal is no longer shown
    (version / "onnx" / "int8").mkdir()
    (version / "onnx" / "int8" / "manifest.json").write_text(json.dumps(FULL))
    _, md = report.report_build(version, tmp_path / "out2")
    assert "refused" not in md.read_text()


def test_not_applicable_gates_are_one_short_note(tmp_path):
    _, md = report.write_reports(tmp_path, "t 1", [FULL, dict(FULL, precision="fp32")])
    text = md.read_text()
    assert text.count("not the task this metric is for") == 1
    assert "min_cosine 0.99: 0.998 ✓ (+5 not applicable)" in text
    assert "Not applicable here: min_det_f1, min_det_recall, min_map_iou, min_region_f1, min_miou" in text


def test_without_matplotlib_the_charts_are_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    html_path, md_path = report.write_reports(tmp_path, "t 1", [FULL])
    page = html_path.read_text()
    assert "<svg" not in page and report.NO_CHARTS in page and report.NO_CHARTS in md_path.read_text()


def test_with_matplotlib_the_charts_are_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    html_path, _ = report.write_reports(tmp_path, "t 1", [FULL, {}])
    assert html_path.read_text().count("<svg") == 2


def test_a_detector_row_shows_the_gates_that_can_tell_and_what_they_rest_on():
    from edgekiln.release_view import headline
    from edgekiln.report import cells, row_of

    metrics = {"task": "detect", "cosine": 0.99, "det_map50": 0.971, "det_map50_low": 0.93, "det_map": 0.8,
               "det_band_f1": 0.96, "det_band_f1_low": 0.91, "det_f1": 0.9, "det_boxes": 54, "det_images": 64,
               "augmented": 35, "top1_agreement": None}
    row = row_of({"target": "onnx", "precision": "int8", "validation": {"metrics": metrics}})
    task = cells(row)[6]
    assert task == ("mAP50 0.971 (≥ 0.930), mAP50-95 0.800, band F1 0.960 (≥ 0.910), F1 0.900; "
                    "on 54 source boxes / 64 images (35 augmented)")
    assert headline(metrics) == "mAP50 0.971" and headline({}) == "-"
    cls = row_of({"validation": {"metrics": {"top1_agreement": 1.0, "top1_agreement_low": 0.839, "prob_tv": 0.0412}}})
    assert cells(cls)[3] == "100.0% (≥ 83.9%), TV 0.041"
