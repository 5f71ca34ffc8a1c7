"""The core (edgekiln/build.py, plan.py) names no runtime: a target declares its stages ([stages] in
its file) and the core runs them by name; no import cycle runs through the planner."""

import ast
import re
from pathlib import Path

import pytest

from edgekiln.errors import TargetError
from edgekiln.targets import all_targets, load_target, stage

PKG = Path(__file__).resolve().parents[2] / "edgekiln"
RUNTIME_WORDS = re.compile(r"tensorrt|arm_step|rknn|openvino", re.I)


@pytest.mark.parametrize("name", ["build.py", "plan.py"])
def test_the_core_names_no_runtime(name):
    lines = [f"{i}: {line}" for i, line in enumerate((PKG / name).read_text().splitlines(), 1)
             if RUNTIME_WORDS.search(line)]
    assert not lines, "\n".join(lines)


def imports_of(path: Path) -> set[str]:
    """edgekiln modules a module imports (also inside functions; not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgekiln."):
            found.add(node.module.split(".")[1])
    return found


def test_no_import_cycle_runs_through_the_planner():
    graph = {p.stem: imports_of(p) for p in PKG.glob("*.py")}
    seen, todo = set(), list(graph["plan"])
    while todo:
        module = todo.pop()
        if module in seen or module not in graph:
            continue
        seen.add(module)
        todo += graph[module]
    assert "plan" not in seen, f"plan.py imports itself back through {sorted(seen)}"
    assert not {"tensorrt", "deferred"} & (graph["plan"] | graph["build"])


def test_declared_stages_are_what_the_core_runs():
    targets = all_targets()
    assert stage(targets["jetson"], "after_validation").__module__ == "edgekiln.deferred"
    assert "tensorrt" in stage(targets["x86-gpu"], "params")(targets["x86-gpu"], targets["x86-gpu"].options)
    assert stage(targets["onnx"], "after_validation") is None and stage(targets["onnx"], "params") is None


@pytest.mark.parametrize("line", ['after_validation = "os:system"', 'params = "edgekiln.tensorrt"',
                                  'publish = "edgekiln.deferred:defer_engine"'])
def test_a_stage_must_be_an_edgekiln_function_of_a_known_stage(tmp_path, line):
    text = (PKG.parent / "targets" / "onnx.toml").read_text()
    (tmp_path / "t.toml").write_text(text.replace("[steps]", f"[stages]\n{line}\n\n[steps]", 1))
    with pytest.raises(TargetError, match=r"\[stages\]"):
        load_target(tmp_path / "t.toml")
