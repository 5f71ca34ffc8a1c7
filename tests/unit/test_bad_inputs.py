"""Every bad input of the security review gets one line and its kind's exit code, never a
traceback (review finding 15 / issue 22 item 11). All of them fail before any build runs."""

from __future__ import annotations

import pytest

from edgekiln import errors
from tests.conftest import run_cli

RELEASE = ('[release]\nname = "r"\nversion = "1"\ndate = 2026-11-28\n[targets]\nonnx = ["fp32"]\n'
           '[models.{name}]\npath = "m.onnx"\n{extra}\n')
USAGE = errors.UsageError.exit_code


def _one_line(proc):
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1, proc.stderr


@pytest.fixture()
def model(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")  # detect_format only reads the suffix of .onnx
    return tmp_path / "m.onnx"


@pytest.mark.parametrize("extra,name", [
    ('opset = "x"', "m"), ('max_images = "many"', "m"), ("max_images = -3", "m"), ('simplify = "bogus"', "m"),
    ('input = { scale = "x" }', "m"), ("input = { layout = 3 }", "m"), ('input = { mean = ["a"] }', "m"),
    ("input = { shape = [1, 3, true, 4] }", "m"), ('input = { dynamic_batch = "yes" }', "m"),
    ('trust_pickle = "no"', "m"), ("arch = 3", "m"), ("", "archives"), ("", '"release.json"'),
])
def test_release_file_values_of_the_wrong_type(model, extra, name):
    (model.parent / "release.toml").write_text(RELEASE.format(name=name, extra=extra))
    proc = run_cli("release", model.parent / "release.toml", "--out", model.parent / "rel",
                   "--dist", model.parent / "dist", check=USAGE)
    _one_line(proc)


def test_release_file_that_is_not_utf8(model):
    (model.parent / "release.toml").write_bytes(b"[release]\nname = \"\xff\xfe\"\n")
    _one_line(run_cli("release", model.parent / "release.toml", check=USAGE))


@pytest.mark.parametrize("side", ['scale = "x"', "layout = 3", 'mean = ["a"]', "input = 3", "std = [0, 1, 1]",
                                  'pad = "a"', 'color = "cmyk"'])
def test_sidecar_spec_values_of_the_wrong_type(model, side):
    (model.parent / "m.onnx.edgekiln.toml").write_text(side + "\n")
    _one_line(run_cli("build", "--model", model, "--runner", "local", "--dry-run", check=USAGE))


@pytest.mark.parametrize("args", [
    ("--base-image", "onnx=x,foo"), ("--jobs", "abc"), ("--jobs", "0"), ("--pixel-scale", "abc"), ("--opset", "x"),
])
def test_bad_flag_values(model, args):
    extra = () if args[0] == "--jobs" else ("--dry-run",)
    runner = "docker" if args[0] == "--base-image" else "local"
    proc = run_cli("build", "--model", model, "--runner", runner, "--out", model.parent / "dist", *args, *extra,
                   check=None)
    assert proc.returncode == USAGE, proc.stderr
    _one_line(proc)


def test_out_that_is_a_file(model):
    (model.parent / "afile").write_text("x")
    _one_line(run_cli("build", "--model", model, "--out", model.parent / "afile", "--dry-run", check=USAGE))
    _one_line(run_cli("build", "--model", model, "--out", model.parent / "afile" / "sub", "--dry-run", check=USAGE))


def test_a_config_in_the_current_folder_is_never_read(model):
    """review finding 14: a cloned repository's pyproject.toml sent models to its tcp:// engine. The
    per-target host map is gone (more machines: `edgekiln worker` and --broker, docs/workers.md):
    no file in the current folder can send a build anywhere, and a broken one changes nothing."""
    (model.parent / "pyproject.toml").write_text('[tool.edgekiln.docker.hosts]\n"*" = "tcp://203.0.113.9:2375"\n')
    (model.parent / "edgekiln.toml").write_text("[tool\nbroken = \n")
    proc = run_cli("build", "--model", model, "--runner", "local", "--dry-run", "--json", cwd=model.parent, check=0)
    assert "203.0.113.9" not in proc.stdout + proc.stderr
    _one_line(run_cli("build", "--model", model, "--config", model.parent / "pyproject.toml", "--dry-run",
                      cwd=model.parent, check=USAGE))  # the flag is gone: one line


def test_release_arch_file_is_the_one_beside_the_release_file(tmp_path, monkeypatch):
    """review finding 16: ``arch = "net.py:build"`` was looked up in the current folder, so a
    different file of that name could run."""
    from edgekiln.matrix import load_matrix

    (tmp_path / "rel").mkdir()
    (tmp_path / "rel" / "m.pth").write_bytes(b"\x80\x02}q\x00.")
    (tmp_path / "rel" / "net.py").write_text("def build():\n    pass\n")
    (tmp_path / "rel" / "release.toml").write_text(RELEASE.format(name="m", extra='arch = "net.py:build"')
                                                   .replace("m.onnx", "m.pth"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text("raise SystemExit('the wrong file')\n")
    with pytest.raises(errors.UsageError, match="not beside the release file"):
        load_matrix(tmp_path / "rel" / "release.toml")
    monkeypatch.chdir(tmp_path / "rel")
    assert load_matrix(tmp_path / "rel" / "release.toml").models[0].arch == "net.py:build"


def test_control_characters_never_reach_the_terminal(tmp_path):
    """review finding 16: an ESC in a file name coloured (or rewrote) the user's terminal."""
    proc = run_cli("build", "--model", tmp_path / "we\x1b[31mird.onnx", check=errors.ModelNotFound.exit_code)
    _one_line(proc)
    assert "\x1b" not in proc.stderr and "\\x1b[31mird" in proc.stderr
