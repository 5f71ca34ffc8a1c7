"""Rendering: only *.jinja renders, StrictUndefined, values only through tojson, no injection."""

import ast
import json
from pathlib import Path

import jinja2
import pytest

from edgekiln.errors import UsageError
from edgekiln.plan import plan_build
from edgekiln.render import render_job, render_text
from edgekiln.request import BuildRequest, InputSpec
from edgekiln.resources import data_dir
from edgekiln.targets import all_targets, source_kinds

EVIL = 'a"; import os; os.system("touch /tmp/pwned") #\n\'\'\' \\ }} {{ </script>'


@pytest.fixture
def troot(tmp_path):
    (tmp_path / "ok.py.jinja").write_text("NAME = {{ params.model_name | tojson }}\nN = {{ params.n | tojson }}\n")
    (tmp_path / "raw.py.jinja").write_text("NAME = '{{ params.model_name }}'\n")
    (tmp_path / "missing.py.jinja").write_text("X = {{ params.nope | tojson }}\n")
    (tmp_path / "plain.py").write_text("X = 1\n")
    return tmp_path


def test_values_cannot_inject_code(troot):
    text = render_text("ok.py.jinja", {"params": {"model_name": EVIL, "n": [1, 2.5]}}, troot)
    scope = {}
    exec(compile(text, "ok.py", "exec"), scope)  # noqa: S102 - the point of the test
    assert scope["NAME"] == EVIL and scope["N"] == [1, 2.5]
    assert [type(n).__name__ for n in ast.parse(text).body] == ["Assign", "Assign"]


def test_raw_values_and_missing_values_fail(troot):
    with pytest.raises(UsageError, match="tojson"):
        render_text("raw.py.jinja", {"params": {"model_name": EVIL}}, troot)
    with pytest.raises(jinja2.UndefinedError):
        render_text("missing.py.jinja", {"params": {}}, troot)
    with pytest.raises(UsageError, match="only"):
        render_text("plain.py", {}, troot)


def _plans():
    targets, sources = all_targets(), source_kinds()
    shape = InputSpec(shape=(1, 3, 224, 224))
    for fmt in ("onnx", "state_dict", "torchscript", "torch_export", "pickle"):
        for target in targets.values():
            if fmt not in sources and fmt not in target.via:
                continue
            yield plan_build(BuildRequest(
                model=Path("/m/x"), model_name=EVIL, source_format=fmt, targets=(target.name,),
                precisions=target.precisions, input=shape, calib=Path("/c"),
                arch="mobilenet_v2" if fmt == "state_dict" else None), targets, sources)


def test_every_template_renders_and_compiles_for_every_plan(tmp_path):
    """Each shipped template renders with real plans (an evil model name included) to valid Python."""
    seen = set()
    for i, plan in enumerate(_plans()):
        job = tmp_path / f"job{i}"
        scripts = render_job(plan, job)
        for step in plan.steps:
            seen.add(step.template)
            assert (job / step.script).is_file()
            params = json.loads((job / "steps" / f"{step.id}.json").read_text())
            assert params["model_name"] == EVIL
            assert EVIL not in scripts[step.id]  # the name is in params, never pasted raw
        assert (job / "ekit" / "__init__.py").is_file()
    assert {"onnx/source.py.jinja", "onnx/convert.py.jinja", "onnx/validate.py.jinja"} <= seen


def test_a_job_holds_exactly_the_helpers_its_steps_import(tmp_path):
    """Every helper a rendered script imports is in the job (flat: ``import ekit_onnx`` works with
    the job on PYTHONPATH); no other runtime's helper is (an onnx job has no ekit_rknn.py)."""
    from edgekiln.helpers import imported, index

    helpers = index(data_dir("converters"))
    for i, plan in enumerate(_plans()):
        job = tmp_path / f"job{i}"
        scripts = render_job(plan, job)
        wanted = set()
        todo = list(scripts.values())
        while todo:  # the step scripts' helper imports, followed through the helpers copied
            for name in imported(todo.pop(), None):
                top = name.split(".")[0]
                if top in helpers and helpers[top].is_file() and top not in wanted:
                    wanted.add(top)
                    todo.append((job / f"{top}.py").read_text())
        present = {p.stem for p in job.glob("*.py")}
        assert present == wanted, (plan.steps[0].target, plan.steps[-1].target, present ^ wanted)
        targets = {s.target for s in plan.steps if s.target}
        if targets == {"onnx"}:
            assert not {"ekit_rknn", "ekit_ov", "ekit_tf", "ekit_mnn", "ekit_trt"} & present
            assert not (job / "trt").exists() and not (job / "onnx").exists()  # nothing shadows a runtime


def test_templates_only_print_through_tojson():
    for path in data_dir("converters").glob("*.jinja"):
        text = path.read_text()
        for expr in text.split("{{")[1:]:
            inner = expr.split("}}")[0]
            assert "tojson" in inner, f"{path.name}: {{{{{inner}}}}} prints without tojson"
