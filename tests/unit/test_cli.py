"""The command line: the same tasks under `invoke` in the checkout and as the `edgekiln` program."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli


def test_invoke_lists_the_tasks_in_the_checkout():
    proc = subprocess.run([sys.executable, "-m", "invoke", "--list"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in ("build", "targets", "images", "demo", "clean", "bench"):
        assert f"  {name} " in proc.stdout


def test_targets_table_and_json():
    proc = run_cli("targets", check=0)
    assert "onnx" in proc.stdout and "Arm check" in proc.stdout
    assert '"precisions"' in run_cli("targets", "--json", check=0).stdout


def test_user_errors_are_one_line_without_traceback(tmp_path):
    proc = run_cli("build", "--model", tmp_path / "missing.onnx", "--debug", check=3)
    assert "Traceback" in proc.stderr  # --debug shows it
    proc = run_cli("build", "--model", tmp_path / "missing.onnx", check=3)
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: model")


def test_build_help_every_way():
    for args in (("build", "--help"), ("build", "-h"), ("help", "build"), ("--help", "build"),
                 ("build", "--target", "onnx", "--help")):
        proc = run_cli(*args, check=0)
        assert "--model" in proc.stdout and "--precision" in proc.stdout, args
        assert "--prompt-for-sudo-password" not in proc.stdout


def test_top_level_help_shows_edgekiln_only():
    proc = run_cli("--help", check=0)
    for name in ("build", "targets", "images", "demo", "clean"):
        assert f"  {name} " in proc.stdout
    for invoke_only in ("--prompt-for-sudo-password", "--pty", "--write-pyc", "--echo"):
        assert invoke_only not in proc.stdout


def test_missing_model_is_a_usage_error():
    proc = run_cli("build", "--target", "onnx", check=2)
    assert proc.stderr.strip() == "error: no model given — pass --model FILE (see `edgekiln build --help`)"


def test_target_specific_flags_are_options_now(tmp_path):
    proc = run_cli("build", "--model", tmp_path / "m.onnx", "--device", "NPU", check=None)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr


def test_clean_removes_failed_and_old_jobs_never_running_ones(tmp_path):
    import json
    import os
    import time

    jobs = tmp_path / ".edgekiln" / "jobs"
    hexname = {"failed1": "f" * 12, "kept1": "c" * 12, "running": "a" * 12, "dead": "d" * 12, "oldkept": "0" * 12}
    for name, state, pid, age in (("failed1", "failed", 1, 0), ("kept1", "kept", 1, 0),
                                  ("running", "running", os.getpid(), 0),
                                  ("dead", "running", 2 ** 22 + 7, 0), ("oldkept", "kept", 1, 10 * 86400)):
        folder = jobs / hexname[name]
        (folder / "work").mkdir(parents=True)
        (folder / "work" / "blob").write_bytes(b"x" * 1000)
        (folder / "job.json").write_text(json.dumps({"state": state, "pid": pid, "time": time.time() - age}))
    (jobs / "notajob").mkdir()  # not a folder edgekiln made (no job.json, not its name): never removed
    proc = run_cli("clean", "--out", tmp_path, "--failed", "--dry-run", check=0)
    assert "would remove 2 job folder(s)" in proc.stdout  # failed1 and dead (its process is gone)
    assert (jobs / hexname["failed1"]).exists()
    run_cli("clean", "--out", tmp_path, "--older-than", "7", check=0)
    assert not (jobs / hexname["oldkept"]).exists() and (jobs / hexname["kept1"]).exists()
    assert (jobs / hexname["failed1"]).exists()
    run_cli("clean", "--out", tmp_path, "--failed", check=0)
    assert sorted(p.name for p in jobs.iterdir()) == sorted([hexname["kept1"], hexname["running"], "notajob"])
    run_cli("clean", "--out", tmp_path, check=0)
    assert sorted(p.name for p in jobs.iterdir()) == sorted([hexname["running"], "notajob"])
    run_cli("clean", "--out", tmp_path, "--older-than", "soon", check=2)


@pytest.mark.parametrize("link", ["jobs", ".edgekiln"])
def test_clean_never_follows_a_linked_jobs_folder(tmp_path, link):
    """review finding 5: ``.edgekiln/jobs -> ~`` made clean delete the user's folders."""
    victim = tmp_path / "victimhome"
    (victim / "projects" / "code").mkdir(parents=True)
    (victim / "projects" / "code" / "main.py").write_text("print(1)\n")
    (victim / "0123456789ab").mkdir()  # even a job-shaped name behind the link stays
    (victim / "0123456789ab" / "job.json").write_text('{"state": "failed"}')
    out = tmp_path / "shared"
    if link == "jobs":
        (out / ".edgekiln").mkdir(parents=True)
        (out / ".edgekiln" / "jobs").symlink_to(victim)
    else:
        out.mkdir()
        (victim / "jobs").mkdir()
        (out / ".edgekiln").symlink_to(victim)
    proc = run_cli("clean", "--out", out, check=2)
    assert "symbolic link" in proc.stderr and proc.stderr.count("\n") == 1
    assert (victim / "projects" / "code" / "main.py").exists() and (victim / "0123456789ab").exists()


def test_json_failure_is_json_with_the_error_kind(tmp_path):
    import json

    proc = run_cli("build", "--model", tmp_path / "missing.onnx", "--json")
    assert proc.returncode == 3
    assert json.loads(proc.stdout) == {"error": {
        "kind": "model_not_found", "exit_code": 3, "message": f"model {tmp_path / 'missing.onnx'} does not exist",
        "hint": "check the path given to --model"}}
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    proc = run_cli("build", "--model", tmp_path / "m.onnx", "--head", "yolo9", "--json")
    assert proc.returncode == 2 and json.loads(proc.stdout)["error"]["kind"] == "usage"


def test_dry_run_platform_is_where_each_step_runs(weights):
    """rpi's image is for linux/arm64, but its convert/validate steps run here (a local virtualenv):
    the dry run says this machine's platform, not the image's."""
    import json

    from edgekiln.docker import host_platform

    proc = run_cli("build", "--model", weights, "--arch", "mobilenet_v2", "--target", "rpi", "--runner", "local",
                   "--dry-run", "--json", check=0)
    steps = json.loads(proc.stdout)["steps"]
    assert {s["platform"] for s in steps} == {host_platform()}, steps
    text = run_cli("build", "--model", weights, "--arch", "mobilenet_v2", "--target", "rpi", "--runner", "local",
                   "--dry-run", check=0).stdout
    assert f"local:tflite    {host_platform()}" in text, text


def test_the_local_fallback_is_one_warning_per_build():
    from edgekiln.build import fallback_warning

    why = "its base python:3.11-slim-bookworm is neither on the engine at E nor reachable in a registry (docker load it)"
    line = fallback_warning({"torch": f"image torch: {why}", "onnx": f"image onnx: {why}"})
    assert line.count("neither on the engine") == 1 and line.startswith("images torch, onnx: their base python")
    assert line.endswith("edgekiln images --build torch,onnx")
    one = fallback_warning({"onnx": f"image onnx: {why}"})
    assert one.startswith("image onnx: its base") and "its steps run in a local virtualenv" in one
