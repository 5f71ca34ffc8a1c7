"""bench/: one way to run a study (`invoke bench --only NAME`), and every stored results file names
the command that regenerates it (bench/_common.py)."""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from _common import REGENERATE, RESULTS, stamp, studies, study_env  # noqa: E402

RESULT_FILES = sorted(p for p in RESULTS.glob("*") if p.suffix in (".md", ".json"))


def command_of(path: Path) -> str:
    if path.suffix == ".json":
        return json.loads(path.read_text())["command"]
    (line,) = [l for l in path.read_text().splitlines() if l.startswith(REGENERATE)]
    return line[len(REGENERATE):].strip("`")


@pytest.mark.parametrize("path", RESULT_FILES, ids=[p.name for p in RESULT_FILES])
def test_every_results_file_names_the_command_that_regenerates_it(path):
    command = command_of(path)
    study = re.match(r"invoke bench --only (\w+)", command)
    assert study or command.startswith("edgekiln "), command
    if study:
        assert study.group(1) in studies(), f"{path.name}: no study bench/{study.group(1)}.py"


def test_studies_say_what_they_measure_and_where_they_run():
    found = studies()
    assert len(found) >= 15 and not any(name.startswith("_") for name in found)
    for name, script in found.items():
        assert not re.search(r"(_b$|_bench$|^new_)", name), f"{name}: a name that says what it measures"
        env = study_env(script)
        assert env is None or (ROOT / "images" / env / "requirements.txt").is_file(), (name, env)


def test_stamp_puts_the_command_once_and_keeps_the_numbers(tmp_path):
    md, js = tmp_path / "x.md", tmp_path / "x.json"
    md.write_text("# Title\n\n| a |\n|---|\n| 1.5 |\n")
    js.write_text(json.dumps({"rows": [1.5, 2]}, indent=1) + "\n")
    for _ in range(2):
        stamp(md, "invoke bench --only x")
        stamp(js, "invoke bench --only x")
    assert md.read_text() == "# Title\n\nRegenerate: `invoke bench --only x`\n\n| a |\n|---|\n| 1.5 |\n"
    assert json.loads(js.read_text()) == {"command": "invoke bench --only x", "rows": [1.5, 2]}
    assert js.read_text().startswith('{\n "command"')  # its own indent kept
