"""The command line: the same tasks under `invoke` in the checkout and as the `edgekiln` program."""

import subprocess
import sys

from tests.conftest import ROOT, run_cli


def test_invoke_lists_the_tasks_in_the_checkout():
    proc = subprocess.run([sys.executable, "-m", "invoke", "--list"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in ("build", "targets", "images", "demo", "bench"):
        assert f"  {name} " in proc.stdout


def test_targets_table_and_json():
    proc = run_cli("targets", check=0)
    assert "onnx" in proc.stdout and "runs here" in proc.stdout
    assert '"precisions"' in run_cli("targets", "--json", check=0).stdout


def test_user_errors_are_one_line_without_traceback(tmp_path):
    proc = run_cli("build", "--model", tmp_path / "missing.onnx", "--debug", check=3)
    assert "Traceback" in proc.stderr  # --debug shows it
    proc = run_cli("build", "--model", tmp_path / "missing.onnx", check=3)
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: model")
