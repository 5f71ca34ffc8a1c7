"""OpenVINO IR bytes do not depend on how many nodes the process made before (ekit_ov.save_stable),
for real in the openvino environment: the same model built after 0 and after 7 other nodes."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import ROOT
from tests.integration.test_intel_templates import _env_python

pytestmark = pytest.mark.integration

SCRIPT = r'''
import hashlib, json
import numpy as np
import openvino as ov
from openvino import opset13 as ops
import ekit_ov

def build(extra):
    for _ in range(extra):  # nodes made first move OpenVINO's global name counter on
        ops.constant(np.zeros(1, np.float32))
    x = ops.parameter([1, 3, 8, 8], np.float32, name="input")
    w = ops.constant(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32))
    y = ops.relu(ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1]))
    y.output(0).get_tensor().set_names({"scores"})
    return ov.Model([y], [x], "tiny")

def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()

out = {}
for extra in (0, 7):
    ov.save_model(build(extra), f"plain{extra}.xml", compress_to_fp16=True)
    ekit_ov.save_stable(ov, build(extra), f"stable{extra}.xml", compress_to_fp16=True)
    out[extra] = {k: [digest(f"{k}{extra}.xml"), digest(f"{k}{extra}.bin")] for k in ("plain", "stable")}
model = ov.Core().read_model("stable7.xml")
out["outputs"] = [o.get_any_name() for o in model.outputs]
out["runs"] = float(ov.Core().compile_model(model, "CPU")(np.ones((1, 3, 8, 8), np.float32))[0].sum())
print(json.dumps(out))
'''


def test_save_stable_gives_the_same_ir_whatever_the_counter(tmp_path):
    from edgekiln.helpers import copy_helpers

    copy_helpers(ROOT / "converters", tmp_path, ["import ekit_ov"])  # ekit_ov and what it imports, flat
    (tmp_path / "t.py").write_text(SCRIPT)
    proc = subprocess.run([_env_python("openvino", "EDGEKILN_OV_PYTHON"), "t.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["0"]["plain"][0] != out["7"]["plain"][0], "OpenVINO's names no longer depend on the counter"
    assert out["0"]["stable"] == out["7"]["stable"]
    assert out["0"]["stable"][1] == out["0"]["plain"][1], "the weights must not change"
    assert out["outputs"] == ["scores"] and out["runs"] != 0.0
