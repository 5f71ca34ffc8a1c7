"""The intel target's templates render with edgekiln's renderer (StrictUndefined, tojson only) into
valid Python, and hostile step ids / target names stay strings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytest.importorskip("jinja2")

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ["openvino/convert.py.jinja", "openvino/validate.py.jinja"]


def render(name, step="02-intel-int8-convert", target="intel", precision="int8"):
    from edgekiln.render import render_text

    return render_text(name, {"params": {}, "step": step, "kind": "convert", "target": target,
                              "precision": precision}, ROOT / "converters")


@pytest.mark.parametrize("name", TEMPLATES)
def test_renders_to_python(name):
    code = render(name)
    tree = ast.parse(code)
    assert "Params read" in ast.get_docstring(tree)
    assert "ekit.finish(__file__" in code and "ekit.step(__file__)" in code


@pytest.mark.parametrize("name", TEMPLATES)
def test_hostile_values_stay_strings(name):
    evil = 'x"; import os; os.system("echo pwned") #\n\'\'\'"""'
    tree = ast.parse(render(name, step=evil, target=evil))
    assigned = {n.targets[0].id: n.value.value for n in ast.walk(tree)
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) in ("STEP", "TARGET")
                and isinstance(n.value, ast.Constant)}
    assert assigned == {"STEP": evil, "TARGET": evil}
    assert not any(isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "system"
                   for n in ast.walk(tree))


def test_target_file_loads_and_names_these_templates():
    from edgekiln.targets import load_target

    t = load_target(ROOT / "targets" / "intel.toml")
    assert (t.convert, t.validate) == tuple(TEMPLATES)
    assert t.artifacts == ("model.xml", "model.bin") and t.calibration == ("int8",)
    assert {"device", "bake_preprocessing", "subset_size", "preset", "fast_bias_correction",
            "ignored_scopes", "model_type", "max_ac_iterations", "latency_runs"} <= set(t.options)
    assert t.thresholds["int8"]["max_accuracy_drop"] == 5.0  # the one place the drop lives
    assert set(t.thresholds) == {"fp32", "fp16", "int8"}
    assert (ROOT / "images" / "openvino" / "requirements.txt").is_file()


def test_lock_is_complete_and_torch_free():
    lines = [ln.strip() for ln in (ROOT / "images" / "openvino" / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines and all("==" in ln for ln in lines)
    names = {ln.split("==")[0].lower() for ln in lines}
    assert {"openvino", "nncf", "onnx", "numpy", "pillow"} <= names and "torch" not in names
