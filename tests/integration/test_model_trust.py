"""Model files that are programs (docs/model-trust.md): without --trust-model nothing in them runs.

Review finding 1: a Keras .h5 with a Lambda layer was refused by Keras 3's safe mode, then loaded
by tf_keras, which ran its bytecode (exit 0, artifact published, payload ran). A SavedModel's
graph can write files (tf.io.write_file) when its signature is called.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from edgekiln import errors
from tests.conftest import run_cli, run_json

FIXTURES = Path(__file__).with_name("trust_fixtures.py")


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    if os.environ.get("EDGEKILN_TFLITE_PYTHON"):
        tfpy = os.environ["EDGEKILN_TFLITE_PYTHON"]
    else:
        from edgekiln.runners.local import LocalRunner

        tfpy = LocalRunner().prepare("tflite").ref
    out = tmp_path_factory.mktemp("crafted")
    marker = out / "PWNED"
    proc = subprocess.run([tfpy, FIXTURES, out, marker], check=True, capture_output=True, text=True, timeout=600)
    ops = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not marker.exists()
    return out, marker, ops


def test_keras_lambda_runs_only_with_trust_model(crafted, tmp_path):
    out, marker, _ = crafted
    proc = run_cli("build", "--model", out / "evil.h5", "--target", "rpi", "--precision", "fp32",
                   "--runner", "local", "--out", tmp_path, check=errors.UsageError.exit_code)
    assert not marker.exists(), "the Lambda's payload ran without --trust-model"
    line = proc.stderr.strip().splitlines()[-1]
    assert "Lambda" in line and "--trust-model" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "evil").exists()  # nothing published
    # the user says the file may run code: it builds (and the payload runs, as asked)
    result = run_json("build", "--model", out / "evil.h5", "--target", "rpi", "--precision", "fp32",
                      "--runner", "local", "--out", tmp_path, "--trust-model")
    assert result["artifacts"][0]["status"] == "built"
    assert marker.read_text() == "ran"
    marker.unlink()


def test_saved_model_that_writes_files_needs_trust_model(crafted, tmp_path):
    out, marker, ops = crafted
    assert ops == {"evil_savedmodel": ["WriteFile"], "good_savedmodel": []}  # a plain export is not flagged
    proc = run_cli("build", "--model", out / "evil_savedmodel", "--target", "rpi", "--precision", "fp32",
                   "--runner", "local", "--out", tmp_path, check=errors.UsageError.exit_code)
    assert not marker.exists()
    assert "WriteFile" in proc.stderr and "--trust-model" in proc.stderr and "Traceback" not in proc.stderr


def test_trust_model_in_release_toml_is_a_boolean(tmp_path):
    """review finding 7: ``trust_pickle = "no"`` was read with bool() and switched pickles on."""
    from edgekiln.matrix import load_matrix

    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    for key in ("trust_pickle", "trust_model"):
        (tmp_path / "release.toml").write_text(
            f'[release]\nname = "r"\nversion = "1"\ndate = 2026-11-28\n[targets]\nonnx = ["fp32"]\n'
            f'[models.m]\npath = "m.onnx"\n{key} = "no"\n')
        with pytest.raises(errors.UsageError, match=f"{key} must be true or false"):
            load_matrix(tmp_path / "release.toml")


TORCHSCRIPT = r'''
import sys, torch
class Reads(torch.nn.Module):
    def forward(self, x):
        return x + torch.from_file("/etc/hostname", size=1, dtype=torch.uint8).float().sum() * 0
class Plain(torch.nn.Module):
    def forward(self, x):
        return x * 2
torch.jit.save(torch.jit.script(Reads()), sys.argv[1])
torch.jit.save(torch.jit.script(Plain()), sys.argv[2])
'''


def test_torchscript_that_reads_files_needs_trust_model(tmp_path):
    """TorchScript runs no Python, but aten::from_file reads any file: such a program is refused
    (before anything runs) without --trust-model; a plain one is not."""
    from edgekiln.runners.local import LocalRunner

    torchpy = os.environ.get("EDGEKILN_TORCH_PYTHON") or LocalRunner().prepare("torch").ref
    script = tmp_path / "make.py"
    script.write_text(TORCHSCRIPT)
    subprocess.run([torchpy, script, tmp_path / "reads.pt", tmp_path / "plain.pt"],
                   check=True, capture_output=True, timeout=600)
    args = ("--input-shape", "1,3,8,8", "--runner", "local", "--out", tmp_path / "dist", "--dry-run")
    proc = run_cli("build", "--model", tmp_path / "reads.pt", *args, check=errors.UsageError.exit_code)
    assert "from_file" in proc.stderr and "--trust-model" in proc.stderr and proc.stderr.count("\n") == 1
    run_cli("build", "--model", tmp_path / "reads.pt", *args, "--trust-model", check=0)
    run_cli("build", "--model", tmp_path / "plain.pt", *args, check=0)
