"""A multi-target build fans out over two Docker hosts in parallel (-j 2), chosen by the project's
per-target host map: the CLI in a subprocess, a real model, real photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgekiln.resources import data_dir
from tests.conftest import run_json

from .conftest import SECOND_HOST, STAND_IN
from .test_parity import _tiny_onnx


def test_two_targets_on_two_hosts(onnx_image, engine2, photos, tmp_path):
    # a second target on the same image: one TOML file is all a new target needs
    home = tmp_path / "home"
    for name in ("targets", "converters", "images"):
        shutil.copytree(data_dir(name), home / name)
    text = (home / "targets" / "onnx.toml").read_text().replace('name = "onnx"', 'name = "onnx-b"')
    (home / "targets" / "onnx-b.toml").write_text(text)
    (tmp_path / "edgekiln.toml").write_text(f'[docker.hosts]\n"onnx-b" = "{SECOND_HOST}"\n')
    calib, val = photos
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    result = run_json("build", "--target", "onnx,onnx-b", "--model", model, "--precision", "fp32",
                      "--val", val, "--out", tmp_path / "dist", "--runner", "docker", "-j", "2",
                      "--base-image", STAND_IN, "--config", tmp_path / "edgekiln.toml",
                      env={"EDGEKILN_HOME": str(home)}, timeout=1200)
    by_target = {a["target"]: a for a in result["artifacts"]}
    assert set(by_target) == {"onnx", "onnx-b"}
    hosts = {}
    for target, art in by_target.items():
        manifest = json.loads(Path(art["manifest"]).read_text())
        steps = {s["kind"]: s for s in manifest["steps"]}
        assert steps["convert"]["environment"]["runner"] == "docker"
        hosts[target] = steps["convert"]["environment"]["host"]
        assert art["metrics"]["top1_agreement"] == 1.0
    assert hosts["onnx-b"] == SECOND_HOST and hosts["onnx"] != SECOND_HOST
    a, b = (Path(by_target[t]["path"]) / "model.onnx" for t in ("onnx", "onnx-b"))
    assert a.read_bytes() == b.read_bytes()  # same recipe on two hosts, same artifact
