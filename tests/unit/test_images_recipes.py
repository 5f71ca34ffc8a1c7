"""Image recipes without Docker: base references, rendering, tags, local wheels, hosts."""

from __future__ import annotations

import shutil
import stat

import pytest

from edgekiln.docker import (DockerEngine, Mount, RunSpec, _mount_arg, load_host_map,
                             resolve_host, write_script)
from edgekiln.errors import UsageError
from edgekiln.images import (check_base, local_wheels, pinned, recipes, render,
                             render_context)
from edgekiln.resources import data_dir


@pytest.mark.parametrize("ref", [
    "python:3.11-slim-bookworm", "nvcr.io/nvidia/l4t-jetpack:r36.4.0",
    "nvcr.io/nvidia/tensorrt:24.12-py3", "edgekiln/stand-in-base:bookworm",
    "localhost:5000/a/b_c:1.0", "ubuntu@sha256:" + "a" * 64, "registry.example.com/x/y"])
def test_good_base_references(ref):
    assert check_base(ref) == ref


@pytest.mark.parametrize("ref", [
    "python:3.11\nRUN curl evil | sh", "python 3.11", "", "Python:3", "a;b", "$BASE",
    'python"', "python:3.11 AS x", "-rf"])
def test_bad_base_references_never_reach_a_from_line(ref):
    with pytest.raises(UsageError):
        check_base(ref)


def test_every_recipe_has_a_pinned_base_a_lock_and_a_smoke_test():
    found = recipes()
    assert {"onnx", "torch"} <= set(found)
    for recipe in found.values():
        assert recipe.lock.is_file(), recipe.name
        assert (recipe.directory / "smoke.py").is_file(), recipe.name
        files = render(recipe, platform=recipe.platforms[0])
        dockerfile = files["Dockerfile"].decode()
        assert dockerfile.count(f"FROM {recipe.base}") >= 1
        assert "edgekiln.lock-hash=" in dockerfile and recipe.lock_hash() in dockerfile
        assert "Dockerfile.jinja" not in files


@pytest.fixture()
def images_copy(tmp_path):
    root = tmp_path / "images"
    shutil.copytree(data_dir("images"), root)
    return root


def test_tag_is_a_content_hash(images_copy, tmp_path):
    kw = dict(platform="linux/amd64", images_root=images_copy, root=tmp_path / "c", wheel_dirs=[])
    a = render_context("onnx", **kw)
    assert a.tag == render_context("onnx", **kw).tag
    assert a.tag.startswith("edgekiln/onnx:") and len(a.tag.split(":")[1]) == 12
    assert (a.directory / "Dockerfile").is_file() and (a.directory / "wheelhouse").is_dir()
    assert render_context("onnx", base="debian:bookworm", **kw).tag != a.tag
    assert render_context("onnx", **{**kw, "platform": "linux/arm64"}).tag != a.tag
    lock = images_copy / "onnx" / "requirements.txt"
    lock.write_text(lock.read_text() + "extra-package==1.0\n")
    changed = render_context("onnx", **kw)
    assert changed.tag != a.tag and changed.lock_hash != a.lock_hash


def test_unknown_platform_and_image(images_copy, tmp_path):
    with pytest.raises(UsageError, match="not made for"):
        render_context("onnx", platform="linux/s390x",
                       images_root=images_copy, root=tmp_path)
    with pytest.raises(UsageError, match="unknown image"):
        render_context("nope", images_root=images_copy, root=tmp_path)


def test_local_wheels_match_pins_and_platform(tmp_path):
    house = tmp_path / "wheels"
    house.mkdir()
    for name in ["torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_aarch64.whl",
                 "torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "typing_extensions-4.16.0-py3-none-any.whl", "other-1.0-py3-none-any.whl"]:
        (house / name).write_bytes(b"x")
    lock = tmp_path / "requirements.txt"
    lock.write_text("# lock\ntorch==2.13.0\ntyping-extensions==4.16.0 ; python_version>'3'\n")
    assert pinned(lock) == {"torch": "2.13.0", "typing-extensions": "4.16.0"}
    names = [w.name for w in local_wheels(lock, "linux/amd64", [house])]
    assert names == ["torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                     "typing_extensions-4.16.0-py3-none-any.whl"]
    arm = [w.name for w in local_wheels(lock, "linux/arm64", [house])]
    assert "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_aarch64.whl" in arm
    lock.write_text("torch==2.13.0+cu130\n")
    assert local_wheels(lock, "linux/amd64", [house]) == []


def test_host_resolution_and_host_map(tmp_path):
    hosts = {"jetson": "ssh://nvidia@orin", "*": "tcp://box:2376"}
    assert resolve_host("jetson", None, hosts) == "ssh://nvidia@orin"
    assert resolve_host("onnx", None, hosts) == "tcp://box:2376"
    assert resolve_host("jetson", "unix:///x.sock", hosts) == "unix:///x.sock"
    assert resolve_host("onnx", None, {}) is None
    cfg = tmp_path / "edgekiln.toml"
    cfg.write_text('[docker.hosts]\njetson = "ssh://nvidia@orin"\n')
    assert load_host_map(cfg) == {"jetson": "ssh://nvidia@orin"}
    assert load_host_map(tmp_path / "missing.toml") == {}


def test_run_argv_is_locked_down_and_scripts_quote(tmp_path):
    eng = DockerEngine("ssh://me@box")
    spec = RunSpec(image="edgekiln/onnx:abc", command=("python", "a b.py"), step="01 x",
                   mounts=(Mount(tmp_path / "m,odel.onnx", "/in/model/m,odel.onnx"),),
                   env={"EKIT_PATHS": '{"model": "/in/model/x"}'}, user="1000:1000",
                   memory="1g", platform="linux/arm64")
    argv = eng.run_argv(spec, "edgekiln-x-1")
    assert argv[:3] == ["docker", "-H", "ssh://me@box"]
    assert argv[argv.index("--network") + 1] == "none"
    assert argv[argv.index("--user") + 1] == "1000:1000"
    assert argv[argv.index("--platform") + 1] == "linux/arm64"
    assert "--privileged" not in argv and "ALL" in argv
    assert _mount_arg(spec.mounts[0]).startswith('type=bind,"source=')
    assert "readonly" in _mount_arg(spec.mounts[0])
    script = write_script(tmp_path / "s.sh", [argv], "test")
    assert script.stat().st_mode & stat.S_IXUSR
    assert "'a b.py'" in script.read_text()
    assert "--network" not in eng.create_argv(spec, "n")[:3]
