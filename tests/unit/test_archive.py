"""Reproducible archives: the same files give the same bytes whatever their mtimes, owners and modes."""

import gzip
import os
import subprocess
import tarfile
import time

from edgekiln.archive import read_sums, tar_members, write_sums, write_tar_gz

EPOCH = 1764288000  # 2025-11-28


def tree(root, stamp):
    (root / "m" / "build").mkdir(parents=True)
    (root / "m" / "model.onnx").write_bytes(b"\x08\x01model")
    (root / "m" / "build" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "m" / "build" / "run.sh", 0o775)
    os.chmod(root / "m" / "model.onnx", 0o600)
    for p in (root / "m").rglob("*"):
        os.utime(p, (stamp, stamp))
    return [("rel-1/m/model.onnx", root / "m" / "model.onnx"), ("rel-1/m/build/run.sh", root / "m" / "build" / "run.sh")]


def test_same_files_same_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    out_a = write_tar_gz(tmp_path / "a.tar.gz", tree(a, 1_000_000), EPOCH)
    time.sleep(0.01)
    out_b = write_tar_gz(tmp_path / "b.tar.gz", list(reversed(tree(b, 2_000_000))), EPOCH)
    assert out_a.read_bytes() == out_b.read_bytes()
    assert write_tar_gz(tmp_path / "c.tar.gz", tree(tmp_path / "c", 3), EPOCH + 1).read_bytes() != out_a.read_bytes()


def test_normalised_headers(tmp_path):
    path = write_tar_gz(tmp_path / "x.tar.gz", tree(tmp_path / "t", 5), EPOCH)
    raw = path.read_bytes()
    assert raw[:3] == b"\x1f\x8b\x08" and raw[3] == 0, "gzip FLG: no file name"
    assert raw[4:8] == b"\0\0\0\0", "gzip mtime 0"
    with tarfile.open(path) as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == ["rel-1", "rel-1/m", "rel-1/m/build", "rel-1/m/build/run.sh", "rel-1/m/model.onnx"]
    for info in infos:
        assert (info.uid, info.gid, info.uname, info.gname, info.mtime) == (0, 0, "", "", EPOCH)
    modes = {i.name: i.mode for i in infos}
    assert modes["rel-1/m/build/run.sh"] == 0o755 and modes["rel-1/m/model.onnx"] == 0o644 and modes["rel-1"] == 0o755
    assert set(tar_members(path)) == {"rel-1/m/build/run.sh", "rel-1/m/model.onnx"}
    assert gzip.decompress(raw)  # a plain gzip stream


def test_sums_are_sha256sum_compatible(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a b.bin").write_bytes(b"x")
    (tmp_path / "z.txt").write_text("z")
    sums = write_sums(tmp_path, ["z.txt", "d/a b.bin"])
    assert list(read_sums(sums)) == ["d/a b.bin", "z.txt"]
    proc = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp_path / "z.txt").write_text("Z")
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=tmp_path, capture_output=True).returncode != 0
