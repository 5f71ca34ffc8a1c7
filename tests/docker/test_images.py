"""Images from recipes on a real engine: build, tag reuse, smoke tests, failures, platforms."""

from __future__ import annotations

import shutil
import uuid

import pytest

from edgekiln.docker import DockerEngine
from edgekiln.errors import EnvironmentFailed
from edgekiln.images import BASE_ENV, ensure_image, list_images, render_context, smoke_test
from edgekiln.runners.base import Env, Runner
from edgekiln.runners.docker import DockerRunner

from .conftest import STAND_IN, make_job


def test_onnx_image_builds_on_stand_in_base_and_passes_its_smoke_test(engine, onnx_image):
    data = engine.image_inspect(onnx_image.tag)
    labels = data["Config"]["Labels"]
    assert labels["edgekiln.lock-hash"] == onnx_image.lock_hash
    assert labels["edgekiln.image"] == "onnx"
    assert labels["org.opencontainers.image.base.name"] == STAND_IN
    assert labels["edgekiln.version"] and labels["org.opencontainers.image.source"]
    assert data["Architecture"] == "amd64"
    smoke = smoke_test(engine, onnx_image)
    assert smoke["ok"] is True and smoke["onnxruntime"] and smoke["onnx"]


def test_tag_is_stable_and_an_existing_tag_is_not_rebuilt(engine, tiny_images, cache_root,
                                                          tmp_path):
    shared, tiny_images = tiny_images, tmp_path / "images"  # a recipe never built before
    shutil.copytree(shared, tiny_images)
    (tiny_images / "tiny" / "nonce.txt").write_text(uuid.uuid4().hex + "\n")
    first, built = ensure_image(engine, "tiny", images_root=tiny_images, root=cache_root)
    assert built, "a fresh recipe must be built"
    again = render_context("tiny", platform=first.platform, images_root=tiny_images,
                           root=cache_root)
    assert again.tag == first.tag and again.directory == first.directory
    second, built = ensure_image(engine, "tiny", images_root=tiny_images, root=cache_root)
    assert (second.tag, built) == (first.tag, False)
    assert first.build_log.is_file() and first.build_script.is_file()
    # another base is another image
    other = render_context("tiny", base="python:3.11-slim-bookworm", platform=first.platform,
                           images_root=tiny_images, root=cache_root)
    assert other.tag != first.tag
    rows = {(r.name, r.platform): r for r in list_images(engine, base=STAND_IN,
                                                          images_root=tiny_images)}
    assert set(rows) == {("tiny", "linux/amd64"), ("tiny", "linux/arm64"), ("broken", "linux/amd64")}
    tiny = rows[("tiny", first.platform)]
    assert tiny.built is True and tiny.size > 0 and tiny.tag == first.tag
    assert tiny.built_platform == first.platform == engine.check().platform  # what the engine says
    foreign = rows[("tiny", "linux/arm64" if first.platform == "linux/amd64" else "linux/amd64")]
    assert foreign.tag != first.tag and foreign.built is False and foreign.built_platform is None
    assert rows[("broken", "linux/amd64")].built is False


def test_planned_env_is_exactly_what_prepare_builds(engine, tiny_images, cache_root, tmp_path,
                                                     monkeypatch):
    """The dry run's commands: planned_env (nothing built) gives the Env, hence the argument
    list, that prepare (a real build) gives."""
    monkeypatch.delenv(BASE_ENV, raising=False)
    root = tmp_path / "images"
    shutil.copytree(tiny_images, root)
    (root / "tiny" / "nonce.txt").write_text(uuid.uuid4().hex + "\n")  # never built before
    runner = DockerRunner(engine=engine, cache_root=cache_root, images_root=root)
    job = make_job(tmp_path / "job", "print(1)\n")
    planned = runner.planned_env("tiny")
    argv = runner.command(planned, job, "steps/01-probe.py")
    assert not engine.has_image(planned.ref), "planning must not build"
    env = runner.prepare("tiny")
    assert engine.has_image(env.ref)
    assert env == planned and runner.command(env, job, "steps/01-probe.py") == argv


