"""The output tree: atomic publish, never overwritten, latest, content hashes, model roots."""

import os

import pytest

from edgekiln.errors import PublishConflict, UsageError
from edgekiln.store import cache_state, location, publish, sha256_tree


def stage(loc, name, content):
    folder = loc.model_dir / f".stage-{name}"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_text(content)
    (folder / "manifest.json").write_text('{"build_key": "%s"}' % content)
    return folder


def test_publish_new_version_then_add_artifact(tmp_path):
    loc = location(tmp_path, "m", "v1")
    published = publish(loc, {("onnx", "fp32"): stage(loc, "a", "k1")})
    assert published == [loc.artifact_dir("onnx", "fp32")]
    assert (loc.model_dir / "latest").resolve() == loc.version_dir.resolve()
    assert cache_state(loc, "onnx", "fp32", "k1") == "hit"
    assert cache_state(loc, "onnx", "int8", "k2") == "new"
    with pytest.raises(PublishConflict, match="never overwritten"):
        cache_state(loc, "onnx", "fp32", "other")
    publish(loc, {("onnx", "int8"): stage(loc, "b", "k2")})
    assert (loc.artifact_dir("onnx", "int8") / "model.onnx").read_text() == "k2"
    assert (loc.artifact_dir("onnx", "fp32") / "model.onnx").read_text() == "k1"
    assert not [p for p in loc.model_dir.iterdir() if p.name.startswith(".")]


def test_latest_follows_newest(tmp_path):
    for version in ("v1", "v2"):
        loc = location(tmp_path, "m", version)
        publish(loc, {("onnx", "fp32"): stage(loc, version, version)})
    assert os.readlink(tmp_path / "m" / "latest") == "v2"


@pytest.mark.parametrize("version", ["..", ".", "a/b", "latest", ".hidden", ""])
def test_bad_versions(tmp_path, version):
    with pytest.raises(UsageError):
        location(tmp_path, "m", version)


def test_tree_hash_sees_content_and_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"1")
    first = sha256_tree(tmp_path / "a")
    (tmp_path / "a" / "x.jpg").write_bytes(b"2")
    second = sha256_tree(tmp_path / "a")
    (tmp_path / "a" / "x.jpg").rename(tmp_path / "a" / "y.jpg")
    assert len({first, second, sha256_tree(tmp_path / "a")}) == 3


def test_publish_race_with_other_inputs_is_a_conflict(tmp_path):
    """review finding 6: two builds of one --version with different inputs both passed the cache
    check; the one publishing second must fail (exit 12), not return a manifest nobody published."""
    loc = location(tmp_path, "m", "v1")
    publish(loc, {("onnx", "fp32"): stage(loc, "a", "k1")})
    late = {("onnx", "int8"): stage(loc, "b", "k3"), ("onnx", "fp32"): stage(loc, "c", "k2")}
    with pytest.raises(PublishConflict, match="parallel build"):
        publish(loc, late)
    assert (loc.artifact_dir("onnx", "fp32") / "model.onnx").read_text() == "k1"
    assert not loc.artifact_dir("onnx", "int8").exists()  # all or none
    assert publish(loc, {("onnx", "fp32"): stage(loc, "d", "k1")}) == []  # the same build: fine


def test_latest_as_a_folder_is_refused_before_publishing(tmp_path):
    loc = location(tmp_path, "m", "v1")
    (loc.model_dir / "latest").mkdir(parents=True)
    with pytest.raises(UsageError, match="latest"):
        publish(loc, {("onnx", "fp32"): stage(loc, "a", "k1")})
    assert not loc.version_dir.exists()
    assert not [p for p in loc.model_dir.iterdir() if p.name.startswith(".latest")]


@pytest.mark.parametrize("version", ["1\n<img src=x onerror=alert(1)>", "-rf", "a b", "v1\x1b[31m", "x" * 101])
def test_versions_are_one_plain_word(tmp_path, version):
    """review finding 11: a newline in a version broke the release's own SHA256SUMS."""
    with pytest.raises(UsageError, match="cannot name a folder"):
        location(tmp_path, "m", version)
