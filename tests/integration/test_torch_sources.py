"""Every PyTorch source format through the CLI: TorchScript, torch.export (.pt2), a whole pickled
module (refused unless --trust-pickle), a state dict with a user's --arch file, and an input spec
from a sidecar file. The models are small real CNNs made in the torch environment."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from edgekiln import errors
from edgekiln.runners.local import LocalRunner
from tests.conftest import run_cli, run_json

pytestmark = pytest.mark.integration

ARCH = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(16, classes)

        def forward(self, x):
            return self.head(self.body(x))

    def build(classes=10):
        torch.manual_seed(0)
        return Net(classes).eval()
''')

MAKE = textwrap.dedent('''
    import sys, torch
    sys.path.insert(0, sys.argv[1])
    from tinynet import build
    out = sys.argv[1]
    net = build()
    x = torch.rand(1, 3, 64, 64)
    torch.jit.save(torch.jit.trace(net, x), f"{out}/scripted.pt")
    torch.export.save(torch.export.export(net, (x,)), f"{out}/exported.pt2")
    torch.save(net, f"{out}/whole.pt")
    torch.save(net.state_dict(), f"{out}/weights.pth")
''')


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("torch-models")
    (folder / "tinynet.py").write_text(ARCH)
    python = LocalRunner().prepare("torch").ref
    subprocess.run([python, "-c", MAKE, folder], check=True, capture_output=True, timeout=600)
    return folder


@pytest.mark.parametrize("name", ["scripted.pt", "exported.pt2"])
def test_graph_formats(models, photos, tmp_path, name):
    _, val = photos
    result = run_json("build", "--model", models / name, "--input-shape", "1,3,64,64", "--val", val,
                      "--out", tmp_path, "--runner", "local")
    (fp32,) = result["artifacts"]
    assert fp32["metrics"]["top1_agreement"] == 1.0 and fp32["metrics"]["cosine"] > 0.99999
    manifest = json.loads(Path(fp32["manifest"]).read_text())
    assert manifest["model"]["format"] == {"scripted.pt": "torchscript", "exported.pt2": "torch_export"}[name]
    assert manifest["io"]["inputs"][0]["shape"] == [1, 3, 64, 64]


def test_pickled_module_needs_trust(models, photos, tmp_path):
    _, val = photos
    proc = run_cli("build", "--model", models / "whole.pt", "--input-shape", "1,3,64,64", "--val", val,
                   "--out", tmp_path, "--runner", "local", check=errors.UsageError.exit_code)
    assert "--trust-model" in proc.stderr and "Traceback" not in proc.stderr
    result = run_json("build", "--model", models / "whole.pt", "--input-shape", "1,3,64,64", "--val", val,
                      "--trust-pickle", "--arch", f"{models / 'tinynet.py'}:build", "--out", tmp_path,
                      "--runner", "local")
    assert result["artifacts"][0]["metrics"]["top1_agreement"] == 1.0


def test_state_dict_with_arch_file_and_sidecar_spec(models, photos, tmp_path):
    _, val = photos
    (models / "weights.pth.edgekiln.toml").write_text(
        '[input]\nshape = [1, 3, 64, 64]\nmean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n')
    result = run_json("build", "--model", models / "weights.pth", "--arch", f"{models / 'tinynet.py'}:build",
                      "--precision", "fp32,int8", "--calib", val, "--out", tmp_path, "--runner", "local")
    fp32 = result["artifacts"][0]
    manifest = json.loads(Path(fp32["manifest"]).read_text())
    assert manifest["input_spec"]["shape"] == [1, 3, 64, 64] and manifest["input_spec"]["std"] == [0.25] * 3
    assert manifest["data"]["arch"]["sha256"]
    assert (Path(fp32["path"]) / "build" / "steps").is_dir()
    wrong = run_cli("build", "--model", models / "weights.pth", "--arch", "mobilenet_v2",
                    "--input-shape", "1,3,64,64", "--val", val, "--out", tmp_path, "--runner", "local")
    assert wrong.returncode == errors.InvalidModel.exit_code, wrong.stderr
    assert "Traceback" not in wrong.stderr and "key" in wrong.stderr.splitlines()[-1].lower()
