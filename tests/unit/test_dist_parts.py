"""The pieces of builds through a broker that need no broker (edgekiln.dist*): the request as JSON,
queues, shards, the store's commit and verification. The real thing: tests/docker/test_dist.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekiln import errors
from edgekiln.dist import masked, queue_for, request_from_json, request_json
from edgekiln.dist_shard import parse_shard, shard_entries
from edgekiln.dist_store import DirBackend, fetch_build, get_input, has_build, open_store, put_build, put_input
from edgekiln.plan import Step
from edgekiln.request import BuildRequest, InputSpec
from edgekiln.store import file_entries, sha256_tree


def test_a_request_survives_json_without_its_paths(tmp_path):
    request = BuildRequest(model=Path("/a/m.onnx"), model_name="m", source_format="onnx", targets=("onnx", "rpi"),
                           precisions=("fp32", "int8"), input=InputSpec(shape=(1, 3, 8, 8), mean=(0.5, 0.5, 0.5),
                                                                         pad=114, resize="letterbox"),
                           calib=Path("/a/c"), options={"cpu": "x86-64-v3"}, thresholds={"int8.min_cosine": 0.9},
                           version="v1", validate_on="linux/arm64", task_params={"max_det": 10})
    data = json.loads(json.dumps(request_json(request)))
    assert "/a/" not in json.dumps(data)
    back = request_from_json(data, Path("/w/m.onnx"), Path("/w/c"), None, tmp_path, None)
    for name in request.__dataclass_fields__:
        if name not in ("model", "calib", "out"):
            assert getattr(back, name) == getattr(request, name), name


def test_queues_follow_what_the_steps_need():
    def step(**kw):
        return Step(id="02-x", kind="validate", template="t", image="onnx", target="onnx", precision="fp32",
                    params_json="{}", **kw)
    assert queue_for([step(), step(platform="linux/arm64")]) == "amd64"  # converts anywhere
    assert queue_for([step(), step(platform="linux/arm64", emulate_cpu="cortex-a76")]) == "arm64"
    assert queue_for([step(gpu=True), step(platform="linux/arm64", emulate_cpu="cortex-a76")]) == "gpu"


def test_shards_partition_the_entries():
    from types import SimpleNamespace

    matrix = SimpleNamespace(entries=list(range(7)))
    parts = [shard_entries(matrix, i, 3) for i in (1, 2, 3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert parse_shard(" 2/3 ") == (2, 3)
    for bad in ("0/3", "4/3", "1", "a/b", "1/0"):
        with pytest.raises(errors.UsageError):
            parse_shard(bad)


def test_broker_passwords_are_masked():
    assert masked("redis://:s3cret@box:6379/0") == "redis://:***@box:6379/0"
    assert masked("rediss://user:pw@box/1") == "rediss://user:***@box/1"
    assert masked("redis://box:6379/0") == "redis://box:6379/0"


def test_store_urls():
    for bad in ("", "http://box/x"):
        with pytest.raises(errors.UsageError):
            open_store(bad)
    assert isinstance(open_store("/tmp/x"), DirBackend)


def test_inputs_by_hash_verified_on_the_way_out(tmp_path):
    store = DirBackend(tmp_path / "store")
    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "1.jpg").write_bytes(b"one")
    (folder / "2.jpg").write_bytes(b"two")
    digest = sha256_tree(folder)
    key = put_input(store, folder, digest, named=False)
    assert key == f"inputs/{digest}.tar" and store.exists(key)
    got = get_input(store, digest, None, tmp_path / "cache")
    assert sha256_tree(got) == digest
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not onnx, but bytes")
    mdigest = sha256_tree(model)
    put_input(store, model, mdigest, named=True)
    assert get_input(store, mdigest, "m.onnx", tmp_path / "cache").read_bytes() == b"not onnx, but bytes"
    # another content under a hash: refused
    put_input(store, folder, mdigest, named=False)
    with pytest.raises(errors.IntegrityError):
        get_input(store, mdigest, None, tmp_path / "cache2")


def test_a_build_is_committed_by_its_manifest_and_verified(tmp_path):
    store = DirBackend(tmp_path / "store")
    art = tmp_path / "art"
    (art / "build").mkdir(parents=True)
    (art / "model.onnx").write_bytes(b"model")
    (art / "build" / "x.py").write_text("print(1)\n")
    manifest = {"build_key": "k" * 64, "files": file_entries(art, ["model.onnx"])}
    (art / "manifest.json").write_text(json.dumps(manifest))
    assert not has_build(store, "k" * 64)
    put_build(store, "k" * 64, art, "w1")
    assert has_build(store, "k" * 64)
    record = fetch_build(store, "k" * 64, tmp_path / "out")
    assert record["worker"] == "w1" and (tmp_path / "out" / "model.onnx").read_bytes() == b"model"
    # a build under another key, or a file that is not what its manifest says: refused
    with pytest.raises(errors.IntegrityError):
        put_build(store, "j" * 64, art, "w1")
        fetch_build(store, "j" * 64, tmp_path / "out2")
    (art / "model.onnx").write_bytes(b"MODEL")
    put_build(store, "k" * 64, art, "w2")
    with pytest.raises(errors.IntegrityError):
        fetch_build(store, "k" * 64, tmp_path / "out3")
