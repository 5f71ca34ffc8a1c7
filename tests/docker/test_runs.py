"""Steps in containers: mounts, user, network, limits, failures, cleanup, .sh reproduction."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from edgekiln.errors import EnvironmentFailed, ShapeError, StepFailed
from edgekiln.runners import choose_runner
from edgekiln.runners.docker import DockerRunner

from .conftest import STAND_IN, make_job

PROBE = r'''
import json, os, socket, sys
paths = json.loads(os.environ["EKIT_PATHS"])
out = {"uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(), "paths": paths,
       "pythonpath": os.environ.get("PYTHONPATH"), "model": open(paths["model"], "rb").read().decode(),
       "calib": sorted(os.listdir(paths["calib"])), "nets": sorted(os.listdir("/sys/class/net"))}
for what, path in (("model_write", paths["model"]), ("calib_write", paths["calib"] + "/new.txt")):
    try:
        with open(path, "w") as fh:
            fh.write("x")
        out[what] = "written"
    except OSError as exc:
        out[what] = exc.strerror
try:
    socket.create_connection(("1.1.1.1", 443), timeout=3)
    out["network"] = "reached"
except OSError as exc:
    out["network"] = type(exc).__name__ + ": " + str(exc)
os.makedirs("work/out", exist_ok=True)
with open("work/out/probe.json", "w") as fh:
    json.dump(out, fh)
print("probe done")
'''


def _runner(engine, cache_root, **kw):
    return DockerRunner(engine=engine, base_image=STAND_IN, cache_root=cache_root, **kw)


@pytest.fixture()
def onnx_env(engine, cache_root, onnx_image):
    return _runner(engine, cache_root).prepare("onnx")


def _gone(engine, step):
    return engine.containers(f"edgekiln.step={step}") == []


@pytest.mark.parametrize("user", [None, "1000:1000"], ids=["invoking-user", "uid-1000"])
def test_step_runs_with_ro_inputs_rw_job_no_network_as_the_user(engine, cache_root, onnx_env,
                                                                 tmp_path, user):
    job = make_job(tmp_path / "job", PROBE)
    if user:
        for dirpath, _dirs, files in os.walk(job.root):
            for name in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
                os.chown(name, 1000, 1000)
    runner = _runner(engine, cache_root, user=user)
    log = job.log_path("01-probe")
    lines = []
    runner.run(onnx_env, job, "steps/01-probe.py", log, on_line=lines.append)
    assert "probe done" in lines
    result_file = job.work / "out" / "probe.json"
    out = json.loads(result_file.read_text())
    uid, gid = (1000, 1000) if user else (os.getuid(), os.getgid())
    assert (out["uid"], out["gid"]) == (uid, gid)
    assert os.stat(result_file).st_uid == uid  # the artifact belongs to the user, not root
    assert out["cwd"] == "/job" and out["pythonpath"] == "/job"
    assert out["paths"] == {"model": "/in/model/model.onnx", "calib": "/in/calib", "val": None}
    assert out["model"] == "not really a model" and out["calib"] == ["a.jpg"]
    assert out["model_write"] == "Read-only file system"
    assert out["calib_write"] == "Read-only file system"
    assert out["nets"] == ["lo"] and out["network"] != "reached"
    assert (job.inputs["model"]).read_bytes() == b"not really a model"
    # the exact command is saved beside the log, runnable by hand
    script = log.with_suffix(".sh")
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "--network none" in text and "readonly" in text and "--privileged" not in text
    assert _gone(engine, "01-probe")


def test_command_is_the_exact_docker_run(engine, cache_root, onnx_env, tmp_path):
    job = make_job(tmp_path / "job", "print('hi')\n", calib=False)
    argv = _runner(engine, cache_root, memory="1g").command(onnx_env, job, "steps/01-probe.py")
    assert argv[:2] == ["docker", "run"] or "run" in argv[:4]
    for flag in ("--network", "--user", "--platform", "--memory", "--cap-drop", "--workdir"):
        assert flag in argv
    assert argv[argv.index("--network") + 1] == "none"
    assert "--privileged" not in argv
    assert argv[-2:] == ["/opt/venv/bin/python", "steps/01-probe.py"]
    assert onnx_env.ref in argv
    # running it by hand works (the .sh adds --rm)
    log = job.log_path("01-probe")
    _runner(engine, cache_root).run(onnx_env, job, "steps/01-probe.py", log)
    by_hand = subprocess.run(["sh", str(log.with_suffix(".sh"))], capture_output=True, text=True,
                             timeout=120)
    assert by_hand.returncode == 0 and by_hand.stdout.strip() == "hi"
    name = argv[argv.index("--name") + 1]
    assert f"--name {name}" in log.with_suffix(".sh").read_text()  # the manifest's command ran
    assert _gone(engine, "01-probe")


def test_user_error_of_a_step_maps_to_its_error_class(engine, cache_root, onnx_env, tmp_path):
    script = ('import json, sys\nprint("working")\n'
              'print("EDGEKILN-ERROR " + json.dumps({"kind": "shape", "message": "input is 3x3"}),'
              ' file=sys.stderr)\nsys.exit(3)\n')
    job = make_job(tmp_path / "job", script)
    with pytest.raises(ShapeError, match="input is 3x3"):
        _runner(engine, cache_root).run(onnx_env, job, "steps/01-probe.py",
                                        job.log_path("01-probe"))
    job2 = make_job(tmp_path / "job2", "raise RuntimeError('boom in step')\n")
    with pytest.raises(StepFailed, match="boom in step") as info:
        _runner(engine, cache_root).run(onnx_env, job2, "steps/01-probe.py",
                                        job2.log_path("01-probe"))
    assert str(job2.log_path("01-probe")) in info.value.hint


def test_timeout_kills_the_container_and_says_so(engine, cache_root, onnx_env, tmp_path):
    job = make_job(tmp_path / "job", "import time\nprint('sleeping', flush=True)\ntime.sleep(120)\n")
    t0 = time.monotonic()
    with pytest.raises(StepFailed, match="timed out after 3 s"):
        _runner(engine, cache_root).run(onnx_env, job, "steps/01-probe.py",
                                        job.log_path("01-probe"), timeout=3)
    assert time.monotonic() - t0 < 60
    assert _gone(engine, "01-probe")


def test_killed_container_is_a_clear_error(engine, cache_root, onnx_env, tmp_path):
    (tmp_path / "job").mkdir()
    job = make_job(tmp_path / "job" / "k", "import time\nprint('up', flush=True)\ntime.sleep(120)\n")
    step = "01-probe"

    def killer():
        for _ in range(100):
            names = engine.containers(f"edgekiln.step={step}")
            if names:
                time.sleep(1)
                engine.kill(names[0])
                return
            time.sleep(0.2)

    thread = threading.Thread(target=killer)
    thread.start()
    with pytest.raises(StepFailed, match="was killed"):
        _runner(engine, cache_root).run(onnx_env, job, "steps/01-probe.py", job.log_path(step),
                                        timeout=90)
    thread.join()
    assert _gone(engine, step)


def test_out_of_memory_is_a_clear_error(engine, cache_root, onnx_env, tmp_path):
    script = ("import numpy as np\nprint('allocating', flush=True)\n"
              "a = np.ones((600, 1024, 1024), dtype=np.uint8)\nprint(a.sum())\n")
    job = make_job(tmp_path / "job", script)
    with pytest.raises(StepFailed, match="ran out of memory") as info:
        _runner(engine, cache_root, memory="96m").run(onnx_env, job, "steps/01-probe.py",
                                                      job.log_path("01-probe"), timeout=120)
    assert "--memory" in info.value.hint
    assert _gone(engine, "01-probe")


def test_copy_mode_gives_the_same_result_as_bind_mounts(engine, cache_root, onnx_env, tmp_path):
    """The way used for engines on other machines (ssh://, tcp://), forced on the local one."""
    job = make_job(tmp_path / "job", PROBE)
    log = job.log_path("01-probe")
    log.write_text("host's own log line\n")
    _runner(engine, cache_root, copy=True).run(onnx_env, job, "steps/01-probe.py", log)
    out = json.loads((job.work / "out" / "probe.json").read_text())
    assert out["model"] == "not really a model" and out["calib"] == ["a.jpg"]
    assert out["paths"]["model"] == "/in/model/model.onnx"
    assert out["nets"] == ["lo"] and out["network"] != "reached"
    assert out["uid"] == os.getuid()
    if os.getuid() != 0:  # root in the container may still write root-owned copies
        assert out["model_write"] != "written"
    text = log.read_text()
    assert text.startswith("host's own log line") and "probe done" in text
    assert "docker create" in log.with_suffix(".sh").read_text().replace("'", "")
    assert _gone(engine, "01-probe")
    # the copy-in / start / copy-out script runs by hand too
    (job.work / "out" / "probe.json").unlink()
    by_hand = subprocess.run(["sh", str(log.with_suffix(".sh"))], capture_output=True, text=True,
                             timeout=120)
    assert by_hand.returncode == 0, by_hand.stderr
    assert "probe done" in by_hand.stdout
    assert json.loads((job.work / "out" / "probe.json").read_text())["calib"] == ["a.jpg"]
    assert _gone(engine, "01-probe")


INTERRUPTED = r"""
import sys
from pathlib import Path
from edgekiln.runners.base import Job
from edgekiln.runners.docker import DockerRunner
root = Path(sys.argv[1])
runner = DockerRunner(base_image=sys.argv[2], cache_root=Path(sys.argv[3]))
env = runner.prepare("onnx")
job = Job(root=root, inputs={"model": Path(sys.argv[4]), "calib": None, "val": None})
try:
    runner.run(env, job, "steps/01-probe.py", job.log_path("01-probe"),
               on_line=lambda l: print(l, flush=True))
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def test_ctrl_c_removes_the_container(engine, cache_root, onnx_image, tmp_path):
    import signal
    import sys

    job = make_job(tmp_path / "job", "import time\nprint('sleeping', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(job.root), STAND_IN,
                             str(cache_root), str(job.inputs["model"])],
                            stdout=subprocess.PIPE, text=True,
                            # SIGINT as a terminal leaves it (a suite started with `cmd &` inherits it ignored)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if "sleeping" in line:
            break
    assert engine.containers("edgekiln.step=01-probe"), "the step should be running"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in out
    assert _gone(engine, "01-probe")


def test_choose_runner_auto_docker_local(engine, monkeypatch):
    import edgekiln.runners as runners

    runner, why = choose_runner("auto")
    assert runner.name == "docker" and "Docker" in why and "answers" in why
    runner, why = choose_runner("docker")
    assert isinstance(runner, DockerRunner)
    sentinel = object()
    monkeypatch.setattr(runners, "_local", lambda options: sentinel)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/edgekiln.sock")
    runner, why = choose_runner("auto")
    assert runner is sentinel and "no Docker engine answers" in why and "local" in why
    with pytest.raises(EnvironmentFailed, match="no Docker engine answers"):
        choose_runner("docker")
    assert choose_runner("local")[0] is sentinel


CPU_PROBE = r'''
import json, os
import numpy as np
try:
    from numpy._core._multiarray_umath import __cpu_features__ as f
except ImportError:
    from numpy.core._multiarray_umath import __cpu_features__ as f
print(json.dumps({"avx2": f["AVX2"], "avx512f": f["AVX512F"], "qemu_cpu": os.environ.get("QEMU_CPU")}))
'''


def test_a_step_runs_on_an_emulated_x86_cpu_class_inside_the_container(engine, cache_root, onnx_env, tmp_path,
                                                                       monkeypatch):
    """--option cpu=x86-64-v3 on a host that lacks it: the step's python runs under the host's static
    QEMU (mounted read-only), so the runtime sees an AVX2 CPU without AVX-512 whatever the host is."""
    from edgekiln.isa import find_qemu

    from .conftest import REQUIRED

    monkeypatch.setenv("EDGEKILN_QEMU_X86_64", "auto")
    qemu = find_qemu()
    if qemu is None or not qemu.static:
        if REQUIRED:
            pytest.fail("no static qemu-x86_64 (.ci/arm64-up.sh installs /usr/local/lib/edgekiln/qemu-x86_64)")
        pytest.skip("no static qemu-x86_64 here (.ci/arm64-up.sh installs it)")
    job = make_job(tmp_path / "job", CPU_PROBE, calib=False)
    runner = _runner(engine, cache_root)
    runner.qemu_user = (qemu.path, "Haswell-noTSX")
    argv = runner.command(onnx_env, job, "steps/01-probe.py")
    assert f"{qemu.path}:/opt/edgekiln/qemu-user:ro" in " ".join(argv) or any("qemu-user" in a for a in argv)
    assert argv[-5:] == ["/opt/edgekiln/qemu-user", "-0", "/opt/venv/bin/python", "/opt/venv/bin/python",
                         "steps/01-probe.py"]
    lines = []
    runner.run(onnx_env, job, "steps/01-probe.py", job.log_path("01-probe"), on_line=lines.append)
    seen = json.loads(next(l for l in lines if l.startswith("{")))
    assert seen == {"avx2": True, "avx512f": False, "qemu_cpu": "Haswell-noTSX"}
    assert _gone(engine, "01-probe")
