"""One listing and hashing policy for a build's inputs (edgekiln.inputs; review finding 8)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgekiln.errors import DataError, InvalidModel
from edgekiln.inputs import onnx_external_files, tree_files
from edgekiln.request import check_image_folder
from edgekiln.store import sha256_tree

onnx = pytest.importorskip("onnx")


def _ekit():
    import ekit  # the converters' helpers (tests/conftest.py puts them on the path, as a job has them)

    return ekit


def _external_onnx(folder: Path, weights: bytes) -> Path:
    """A one-op ONNX model whose initializer lives in m.bin (as torch's dynamo export writes it)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.frombuffer(weights, np.float32).reshape(1, -1), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph)
    onnx.save_model(model, folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.bin", size_threshold=0)
    return folder / "m.onnx"


def test_onnx_external_data_is_part_of_the_model_hash(tmp_path):
    """Changing m.bin must change the version (it was a stale cache hit)."""
    model = _external_onnx(tmp_path / "a", b"\x00" * 16)
    assert onnx_external_files(model) == ["m.bin"]
    first = sha256_tree(model)
    _external_onnx(tmp_path / "a", b"\x01" * 16)
    assert sha256_tree(model) != first
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(b"\x08\x07")
    assert onnx_external_files(plain) == []


def test_onnx_external_data_is_mounted_beside_the_model(tmp_path):
    from edgekiln.runners.base import Env, Job
    from edgekiln.runners.docker import DockerRunner

    model = _external_onnx(tmp_path / "in", b"\x00" * 16)
    (tmp_path / "job" / "work").mkdir(parents=True)
    job = Job(tmp_path / "job", {"model": model, "calib": None, "val": None})
    env = Env(image="onnx", runner="docker", lock_hash="x", ref="edgekiln/onnx:x", platform="linux/amd64")
    spec = DockerRunner(host="unix:///nonexistent.sock", memory="1g").spec(env, job, "steps/01-s.py")
    mounts = {m.target: (m.source, m.read_only) for m in spec.mounts}
    assert mounts["/in/model/m.onnx"] == (model, True) and mounts["/in/model/m.bin"] == (model.parent / "m.bin", True)
    assert mounts["/job"][1] is True and mounts["/job/work"] == ((tmp_path / "job" / "work").resolve(), False)


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path):
    model = _external_onnx(tmp_path / "a", b"\x00" * 16)
    (tmp_path / "a" / "m.bin").rename(tmp_path / "m.bin")
    (tmp_path / "a" / "m.bin").symlink_to(tmp_path / "m.bin")
    with pytest.raises(InvalidModel, match="not a plain file"):
        sha256_tree(model)


@pytest.mark.parametrize("links", [["loop"], ["a", "b"], ["sub"]])
def test_links_in_an_image_folder_are_refused_at_once(tmp_path, links):
    """A loop (``loop -> .``) gave the same photo 41 times; two loops hung the source step; a
    linked folder was used but not hashed (and missing under Docker)."""
    val, real = tmp_path / "val", tmp_path / "real"
    val.mkdir()
    real.mkdir()
    (val / "one.jpg").write_bytes(b"x")
    (real / "two.jpg").write_bytes(b"y")
    for name in links:
        (val / name).symlink_to(real if name == "sub" else val)
    t0 = time.monotonic()
    with pytest.raises(DataError, match="symbolic link"):
        check_image_folder(val, "--val")
    with pytest.raises(DataError, match="symbolic link"):
        sha256_tree(val, "--val")
    assert time.monotonic() - t0 < 2
    # the steps' own listing does not follow links either: one image, once
    assert [p.name for p in _ekit().list_images(val)] == ["one.jpg"]


def test_a_linked_folder_itself_is_fine(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.jpg").write_bytes(b"x")
    (tmp_path / "val").symlink_to(real)
    check_image_folder(tmp_path / "val", "--val")
    assert [p.name for p in tree_files((tmp_path / "val").resolve(), "--val")] == ["a.jpg"]


def test_container_limits_are_in_the_command(tmp_path):
    """review finding 12: no --pids-limit, memory cap or read-only root before."""
    from edgekiln.docker import DockerEngine
    from edgekiln.runners.base import Env, Job
    from edgekiln.runners.docker import DockerRunner

    (tmp_path / "job" / "work").mkdir(parents=True)
    job = Job(tmp_path / "job", {"model": None, "calib": None, "val": None})
    env = Env(image="onnx", runner="docker", lock_hash="x", ref="edgekiln/onnx:x", platform="linux/amd64")
    runner = DockerRunner(host="unix:///nonexistent.sock", memory="3g")
    argv = DockerEngine("unix:///nonexistent.sock").run_argv(runner.spec(env, job, "steps/01-s.py"))
    text = " ".join(argv)
    for flag in ("--pids-limit 4096", "--memory 3g", "--read-only", "--tmpfs /tmp:", "--cap-drop ALL",
                 "--security-opt no-new-privileges", "--network none"):
        assert flag in text, flag
    assert "source=" + str((tmp_path / "job").resolve()) + ",target=/job,readonly" in text
    runner.gpus = "all"
    assert "--read-only" not in DockerEngine("unix:///x.sock").run_argv(runner.spec(env, job, "steps/01-s.py"))
