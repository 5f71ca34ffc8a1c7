"""The demo/bench data fetched from package indexes is pinned: bytes that do not match the sha256
are refused with one line and never cached."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from edgekiln import demo
from edgekiln.errors import DataError


def _tarball(path):
    with tarfile.open(path, "w:gz") as tf:
        data = b"\xff\xd8not really a jpeg"
        info = tarfile.TarInfo("package/demo/sample1.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return path


def test_npm_tarball_is_refused_unless_its_sha256_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path / "cache"))
    tgz = _tarball(tmp_path / "face-api-0.tgz")
    monkeypatch.setitem(demo.NPM, "@vladmandic/face-api", ("0", tgz.as_uri(), "0" * 64))
    with pytest.raises(DataError, match="does not match its pinned sha256"):
        demo.npm_tarball("@vladmandic/face-api")
    assert not list((tmp_path / "cache").rglob("*.tgz"))
    sha = hashlib.sha256(tgz.read_bytes()).hexdigest()
    monkeypatch.setitem(demo.NPM, "@vladmandic/face-api", ("0", tgz.as_uri(), sha))
    got = demo.npm_tarball("@vladmandic/face-api")
    assert got.read_bytes() == tgz.read_bytes() and got.is_relative_to(tmp_path / "cache")


def test_an_unreachable_registry_is_one_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKILN_CACHE", str(tmp_path / "cache"))
    missing = (tmp_path / "gone.tgz").as_uri()
    monkeypatch.setitem(demo.NPM, "@vladmandic/face-api", ("0", missing, "0" * 64))
    with pytest.raises(DataError, match="could not download @vladmandic/face-api@0 from the npm registry"):
        demo.npm_tarball("@vladmandic/face-api")
