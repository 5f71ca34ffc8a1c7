"""Fixtures for tests against a real Docker engine.

The engine is the client's default (DOCKER_HOST or the local socket). When none answers the
tests SKIP — unless EDGEKILN_REQUIRE_DOCKER=1 (CI: .ci/run starts one with .ci/docker-up.sh),
then they FAIL. Images are built once per session (and reused across sessions: tags are content
hashes), on the stand-in base that .ci/docker-up.sh imports.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from edgekiln.docker import DockerEngine
from edgekiln.errors import EnvironmentFailed
from edgekiln.runners.base import Job

STAND_IN = os.environ.get("EDGEKILN_TEST_BASE", "edgekiln/stand-in-base:bookworm")
SECOND_HOST = os.environ.get("EDGEKILN_SECOND_DOCKER_HOST", "unix:///run/edgekiln-docker2.sock")
TCP_HOST = os.environ.get("EDGEKILN_TCP_DOCKER_HOST", "tcp://127.0.0.1:23750")  # the same engine
REQUIRED = os.environ.get("EDGEKILN_REQUIRE_DOCKER") == "1"


def _unavailable(why: str):
    if REQUIRED:
        pytest.fail(f"EDGEKILN_REQUIRE_DOCKER=1 but {why} (start it with .ci/docker-up.sh)",
                    pytrace=False)
    pytest.skip(f"{why} (start it with .ci/docker-up.sh; EDGEKILN_REQUIRE_DOCKER=1 fails instead)")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def engine():
    eng = DockerEngine(check_timeout=10)
    try:
        eng.check()
    except EnvironmentFailed as exc:
        _unavailable(exc.message)
    if not eng.has_image(STAND_IN):
        _unavailable(f"the engine at {eng.where} lacks the base image {STAND_IN}")
    yield eng
    eng.cleanup()
    _remove_test_images(eng)


def _remove_test_images(eng: DockerEngine) -> None:
    """The small recipes get a new tag every session: remove them (images/onnx stays cached)."""
    for repo in ("edgekiln/tiny", "edgekiln/broken"):
        for ref in eng.images(repo):
            eng.remove_image(ref)


@pytest.fixture(scope="session")
def engine2():
    """The second daemon of .ci/docker-up.sh --second: a second host."""
    eng = DockerEngine(SECOND_HOST, check_timeout=10)
    try:
        eng.check()
    except EnvironmentFailed as exc:
        _unavailable(f"no second engine: {exc.message}")
    if not eng.has_image(STAND_IN):
        _unavailable(f"the engine at {SECOND_HOST} lacks {STAND_IN}")
    yield eng
    eng.cleanup()
    _remove_test_images(eng)


@pytest.fixture(scope="session")
def engine_tcp(engine2):
    """The second engine over loopback TCP: to edgekiln a host that does not share its files."""
    eng = DockerEngine(TCP_HOST, check_timeout=10)
    try:
        eng.check()
    except EnvironmentFailed as exc:
        _unavailable(f"the second engine does not listen on TCP: {exc.message}")
    yield eng
    eng.cleanup()


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("edgekiln-cache")


@pytest.fixture(scope="session")
def onnx_image(engine, cache_root):
    """images/onnx built on the stand-in base (once; an existing tag is reused)."""
    from edgekiln.images import ensure_image

    ctx, _built = ensure_image(engine, "onnx", base=STAND_IN, root=cache_root, timeout=900)
    return ctx


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory):
    """An images/ tree with small recipes (no pip): `tiny` (a fresh tag every session, so it
    really builds) and `broken` (its build fails)."""
    root = tmp_path_factory.mktemp("images")
    (root / "_bases.toml").write_text(
        f'[tiny]\nbase = "{STAND_IN}"\nplatforms = ["linux/amd64", "linux/arm64"]\n'
        f'[broken]\nbase = "{STAND_IN}"\nplatforms = ["linux/amd64"]\n')
    tiny = root / "tiny"
    tiny.mkdir()
    (tiny / "requirements.txt").write_text("# nothing\n")
    (tiny / "nonce.txt").write_text(uuid.uuid4().hex + "\n")
    (tiny / "smoke.py").write_text("import json, sys; print(json.dumps({'smoke': 'tiny'}))\n")
    (tiny / "Dockerfile.jinja").write_text(
        "FROM {{ base }}\nCOPY nonce.txt smoke.py /opt/edgekiln/\n"
        "RUN mkdir -p /opt/venv/bin && ln -s /usr/bin/python3 /opt/venv/bin/python\n"
        "LABEL edgekiln.lock-hash={{ lock_hash | tojson }}\n")
    broken = root / "broken"
    broken.mkdir()
    (broken / "requirements.txt").write_text("# nothing\n")
    (broken / "Dockerfile.jinja").write_text(
        "FROM {{ base }}\nRUN echo 'this recipe is broken' && exit 3\n")
    return root


def make_job(root: Path, script: str, *, model: bytes = b"not really a model",
             calib: bool = True) -> Job:
    """A job dir with one step script and read-only inputs beside it."""

    (root / "steps").mkdir(parents=True)
    (root / "work").mkdir(parents=True)
    (root / "logs").mkdir()
    (root / "steps" / "01-probe.py").write_text(script)
    inputs = root.parent / (root.name + "-inputs")
    inputs.mkdir()
    (inputs / "model.onnx").write_bytes(model)
    calib_dir = None
    if calib:
        calib_dir = inputs / "calib"
        calib_dir.mkdir()
        (calib_dir / "a.jpg").write_bytes(b"jpeg")
    return Job(root=root, inputs={"model": inputs / "model.onnx", "calib": calib_dir, "val": None})