class _Local(Runner):  # the fallback's side is not under test here: what it is asked is
    name = "local"

    def prepare(self, image, on_line=None, *, local_ok=True):
        assert local_ok, "a step that cannot be local must never reach the local runner"
        return self.planned_env(image)

    def planned_env(self, image, platform=None):
        return Env(image=image, runner="local", lock_hash="x", ref="/venv/bin/python")

    def command(self, env, job, script):
        return [env.ref, script]

    def run(self, env, job, script, log, on_line=None, timeout=None):
        raise AssertionError("not run here")


def test_auto_never_sends_an_image_without_a_local_venv_to_one(engine, tiny_images, cache_root,
                                                               tmp_path, monkeypatch):
    monkeypatch.delenv(BASE_ENV, raising=False)
    root = tmp_path / "images"
    shutil.copytree(tiny_images, root)
    unreachable = "localhost:1/edgekiln/no-such-base:never"  # no engine has it, no registry answers
    with open(root / "_bases.toml", "a") as fh:
        fh.write(f'[gpuonly]\nbase = "{unreachable}"\nlocal = false\n'
                 f'[plain]\nbase = "{unreachable}"\n')
    for name in ("gpuonly", "plain"):
        shutil.copytree(root / "tiny", root / name)
    runner = DockerRunner(engine=engine, cache_root=cache_root, images_root=root, fallback=_Local)
    for way, image, local_ok in [(runner.prepare, "gpuonly", True), (runner.planned_env, "gpuonly", True),
                                 (runner.prepare, "plain", False), (runner.planned_env, "plain", False)]:
        with pytest.raises(EnvironmentFailed, match="cannot have a local virtualenv") as info:
            way(image, local_ok=local_ok)  # the image's data, or the step, says so
        assert unreachable in info.value.message and "--docker-host" in info.value.hint
    lines = []
    env = runner.planned_env("plain", None, lines.append)
    assert env.runner == "local" and env == runner.prepare("plain")
    assert len(lines) == 1 and "using a local virtualenv instead" in lines[0]


def test_failing_build_is_a_clear_environment_error(engine, tiny_images, cache_root):
    with pytest.raises(EnvironmentFailed) as info:
        ensure_image(engine, "broken", images_root=tiny_images, root=cache_root)
    err = info.value
    assert "docker build of edgekiln/broken:" in err.message and "failed" in err.message
    assert "build log" in err.hint
    ctx = render_context("broken", images_root=tiny_images, root=cache_root)
    assert "this recipe is broken" in ctx.build_log.read_text()
    assert not engine.has_image(ctx.tag)


def test_missing_base_says_it_cannot_be_pulled(engine, tiny_images, cache_root):
    with pytest.raises(EnvironmentFailed) as info:
        ensure_image(engine, "tiny", base="edgekiln/no-such-base:never", images_root=tiny_images,
                     root=cache_root)
    assert "failed" in info.value.message
    assert "base image" in info.value.hint or "see the build log" in info.value.hint


def test_foreign_platform_without_buildx_and_qemu_says_what_to_install(engine, tiny_images,
                                                                        cache_root, monkeypatch, tmp_path):
    from edgekiln import emulation

    monkeypatch.setattr(emulation, "BINFMT", tmp_path)  # as on a host without QEMU (.ci/arm64-up.sh)
    engine = DockerEngine(engine.host)  # a fresh engine: no answer cached from other tests
    foreign = "linux/arm64" if engine.check().platform == "linux/amd64" else "linux/amd64"
    ok, why = engine.can_build_for(foreign)
    if ok:
        pytest.skip(f"this engine can build {foreign} ({why})")
    with pytest.raises(EnvironmentFailed) as info:
        ensure_image(engine, "tiny", platform=foreign, images_root=tiny_images, root=cache_root)
    assert "buildx" in info.value.message or "qemu" in info.value.message
    assert "--docker-host" in info.value.message


def test_engine_down_is_a_clear_environment_error(monkeypatch):
    with pytest.raises(EnvironmentFailed) as info:
        DockerEngine("unix:///nonexistent/edgekiln.sock", check_timeout=5).check()
    assert "no Docker engine answers at unix:///nonexistent/edgekiln.sock" in info.value.message
    assert "--runner local" in info.value.hint
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")
    with pytest.raises(EnvironmentFailed, match="no Docker engine answers at tcp://127.0.0.1:9"):
        with DockerEngine(check_timeout=5):
            pass
