"""Rendering: a plan becomes a job directory of scripts and params (see converters/README.md).

Only ``*.jinja`` files are rendered; the helpers the rendered scripts import are copied byte for
byte (edgekiln.helpers).
StrictUndefined everywhere and values enter templates only through ``tojson``: the template
context holds nothing but JSON-able values, and the one filter that prints them is ``tojson``.
"""

from __future__ import annotations

import json
import shutil
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
import markupsafe
from jinja2.sandbox import SandboxedEnvironment

from .errors import UsageError
from .resources import data_dir

if TYPE_CHECKING:  # types only: render never imports the planner (no import cycle through plan.py)
    from .plan import Plan, Step


@lru_cache(maxsize=4)
def environment(root: str) -> jinja2.Environment:
    env = SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(root),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_only_tojson,
    )
    env.filters["tojson"] = _tojson
    return env


def _tojson(value, indent=None):
    """JSON text (ASCII only); a JSON string or number is also a valid Python literal."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return markupsafe.Markup(json.dumps(value, ensure_ascii=True, indent=indent, sort_keys=True))


def _only_tojson(value):
    """Every ``{{ … }}`` must print through ``| tojson``: raw text never reaches a script."""
    if isinstance(value, markupsafe.Markup):
        return value
    raise UsageError(f"template prints {value!r} without | tojson", "pipe every value through tojson")


def render_text(template: str, context: dict, root: Path | None = None) -> str:
    root = root or data_dir("converters")
    if not template.endswith(".jinja"):
        raise UsageError(f"{template} is not a template (only *.jinja files render)", "fix the target file")
    return environment(str(root)).get_template(template).render(**context)


def render_step(step: Step, root: Path | None = None) -> str:
    params = step.params
    context = {"params": params, "step": step.id, "kind": step.kind,
               "target": step.target, "precision": step.precision}
    return render_text(step.template, context, root)


def render_job(plan: Plan, job_root: Path, arch_file: Path | None = None,
               root: Path | None = None) -> dict[str, str]:
    """Write every step's script and params into ``job_root``; return {step id: script text}."""
    root = root or data_dir("converters")
    (job_root / "steps").mkdir(parents=True, exist_ok=True)
    (job_root / "work" / "results").mkdir(parents=True, exist_ok=True)
    (job_root / "logs").mkdir(parents=True, exist_ok=True)  # the host's: outside the steps' writable work/
    if arch_file is not None:
        (job_root / "arch").mkdir(exist_ok=True)
        shutil.copy2(arch_file, job_root / "arch" / arch_file.name)
    scripts = {}
    for step in plan.steps:
        text = render_step(step, root)
        compile(text, step.script, "exec")  # a template that renders invalid Python fails here
        (job_root / step.script).write_text(text)
        (job_root / "steps" / f"{step.id}.json").write_text(
            json.dumps(step.params, indent=2, ensure_ascii=False) + "\n")
        scripts[step.id] = text
    copy_support(root, job_root, scripts.values(), [s.params for s in plan.steps])
    return scripts


def copy_support(root: Path, job_root: Path, scripts=None, params=()) -> list[str]:
    """Copy the converters' helpers the scripts import (edgekiln.helpers: flat, byte for byte;
    ``scripts`` None: every helper) next to them; -> what was copied."""
    from .helpers import copy_helpers

    return copy_helpers(root, job_root, scripts, params)
