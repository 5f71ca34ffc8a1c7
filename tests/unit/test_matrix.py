"""The release matrix file: schema, entries, per-entry thresholds, and one clear line per mistake
(through the CLI in a subprocess: exit code of the error's kind, file:line, no traceback)."""

from __future__ import annotations

import shutil
import textwrap

import pytest

from edgekiln import errors
from edgekiln.matrix import line_of, load_matrix
from edgekiln.targets import all_targets
from tests.conftest import ROOT, run_cli

GOOD = """\
[release]
name = "demo"
version = "1.0.0"
date = 2026-11-28

[targets]
onnx = ["fp32", "int8"]

[models.net]
path = "net.onnx"
input = { shape = [1, 3, 32, 32] }
calib = "photos"
val = "photos"

[models.net.thresholds]
"onnx.int8.min_cosine" = 0.5
"min_top1_agreement" = 0.7

[models.other]
path = "net.onnx"
targets = { onnx = ["fp32"], rpi = ["fp32"] }
"""


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "net.onnx").write_bytes(b"\x08\x07not parsed here")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"jpg")
    return tmp_path


def write(folder, text):
    path = folder / "release.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_entries_thresholds_and_requests(folder):
    m = load_matrix(write(folder, GOOD))
    assert (m.folder, m.date.isoformat()) == ("demo-1.0.0", "2026-11-28")
    assert [e.key for e in m.entries] == ["net/onnx/fp32", "net/onnx/int8", "other/onnx/fp32", "other/rpi/fp32"]
    net = m.models[0]
    assert net.calib == folder / "photos" and net.input.shape == (1, 3, 32, 32)
    assert net.thresholds[("onnx", "int8")] == {"min_cosine": 0.5, "min_top1_agreement": 0.7}
    assert net.thresholds[("onnx", "fp32")] == {"min_top1_agreement": 0.7}
    requests = m.requests(folder / "dist")
    assert [(r.model_name, r.targets, r.precisions) for r, _ in requests] == [
        ("net", ("onnx",), ("fp32", "int8")), ("other", ("onnx",), ("fp32",)), ("other", ("rpi",), ("fp32",))]
    assert requests[0][0].thresholds == {"int8.min_cosine": 0.5, "int8.min_top1_agreement": 0.7,
                                         "fp32.min_top1_agreement": 0.7}
    assert m.source_date_epoch() == 1795824000  # 2026-11-28T00:00Z


def test_source_date_epoch_wins(folder, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    assert load_matrix(write(folder, GOOD)).source_date_epoch() == 1234


def test_line_of_finds_keys_tables_and_quoted_keys():
    assert line_of(GOOD, ("models", "net", "calib")) == 12
    assert line_of(GOOD, ("models", "net", "thresholds", "onnx.int8.min_cosine")) == 16
    assert line_of(GOOD, ("models", "other", "targets", "rpi")) == 21
    assert line_of(GOOD, ("targets", "onnx")) == 7


def test_the_example_is_valid_for_the_targets_that_exist(tmp_path, photos, weights):
    """examples/release.toml with the demo data in examples/data (as the README says to get it)."""
    calib, val = photos
    data = tmp_path / "data"
    data.mkdir()
    (data / weights.name).symlink_to(weights)
    (data / "photos").symlink_to(calib)
    (data / "photos-mirrored").symlink_to(val)
    shutil.copy(ROOT / "examples" / "release.toml", tmp_path / "release.toml")
    m = load_matrix(tmp_path / "release.toml")
    assert {"onnx", "intel", "rpi"} <= set(m.targets) <= set(all_targets())
    assert all(e.precision in all_targets()[e.target].precisions for e in m.entries)


BAD = [
    ("unknown key", GOOD.replace('calib = "photos"', 'calbi = "photos"'), errors.UsageError,
     ":12: unknown key 'models.net.calbi'"),
    ("unknown top key", GOOD + '\n[extra]\nx = 1\n', errors.UsageError, "unknown key 'extra'"),
    ("missing model file", GOOD.replace('path = "net.onnx"\ninput', 'path = "gone.onnx"\ninput'),
     errors.ModelNotFound, ":10: model file"),
    ("no model at all", GOOD.split("[models.net]")[0], errors.ModelNotFound, "no model"),
    ("duplicate precision", GOOD.replace('onnx = ["fp32", "int8"]', 'onnx = ["fp32", "int8", "fp32"]'),
     errors.UsageError, ":7: duplicate entry net/onnx/fp32"),
    ("duplicate model name", GOOD.replace("[models.other]", "[models.\"net \"]"), errors.UsageError,
     "duplicate entry"),
    ("precision not offered", GOOD.replace('rpi = ["fp32"]', 'rpi = ["bf16"]'), errors.TargetError,
     ":21: target rpi does not offer precision 'bf16'"),
    ("unknown target", GOOD.replace('onnx = ["fp32", "int8"]', 'toaster = ["fp32"]'), errors.TargetError,
     ":7: unknown target 'toaster'"),
    ("threshold for no entry", GOOD.replace('"onnx.int8.min_cosine"', '"rpi.int8.min_cosine"'), errors.UsageError,
     "names no entry"),
    ("bad toml", GOOD.replace('version = "1.0.0"', "version = "), errors.UsageError, "line 3"),
    ("no date", GOOD.replace("date = 2026-11-28\n", ""), errors.UsageError, "release.date is missing"),
    ("missing data folder", GOOD.replace('val = "photos"', 'val = "nope"'), errors.DataError, ":13: models.net.val"),
]


@pytest.mark.parametrize("text,kind,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_release_files_through_the_cli(folder, text, kind, match):
    path = write(folder, text)
    proc = run_cli("release", path, "--out", folder / "rel", "--dist", folder / "dist", "--runner", "local",
                   check=kind.exit_code)
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error:") and match in err, err
    assert not (folder / "rel").exists() and not (folder / "dist").exists()


def test_options_per_target(folder):
    text = GOOD + '\n[options.rpi]\nthreads = 2\n\n[models.net.options.onnx]\ncalibration_method = "minmax"\n'
    m = load_matrix(write(folder, text))
    assert m.models[0].options == {"onnx": {"calibration_method": "minmax"}}  # net has no rpi entry
    assert m.models[1].options == {"rpi": {"threads": 2}}
    with pytest.raises(errors.UsageError, match=r":\d+: unknown key 'models.net.options.onnx.nope'"):
        load_matrix(write(folder, text.replace("calibration_method", "nope")))
