"""The installed program works outside the checkout: the wheel carries targets/, converters/ and
images/ inside the package, and `edgekiln` finds them there."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_wheel_ships_the_data_folders_and_runs_outside_the_checkout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "whl", ROOT],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "whl").glob("edgekiln-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("edgekiln/_data/targets/onnx.toml", "edgekiln/_data/targets/_sources.toml",
                   "edgekiln/_data/converters/ekit/__init__.py", "edgekiln/_data/converters/torch/source.py.jinja",
                   "edgekiln/_data/converters/onnx/ekit_onnx.py", "edgekiln/_data/images/_base.Dockerfile.jinja",
                   "edgekiln/_data/converters/zoo/mobilenet_v2.py", "edgekiln/_data/images/onnx/requirements.txt",
                   "edgekiln/_data/images/onnx/Dockerfile.jinja", "edgekiln/_data/images/_bases.toml"):
        assert needed in names, needed
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    subprocess.run([venv / "bin" / "pip", "install", "-q", wheel], check=True, capture_output=True, timeout=600)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    proc = subprocess.run([venv / "bin" / "edgekiln", "targets", "--json"], cwd=outside, capture_output=True,
                          text=True, timeout=120, check=True)
    assert {"onnx", "intel", "rpi"} <= {t["name"] for t in json.loads(proc.stdout)}
    model = outside / "m.onnx"
    model.write_bytes(b"\x08\x07")
    proc = subprocess.run([venv / "bin" / "edgekiln", "build", "--model", model, "--dry-run", "--json"],
                          cwd=outside, capture_output=True, text=True, timeout=120, check=True)
    plan = json.loads(proc.stdout)
    assert [s["kind"] for s in plan["steps"]] == ["source", "convert", "validate"]
    assert all(s["command"] and "steps/" in s["command"] for s in plan["steps"])
    assert not list((outside / "dist").glob(".edgekiln/jobs/*"))  # a dry run leaves no job folder
