"""A container step is a boundary (review finding 2): code running in a step — a model file that
is a program, a pickled module, an --arch file — cannot reach a host file.

The step below is what such code could do: rewrite a later step's script, plant a link where the
host appends the next step's log, and plant the artifact as a link to a host secret. Before, the
host appended to the linked file and published the secret as the "model"; now the job's scripts
and logs are read-only to the step, and the host refuses a link in ``work/`` with one line.
"""

from __future__ import annotations

import json

import pytest

from edgekiln.errors import StepFailed
from edgekiln.runners.base import Job
from edgekiln.runners.docker import DockerRunner

from .conftest import STAND_IN

PLANT = r'''
import json, os
secret, victim = {secret!r}, {victim!r}
out = {{}}
def attempt(what, fn):
    try:
        fn()
        out[what] = "done"
    except OSError as exc:
        out[what] = exc.strerror
attempt("rewrite_next_step", lambda: open("steps/02-b.py", "w").write("print('PWNED')"))
attempt("link_host_log", lambda: os.symlink(victim, "logs/02-b.log"))
attempt("write_job_json", lambda: open("job.json", "w").write("{{}}"))
attempt("write_root_fs", lambda: open("/etc/pwned", "w").write("x"))
attempt("write_tmp", lambda: open("/tmp/scratch", "w").write("x"))
os.makedirs("work/onnx/fp32", exist_ok=True)
os.makedirs("work/logs", exist_ok=True)
os.symlink(secret, "work/onnx/fp32/model.onnx")  # the artifact the host would publish
os.symlink(victim, "work/logs/02-b.log")  # where the host used to append the next step's log
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
out["cap_eff"] = status["CapEff"].strip()
out["no_new_privs"] = status["NoNewPrivs"].strip()
for name, paths in (("pids", ("pids.max", "pids/pids.max")),
                    ("memory", ("memory.max", "memory/memory.limit_in_bytes"))):  # cgroup v2, v1
    for path in paths:
        if os.path.exists("/sys/fs/cgroup/" + path):
            out[name] = open("/sys/fs/cgroup/" + path).read().strip()
print("PROBE " + json.dumps(out), flush=True)
'''


def _job(tmp_path):
    root = tmp_path / "job"
    (root / "steps").mkdir(parents=True)
    (root / "work").mkdir()
    (root / "logs").mkdir()
    (root / "job.json").write_text('{"state": "running"}\n')
    secret, victim = tmp_path / "host_secret", tmp_path / "victim_bashrc"
    secret.write_text("HOST-SECRET-KEY-123\n")
    victim.write_text("# the user's own file\n")
    (root / "steps" / "01-a.py").write_text(PLANT.format(secret=str(secret), victim=str(victim)))
    (root / "steps" / "02-b.py").write_text("print('step b')\n")
    model = tmp_path / "model.onnx"
    model.write_bytes(b"m")
    return Job(root=root, inputs={"model": model, "calib": None, "val": None}), secret, victim


@pytest.mark.parametrize("copy", [False, True], ids=["bind-mounts", "copy-mode"])
def test_a_step_that_plants_links_reaches_no_host_file(engine, tiny_images, cache_root, tmp_path, copy):
    job, secret, victim = _job(tmp_path)
    runner = DockerRunner(engine=engine, base_image=STAND_IN, images_root=tiny_images, cache_root=cache_root,
                          copy=copy, memory="512m")
    env = runner.prepare("tiny")
    lines: list[str] = []
    with pytest.raises(StepFailed) as info:
        runner.run(env, job, "steps/01-a.py", job.log_path("01-a"), on_line=lines.append)
    assert "link" in info.value.message and "refused" in info.value.message
    assert "\n" not in info.value.line()
    probe = json.loads(next(l for l in lines if l.startswith("PROBE "))[6:])
    assert victim.read_text() == "# the user's own file\n" and secret.read_text() == "HOST-SECRET-KEY-123\n"
    assert (job.root / "steps" / "02-b.py").read_text() == "print('step b')\n"
    assert json.loads((job.root / "job.json").read_text()) == {"state": "running"}
    assert not job.log_path("02-b").exists()
    assert job.log_path("01-a").is_file() and not job.log_path("01-a").is_symlink()
    if not copy:  # a copy of the job can be written in the container; the host never sees it
        assert probe["rewrite_next_step"] == probe["link_host_log"] == "Read-only file system"
        assert probe["write_root_fs"] == "Read-only file system"
    assert probe["write_tmp"] == "done"
    assert probe["cap_eff"] == "0000000000000000" and probe["no_new_privs"] == "1"
    assert probe["pids"] == "4096" and probe["memory"] == str(512 * 2 ** 20)
    if not copy:  # the host copies outputs without following links either (belt and braces)
        from edgekiln.outputs import copy_file

        with pytest.raises(StepFailed, match="symbolic link"):
            copy_file(job.root / "work" / "onnx" / "fp32" / "model.onnx", tmp_path / "published.onnx")
        assert not (tmp_path / "published.onnx").exists()
