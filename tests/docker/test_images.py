"""Images from recipes on a real engine: build, tag reuse, smoke tests, failures, platforms."""

from __future__ import annotations

import shutil
import uuid

import pytest

from edgekiln.docker import DockerEngine
from edgekiln.errors import EnvironmentFailed
from edgekiln.images import ensure_image, list_images, render_context, smoke_test

from .conftest import STAND_IN


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
    rows = {r.name: r for r in list_images(engine, base=STAND_IN, images_root=tiny_images)}
    assert rows["tiny"].built is True and rows["tiny"].size > 0
    assert rows["tiny"].tag == first.tag and rows["tiny"].platform == "linux/amd64"
    assert rows["broken"].built is False


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
                                                                        cache_root):
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
