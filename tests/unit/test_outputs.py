"""edgekiln.outputs: the host reads a step's work/ only as plain files (review finding 2; the
real container test is tests/docker/test_boundary.py)."""

from __future__ import annotations

import os

import pytest

from edgekiln.errors import StepFailed
from edgekiln.outputs import check_outputs, copy_file


def _work(tmp_path):
    work = tmp_path / "job" / "work"
    (work / "onnx" / "fp32").mkdir(parents=True)
    (work / "onnx" / "fp32" / "model.onnx").write_bytes(b"m")
    return work


def test_plain_outputs_pass_and_copy(tmp_path):
    work = _work(tmp_path)
    check_outputs(work, "02-convert")
    copy_file(work / "onnx" / "fp32" / "model.onnx", tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx").read_bytes() == b"m"


@pytest.mark.parametrize("kind", ["file-link", "dir-link", "fifo", "work-link"])
def test_links_and_special_files_are_refused(tmp_path, kind):
    work = _work(tmp_path)
    secret = tmp_path / "host_secret"
    secret.write_text("HOST-SECRET\n")
    if kind == "file-link":
        (work / "onnx" / "fp32" / "model.onnx").unlink()
        (work / "onnx" / "fp32" / "model.onnx").symlink_to(secret)
    elif kind == "dir-link":
        (work / "results").symlink_to(tmp_path)
    elif kind == "fifo":
        os.mkfifo(work / "onnx" / "pipe")
    else:
        os.rename(work, tmp_path / "elsewhere")
        work.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StepFailed, match="refused") as info:
        check_outputs(work, "02-convert")
    assert "\n" not in info.value.line()
    if kind == "file-link":
        with pytest.raises(StepFailed, match="symbolic link"):
            copy_file(work / "onnx" / "fp32" / "model.onnx", tmp_path / "published.onnx")
        assert not (tmp_path / "published.onnx").exists() and secret.read_text() == "HOST-SECRET\n"
