"""`edgekiln finish --device docker+...`: a TensorRT bundle finished through a second, real Docker engine
(the one .ci/docker-up.sh starts; no GPU, no NVIDIA runtime, no TensorRT): the refusals, and the
transport (docker cp in, the step's output streamed, only the step's files out)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from edgekiln import deferred
from edgekiln.device import DockerDevice
from edgekiln.errors import DeviceRefused, EnvironmentFailed
from edgekiln.resources import data_dir
from edgekiln.tensorrt import made_for, stack_for
from tests.conftest import run_cli
from tests.docker.conftest import SECOND_HOST, STAND_IN

URL = f"docker+{SECOND_HOST}"


@pytest.fixture
def second(engine):
    proc = subprocess.run(["docker", "-H", SECOND_HOST, "image", "inspect", STAND_IN], capture_output=True)
    if proc.returncode != 0:
        pytest.fail(f"the second engine {SECOND_HOST} lacks {STAND_IN} (.ci/docker-up.sh imports it)")
    return SECOND_HOST


def bundle(root, kind):
    """A pending bundle with the real preflight.py (what runs first on a device)."""
    folder = root / "m" / "v1" / kind / "fp16"
    (folder / "device" / "image").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"status": "pending-device", "deferred": {}}))
    (folder / "device" / "bundle.json").write_text(json.dumps({"made_for": made_for(stack_for(kind))}))
    (folder / "device" / "image" / "recipe.sha256").write_text("0" * 64 + "\n")
    shutil.copy2(data_dir("converters") / "trt" / "preflight.py", folder / "device" / "preflight.py")
    deferred.write_sums(folder)
    return folder


def _ours():
    out = subprocess.run(["docker", "-H", SECOND_HOST, "ps", "-aq", "--filter", f"ancestor={STAND_IN}"],
                         capture_output=True, text=True).stdout.split()
    return set(out)


def test_a_docker_engine_without_the_nvidia_runtime_is_refused(second, tmp_path):
    folder = bundle(tmp_path, "jetson")
    before = (folder / "SHA256SUMS").read_text()
    proc = run_cli("finish", folder, "--device", URL, env={"EDGEKILN_TRT_IMAGE": STAND_IN})
    assert proc.returncode == 14, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert f"device {URL}: that Docker engine has no NVIDIA container runtime (runtimes: " in line
    assert (folder / "SHA256SUMS").read_text() == before and not list(folder.parent.glob(".finish-*"))


def test_a_docker_engine_that_cannot_give_a_gpu_is_refused(second, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKILN_TRT_IMAGE", STAND_IN)
    before = _ours()
    with pytest.raises(DeviceRefused, match="cannot give a container the NVIDIA GPU"):
        deferred.finish(bundle(tmp_path, "x86"), device=DockerDevice(URL))
    assert _ours() == before  # its container is removed


def test_the_docker_transport_runs_preflight_there_no_tensorrt(second, tmp_path, monkeypatch):
    """The GPU flags left out (this engine has no GPU): the bundle goes in with docker cp, preflight
    runs in the container, says there is no TensorRT on that device, and nothing is left behind."""
    monkeypatch.setenv("EDGEKILN_TRT_IMAGE", STAND_IN)
    folder = bundle(tmp_path, "x86")
    dev = DockerDevice(URL)
    dev.gpu_flags = lambda: []
    before = _ours()
    with pytest.raises(DeviceRefused) as e:
        deferred.finish(folder, device=dev)
    assert f"device {URL}: the device refused the bundle: no TensorRT on this device" in e.value.line()
    assert deferred.verify_sums(folder) == [] and _ours() == before


def test_docker_fetch_brings_back_only_the_steps_files(second, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKILN_TRT_IMAGE", STAND_IN)
    stage = bundle(tmp_path, "x86")
    (stage / "device" / "plant.py").write_text(
        "import os\nopen('check.json', 'w').write('{}')\nos.symlink('/etc/passwd', 'engine.json')\nprint('planted')\n")
    dev = DockerDevice(URL)
    dev.gpu_flags = lambda: []
    dev.ship(stage, [])
    code, lines = dev.run(stage, "check", "device/plant.py", tmp_path / "plant.log")
    assert code == 0 and lines == ["planted"] and (tmp_path / "plant.log").read_text() == "planted\n"
    back = tmp_path / "back"
    dev.fetch(back, ("check.json",))
    assert (back / "check.json").read_text() == "{}"
    with pytest.raises(EnvironmentFailed, match="not one of the files"):
        dev.fetch(back, ("engine.json",))
    assert not (back / "engine.json").exists()
    dev.close()
    assert dev.current not in _ours()
