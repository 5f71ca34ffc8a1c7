"""edgekiln/deferred.py pieces that need no build: the device image recipe per stack, checksums."""

import hashlib

from edgekiln import deferred
from edgekiln.tensorrt import stack_for


def test_image_recipe_renders_the_rows_base_and_lock(tmp_path):
    for kind, key, base, lock_has in (("jetson", "5.1", "nvcr.io/nvidia/l4t-jetpack:r35.4.1", "numpy==1.24.4"),
                                      ("jetson", "6.1", "nvcr.io/nvidia/l4t-jetpack:r36.4.0", "cuda-python==12.6.2.post1"),
                                      ("x86", "24.12", "nvcr.io/nvidia/tensorrt:24.12-py3", "cuda-python==12.6.2.post1")):
        dest = tmp_path / key
        sha = deferred.render_image(stack_for(kind, key), dest)
        dockerfile = (dest / "Dockerfile").read_text()
        lock = (dest / "requirements.txt").read_bytes()
        assert f"FROM {base}\n" in dockerfile and lock_has in lock.decode()
        assert hashlib.sha256(lock).hexdigest() in dockerfile  # the lock-hash label is this lock's
        assert "--system-site-packages" in dockerfile and len(sha) == 64
        assert sorted(p.name for p in dest.iterdir()) == ["Dockerfile", "recipe.sha256", "requirements.txt", "smoke.py"]


def test_checksums_notice_a_changed_or_missing_file(tmp_path):
    (tmp_path / "a").write_text("1")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_text("2")
    deferred.write_sums(tmp_path)
    assert deferred.verify_sums(tmp_path) == []
    (tmp_path / "d" / "b").write_text("3")
    (tmp_path / "a").unlink()
    assert deferred.verify_sums(tmp_path) == ["a", "d/b"]
