"""The ONNX-target converter templates render with StrictUndefined and are valid Python, and a
hostile step id cannot inject code (values enter only through | tojson)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

jinja2 = pytest.importorskip("jinja2")

CONVERTERS = Path(__file__).resolve().parents[2] / "converters"
TEMPLATES = ["onnx/source.py.jinja", "torch/source.py.jinja", "onnx/convert.py.jinja",
             "onnx/validate.py.jinja"]


def render(name: str, step: str) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(CONVERTERS),
                             undefined=jinja2.StrictUndefined, autoescape=False,
                             keep_trailing_newline=True)
    return env.get_template(name).render(step=step)


@pytest.mark.parametrize("name", TEMPLATES)
def test_renders_to_python(name):
    code = render(name, "02-onnx-int8-convert")
    tree = ast.parse(code)
    assert ast.get_docstring(tree) and "Reads" in ast.get_docstring(tree)
    assert "ekit.finish(__file__" in code


@pytest.mark.parametrize("name", TEMPLATES)
def test_hostile_step_id_stays_a_string(name):
    evil = 'x"; import os; os.system("echo pwned") #\n\'\'\''
    tree = ast.parse(render(name, evil))
    steps = [n.value.value for n in ast.walk(tree)
             if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "STEP"]
    assert steps == [evil]
    assert not any(isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "system"
                   for n in ast.walk(tree))


@pytest.mark.parametrize("name", TEMPLATES)
def test_undefined_values_are_errors(name):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(CONVERTERS),
                             undefined=jinja2.StrictUndefined)
    with pytest.raises((jinja2.UndefinedError, TypeError)):  # tojson of Undefined: TypeError
        env.get_template(name).render()
