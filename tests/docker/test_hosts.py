"""A second dockerd (own socket and data root) as one remote engine (`--docker-host`, Docker's own
feature). Building on several machines at once is `edgekiln worker` + `--broker` (test_dist.py);
edgekiln's own per-target host map and fan-out are gone."""

from __future__ import annotations

import json

from edgekiln.runners.docker import DockerRunner

from .conftest import SECOND_HOST, STAND_IN, TCP_HOST, make_job

STEP = r'''
import json, os, platform
os.makedirs("work/out", exist_ok=True)
data = {"model": open(json.loads(os.environ["EKIT_PATHS"])["model"]).read(),
        "machine": platform.machine(), "host": os.environ.get("HOSTNAME", "")}
json.dump(data, open("work/out/result.json", "w"))
print("done on", data["host"])
'''


def test_runners_for_targets_one_engine_and_platforms(engine, engine2):
    from edgekiln.runners import runners_for_targets
    from edgekiln.plan import Step

    def target(name, platform):  # the step of a target: runners read only what the step carries
        return Step(id=f"02-{name}-fp32-convert", kind="convert", template="c", image="onnx", target=name,
                    precision="fp32", params_json="{}", platform=platform)

    notes = []
    runner_for, reason = runners_for_targets("auto", docker_options={"base_image": STAND_IN}, on_note=notes.append)
    assert "Docker" in reason
    near = runner_for(target("near", "linux/amd64"))
    assert near.platform == "linux/amd64" and near.engine.where != SECOND_HOST
    if not engine.can_build_for("linux/arm64")[0]:
        arm = runner_for(target("pi", "linux/arm64"))
        assert arm.platform is None and notes and "buildx" in notes[-1]
    # --docker-host: every target on that one engine
    runner_for, reason = runners_for_targets("docker", SECOND_HOST, docker_options={"base_image": STAND_IN})
    assert {runner_for(target(n, "linux/amd64")).engine.where for n in ("near", "far")} == {SECOND_HOST}


def test_auto_falls_back_to_local_for_an_image_that_cannot_be_had(engine, monkeypatch, tmp_path):
    import edgekiln.runners as runners
    from edgekiln.runners import choose_runner
    from edgekiln.runners.base import Env, Runner

    class FakeLocal(Runner):
        name = "local"
        ran = []

        def prepare(self, image, on_line=None, *, local_ok=True):
            return self.planned_env(image)

        def planned_env(self, image, platform=None, on_line=None, *, local_ok=True):
            return Env(image=image, runner="local", lock_hash="x", ref="/venv/bin/python")

        def command(self, env, job, script):
            return ["/venv/bin/python", script]

        def run(self, env, job, script, log, on_line=None, timeout=None):
            self.ran.append(script)

    monkeypatch.setattr(runners, "_local", lambda options: FakeLocal())
    monkeypatch.delenv("EDGEKILN_BASE_IMAGE", raising=False)
    # the base is neither on the engine nor in a reachable registry
    runner, why = choose_runner("auto", docker_options={"base_image": "edgekiln/no-such-base:never"})
    assert runner.name == "docker"
    lines = []
    env = runner.prepare("onnx", lines.append)
    assert env.runner == "local"
    assert any("no-such-base" in line and "local virtualenv" in line for line in lines)
    job = make_job(tmp_path / "job", "print(1)\n")
    assert runner.command(env, job, "steps/01-probe.py") == ["/venv/bin/python", "steps/01-probe.py"]
    runner.run(env, job, "steps/01-probe.py", job.log_path("01-probe"))
    assert FakeLocal.ran == ["steps/01-probe.py"]
    # an image that can be had stays in Docker; --runner docker never falls back
    runner, _ = choose_runner("auto", docker_options={"base_image": STAND_IN})
    assert runner.prepare("onnx").runner == "docker"
    runner, _ = choose_runner("docker", docker_options={"base_image": "edgekiln/no-such-base:never"})
    assert runner.fallback is None


def test_tcp_host_gets_the_job_copied_in_and_out(engine_tcp, tiny_images, cache_root, tmp_path):
    """A tcp:// engine cannot see this machine's files: no bind mounts, the job travels."""
    runner = DockerRunner(host=TCP_HOST, base_image=STAND_IN, images_root=tiny_images,
                          cache_root=cache_root)
    assert not runner.engine.is_local
    env = runner.prepare("tiny")
    job = make_job(tmp_path / "job", STEP, model=b"remote model")
    argv = runner.command(env, job, "steps/01-probe.py")
    assert "create" in argv and "--mount" not in argv and argv[1:3] == ["-H", TCP_HOST]
    log = job.log_path("01-probe")
    log.write_text("host log\n")
    runner.run(env, job, "steps/01-probe.py", log, timeout=120)
    assert json.loads((job.work / "out" / "result.json").read_text())["model"] == "remote model"
    assert log.read_text().startswith("host log") and "done on" in log.read_text()
    assert engine_tcp.containers("edgekiln.step=01-probe") == []
