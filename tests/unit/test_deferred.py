"""edgekiln/deferred.py pieces that need no build: the device image recipe per stack, checksums."""

import hashlib

import pytest

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


def test_device_image_installs_venv_support_before_making_the_venv(tmp_path):
    """Ubuntu's python3 (NVIDIA's bases) has no ensurepip without python3-venv."""
    for kind, key in (("jetson", "5.1"), ("jetson", "6.1"), ("x86", "24.12")):
        deferred.render_image(stack_for(kind, key), tmp_path / key)
        text = (tmp_path / key / "Dockerfile").read_text()
        assert "import ensurepip" in text and "apt-get install -y --no-install-recommends python3-venv" in text
        assert text.index("python3-venv python3-pip") < text.index("python3 -m venv --system-site-packages")


def test_checksums_notice_a_file_they_do_not_list(tmp_path):
    """An added device/json.py would shadow the standard library of the device scripts."""
    (tmp_path / "device").mkdir()
    (tmp_path / "device" / "preflight.py").write_text("print(1)")
    deferred.write_sums(tmp_path)
    (tmp_path / "device" / "json.py").write_text("import os")
    assert deferred.verify_sums(tmp_path) == ["device/json.py (not listed)"]


def fake_bundle(root):
    """The smallest pending bundle finish accepts: the real preflight.py, a bundle.json, SHA256SUMS."""
    import json
    import shutil

    from edgekiln.resources import data_dir
    from edgekiln.tensorrt import made_for

    folder = root / "m" / "v1" / "jetson" / "fp16"
    (folder / "device").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"status": "pending-device", "deferred": {}}))
    (folder / "device" / "bundle.json").write_text(json.dumps({"made_for": made_for(stack_for("jetson"))}))
    shutil.copy2(data_dir("converters") / "trt" / "preflight.py", folder / "device" / "preflight.py")
    deferred.write_sums(folder)
    return folder


def test_finish_runs_the_scripts_isolated_and_refuses_without_tensorrt(tmp_path, monkeypatch):
    """python -I: a json.py on PYTHONPATH does not replace the standard library's; no TensorRT here is
    the device refusing the bundle (exit 14), with the log kept nowhere and the bundle untouched."""
    from edgekiln.errors import DeviceRefused

    folder = fake_bundle(tmp_path)
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "json.py").write_text(f"open({str(tmp_path / 'RAN')!r}, 'w').close()\nfrom _json import *\n")
    monkeypatch.setenv("PYTHONPATH", str(planted))
    before = (folder / "SHA256SUMS").read_text()
    with pytest.raises(DeviceRefused) as e:
        deferred.finish(folder)
    assert e.value.exit_code == 14 and "no TensorRT on this device" in e.value.line()
    assert not (tmp_path / "RAN").exists()
    assert (folder / "SHA256SUMS").read_text() == before and deferred.verify_sums(folder) == []
    assert not list(folder.parent.glob(".finish-*"))


@pytest.mark.parametrize("url,expected", [
    ("ssh://", "is not ssh://[user@]host[:port]"),
    ("http://orin", "is not ssh://[user@]host[:port]"),
    ("ssh://nvidia@orin/home", "is not ssh://[user@]host[:port]"),
    ("ssh://-oProxyCommand=touch%20x", "is not ssh://[user@]host[:port]"),
    ("docker+http://orin", "is not docker+ssh://, docker+tcp:// or docker+unix://"),
    ("ssh://nvidia@orin?pyhton=/usr/bin/python3", "unknown setting(s) pyhton"),
])
def test_a_bad_device_url_is_one_line(url, expected):
    from edgekiln.device import device_for
    from edgekiln.errors import UsageError

    with pytest.raises(UsageError) as e:
        device_for(url)
    assert expected in e.value.line()


def test_device_url_settings():
    from edgekiln.device import device_for

    dev = device_for("ssh://nvidia@orin:2222?python=/usr/bin/python3.10")
    assert dev.ssh[-1] == "nvidia@orin" and ["-p", "2222"] == dev.ssh[dev.ssh.index("-p"):dev.ssh.index("-p") + 2]
    assert dev.python == "/usr/bin/python3.10" and not dev.docker and dev.where == "device ssh://nvidia@orin:2222"
    assert device_for("ssh://orin?docker").docker and device_for(None) is None


def test_an_int8_engine_is_checked_by_its_raw_cosine_floor_on_the_device():
    from edgekiln.deferred import device_thresholds

    # int8 rows carry task gates (docs/gates.md); the device check still gets a cosine floor
    got = device_thresholds({"min_raw_cosine": 0.9, "min_top1_agreement": 0.8, "min_det_map50": 0.95})
    assert got == {"min_cosine": 0.9, "min_top1_agreement": 0.8}
    assert device_thresholds({"min_cosine": 0.999, "min_raw_cosine": 0.5}) == {"min_cosine": 0.999}
