"""The TensorRT targets on a machine without a GPU, for real: the CLI in a subprocess, the real
ImageNet MobileNetV2 weights and real photos, the real trtprep environment (modelopt on CPU). The
engine cannot be built here: each artifact is a deferred bundle whose workstation half (fp16 AutoCast,
int8 Q/DQ, their ONNX Runtime proxy gate, the rendered device scripts) is checked completely."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import MOBILENET, run_cli, run_json

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def built(out, weights, photos):
    calib, val = photos
    return run_json("build", "--target", "jetson", "--model", weights, *MOBILENET, "--precision", "fp16,int8",
                    "--calib", calib, "--val", val, "--name", "mobilenet_v2", "--out", out, "--runner", "local")


def folder_of(out, built, precision) -> Path:
    return out / "mobilenet_v2" / built["version"] / "jetson" / precision


def test_fp16_and_int8_pass_the_onnx_runtime_proxy_gate(built):
    arts = {a["precision"]: a for a in built["artifacts"]}
    assert arts["fp16"]["status"] == arts["int8"]["status"] == "deferred: bundle ready"
    assert arts["fp16"]["metrics"]["cosine"] > 0.999 and arts["fp16"]["metrics"]["top1_agreement"] == 1.0
    assert arts["int8"]["metrics"]["top1_agreement"] >= 0.9 and arts["int8"]["metrics"]["cosine"] > 0.9


def test_int8_is_tensorrt_legal_explicit_qdq(out, built):
    import onnx

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "converters"))
    import ekit_trt

    model = onnx.load(str(folder_of(out, built, "int8") / "model.onnx"))
    lint = ekit_trt.lint_qdq(model)
    assert lint["q"] > 50 and lint["problems"] == []
    fp16 = onnx.load(str(folder_of(out, built, "fp16") / "model.onnx"))
    types = {i.data_type for i in fp16.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types  # a typed fp16 ONNX for TensorRT 10's strong typing
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O kept


def test_bundle_is_complete_checksummed_and_truthful(out, built):
    for precision in ("fp16", "int8"):
        folder = folder_of(out, built, precision)
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["status"] == "pending-device"
        assert "model.engine" in manifest["deferred"]["missing"][0]
        assert "proxy" in manifest["validation"]["proxy"] and not (folder / "model.engine").exists()
        assert any("build_engine.py" in n for n in manifest["not_executed"])
        device = folder / "device"
        for name in ("build_engine.py", "check_engine.py", "preflight.py", "build_engine.sh", "bundle.json",
                     "reference.npz", "trtexec.txt", "image/Dockerfile", "image/requirements.txt", "image/smoke.py"):
            assert (device / name).is_file(), name
        work = manifest["deferred"]["workstation"]
        if precision == "fp16":  # AutoCast decided fp16 placement on real images, not random ones
            assert work["autocast"]["reference_inputs"].endswith("real image(s)")
        else:  # fp32 float layers: the ORT proxy cannot validate fp16 ones (docs/tensorrt.md)
            assert work["quantizer"]["high_precision"] == "fp32"
        bundle = json.loads((device / "bundle.json").read_text())
        assert bundle["made_for"]["tensorrt"] == "10.3.0" and bundle["made_for"]["l4t"] == ["36.4+"]
        assert bundle["input"] == "input" and bundle["outputs"] == ["output"]  # check_engine pairs outputs by name
        assert bundle["strongly_typed"] and "--stronglyTyped" in (device / "trtexec.txt").read_text()
        assert "FROM nvcr.io/nvidia/l4t-jetpack:r36.4.0" in (device / "image" / "Dockerfile").read_text()
        for py in ("build_engine.py", "check_engine.py", "preflight.py"):
            compile((device / py).read_text(), py, "exec")
        sums = dict(reversed(line.split("  ", 1)) for line in (folder / "SHA256SUMS").read_text().splitlines())
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS"}
        assert set(sums) == files
        for rel, sha in sums.items():
            assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == sha


def test_finish_refuses_without_tensorrt_and_keeps_the_bundle(out, built, tmp_path):
    folder = folder_of(out, built, "fp16")
    before = (folder / "SHA256SUMS").read_text()
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n")
    proc = run_cli("finish", folder, env={"EDGEKILN_NV_TEGRA_RELEASE": str(release)})
    assert proc.returncode == 14, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "no TensorRT on this device" in line and "L4T r35.4.1" in line and "Traceback" not in proc.stderr
    assert "preflight: refused" in proc.stderr  # the device step's own output, streamed
    assert (folder / "SHA256SUMS").read_text() == before and not (folder / "model.engine").exists()
    assert not list(folder.parent.glob(".finish-*"))


def test_finish_refuses_a_file_the_checksums_do_not_list(out, built, tmp_path):
    """A bundle is code: an added device/json.py would run as the standard library's json."""
    copy = tmp_path / "fp16"
    shutil.copytree(folder_of(out, built, "fp16"), copy)
    (copy / "device" / "json.py").write_text(f"open({str(tmp_path / 'RAN')!r}, 'w').close()\n")
    proc = run_cli("finish", copy)
    assert proc.returncode == 2 and "device/json.py (not listed)" in proc.stderr
    assert not (tmp_path / "RAN").exists()


def test_finish_refuses_a_changed_bundle(out, built, tmp_path):
    copy = tmp_path / "int8"
    shutil.copytree(folder_of(out, built, "int8"), copy)
    (copy / "device" / "bundle.json").write_text("{}")
    proc = run_cli("finish", copy)
    assert proc.returncode == 2 and "changed after it was made: device/bundle.json" in proc.stderr


def test_targets_say_a_deferred_bundle_is_made():
    rows = {r["name"]: r for r in run_json("targets")}
    if shutil.which("nvidia-smi") is None:
        for name in ("jetson", "x86-gpu"):
            assert rows[name]["runs_here"] is False and "deferred bundle" in rows[name]["why"]


# ---------------------------------------------------------------- bad input (each one line, its own code)


def test_unknown_jetpack(weights, photos, tmp_path):
    proc = run_cli("build", "--target", "jetson", "--jetpack", "4.6", "--model", weights, *MOBILENET,
                   "--out", tmp_path, "--runner", "local")
    assert proc.returncode == 2, proc.stderr
    assert "unknown JetPack '4.6'" in proc.stderr and "5.1, 6.0, 6.1, 6.2, 6.2.1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_int8_without_calibration(weights, photos, tmp_path):
    proc = run_cli("build", "--target", "jetson", "--model", weights, *MOBILENET, "--precision", "int8",
                   "--val", photos[1], "--out", tmp_path, "--runner", "local")
    assert proc.returncode == 6 and "int8 on jetson needs calibration images" in proc.stderr


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    """A dynamic-batch conv model and one with an operator no TensorRT parses (Unique)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    root = tmp_path_factory.mktemp("models")
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")

    def save(name, nodes, out_shape, inits):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
        model = helper.make_model(helper.make_graph(nodes, name, [x], [y], inits),
                                  opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(root / f"{name}.onnx"))
        return root / f"{name}.onnx"

    conv = save("conv", [helper.make_node("Conv", ["x", "w"], ["y"])], ["batch", 4, 30, 30], [w])
    unique = save("unique", [helper.make_node("Conv", ["x", "w"], ["c"]),
                             helper.make_node("Flatten", ["c"], ["f"], axis=0),
                             helper.make_node("Unique", ["f"], ["y"], sorted=1)], [None], [w])
    return conv, unique


def test_dynamic_batch_without_a_shape_range(small_models, photos, tmp_path):
    proc = run_cli("build", "--target", "jetson", "--model", small_models[0], "--dynamic-batch",
                   "--val", photos[1], "--out", tmp_path, "--runner", "local")
    assert proc.returncode == 7, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "dynamic dimensions" in line and "--option shapes=MIN:OPT:MAX" in line
    assert not (tmp_path / "conv").exists() or not any((tmp_path / "conv").glob("*/jetson"))


def test_an_operator_tensorrt_cannot_parse_is_named_with_the_version(small_models, photos, tmp_path):
    proc = run_cli("build", "--target", "jetson", "--jetpack", "5.1", "--model", small_models[1],
                   "--val", photos[1], "--out", tmp_path, "--runner", "local")
    assert proc.returncode == 8, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "TensorRT 8.5.2" in line and "Unique (1 node)" in line and "release/8.5-GA" in line


def test_an_int8_below_the_gate_never_leaves_the_workstation(small_models, photos, tmp_path):
    """The ORT proxy gate fails for the reason it exists: a real int8 Q/DQ of a small conv net (ONNX
    Runtime's symmetric QDQ) misses a cosine of 0.99999 (int8 rounding alone costs more), so nothing
    is published."""
    calib, val = photos
    proc = run_cli("build", "--target", "jetson", "--model", small_models[0], "--precision", "int8",
                   "--calib", calib, "--val", val, "--threshold", "int8.min_cosine=0.99999",
                   "--option", "int8_method=ort", "--option", "calibration_method=minmax",
                   "--out", tmp_path, "--runner", "local")
    assert proc.returncode == 10, proc.stderr
    assert "validation below thresholds, nothing published" in proc.stderr and "min cosine" in proc.stderr
    assert not list(tmp_path.glob("conv/*/jetson"))


def test_an_int8_without_any_qdq_is_refused(small_models, photos, tmp_path):
    """modelopt leaves a lone Conv in float: an 'int8' ONNX without Q/DQ would build a float engine."""
    calib, val = photos
    proc = run_cli("build", "--target", "jetson", "--model", small_models[0], "--precision", "int8",
                   "--calib", calib, "--val", val, "--out", tmp_path, "--runner", "local")
    assert proc.returncode == 8, proc.stderr
    assert "placed no Q/DQ node" in proc.stderr and not list(tmp_path.glob("conv/*/jetson"))


# ---------------------------------------------------------------- one command: finish on a device over ssh


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on loopback: a second "host" (this machine, without TensorRT) reached the way a
    Jetson is, with a key made here. Yields the device URL and the ssh options (EDGEKILN_SSH)."""
    import getpass
    import os
    import socket
    import subprocess
    import time

    exe = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(exe) or not shutil.which("ssh"):
        pytest.fail("sshd and ssh are needed: apt-get install openssh-server openssh-client (.ci/run installs them)")
    root = tmp_path_factory.mktemp("sshd")
    for key in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)], check=True)
    (root / "authorized_keys").write_text((root / "client.pub").read_text())
    (root / "authorized_keys").chmod(0o600)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host'}\nAuthorizedKeysFile {root / 'authorized_keys'}\n"
        f"PidFile {root / 'sshd.pid'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation folder
    log = open(root / "sshd.log", "w")
    proc = subprocess.Popen([exe, "-D", "-e", "-f", str(root / "sshd_config")], stderr=log)
    opts = (f"-i {root / 'client'} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            "-o LogLevel=ERROR")
    ssh = ["ssh", "-p", str(port), *opts.split(), "-o", "BatchMode=yes", f"{getpass.getuser()}@127.0.0.1"]
    for _ in range(50):
        if subprocess.run(ssh + ["true"], capture_output=True).returncode == 0:
            break
        time.sleep(0.2)
    else:
        proc.terminate()
        pytest.fail(f"sshd did not start: {(root / 'sshd.log').read_text()[-500:]}")
    yield {"url": f"ssh://{getpass.getuser()}@127.0.0.1:{port}", "env": {"EDGEKILN_SSH": opts}, "ssh": ssh}
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def _remote_bundles():
    return set(Path("/tmp").glob("edgekiln-bundle.*"))


def test_finish_over_ssh_on_a_device_without_tensorrt(out, built, sshd):
    """The transport and the refusal path for real: the bundle is shipped over ssh, preflight runs
    there and refuses with its own line and exit code (14); nothing changes on the workstation and
    nothing is left on the device."""
    folder = folder_of(out, built, "int8")
    before, remote_before = (folder / "SHA256SUMS").read_text(), _remote_bundles()
    proc = run_cli("finish", folder, "--device", sshd["url"], env=sshd["env"])
    assert proc.returncode == 14, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert f"device {sshd['url']}: the device refused the bundle: no TensorRT on this device" in line, line
    assert "Traceback" not in proc.stderr and "python3 -I device/preflight.py" in proc.stderr
    assert (folder / "SHA256SUMS").read_text() == before and not (folder / "model.engine").exists()
    assert not list(folder.parent.glob(".finish-*")) and _remote_bundles() == remote_before


def test_build_with_a_device_leaves_the_deferred_bundle_published_and_names_the_step(out, built, weights,
                                                                                       photos, sshd):
    """`edgekiln build --device ssh://...`: the bundle is made (here: already published, a cache hit)
    and finished on the device; a device without TensorRT leaves it published as pending, says which
    device step refused, and exits 14."""
    calib, val = photos
    proc = run_cli("build", "--target", "jetson", "--model", weights, *MOBILENET, "--precision", "fp16,int8",
                   "--calib", calib, "--val", val, "--name", "mobilenet_v2", "--out", out, "--runner", "local",
                   "--device", sshd["url"], env=sshd["env"])
    assert proc.returncode == 14, proc.stderr
    assert "the device refused the bundle: no TensorRT on this device" in proc.stderr.strip().splitlines()[-1]
    assert proc.stderr.count("stays a deferred bundle") == 2  # both precisions tried, both refused
    for precision in ("fp16", "int8"):
        manifest = json.loads((folder_of(out, built, precision) / "manifest.json").read_text())
        assert manifest["status"] == "pending-device" and "finished" not in manifest


def test_a_bad_device_url_is_refused_before_the_build(weights, tmp_path):
    proc = run_cli("build", "--target", "jetson", "--model", weights, *MOBILENET, "--out", tmp_path,
                   "--device", "scp://orin")
    assert proc.returncode == 2 and "is not ssh://[user@]host[:port]" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_ssh_transport_brings_back_only_the_files_a_step_makes(sshd, tmp_path, monkeypatch):
    """fetch() reads the device's tar member by member: the expected regular files come back; a
    symlink (or any other name) from the device is refused, never written."""
    import subprocess

    from edgekiln.device import SshDevice
    from edgekiln.errors import EnvironmentFailed

    monkeypatch.setenv("EDGEKILN_SSH", sshd["env"]["EDGEKILN_SSH"])
    stage = tmp_path / "stage"
    (stage / "device").mkdir(parents=True)
    (stage / "device" / "a.txt").write_text("shipped")
    dev = SshDevice(sshd["url"])
    dev.ship(stage, ["device/a.txt"])
    remote = Path(dev.dir)
    assert (remote / "device" / "a.txt").read_text() == "shipped"  # the device is this machine
    subprocess.run(sshd["ssh"] + [f"cd {remote} && echo '{{}}' > check.json && ln -s /etc/passwd engine.json"],
                   check=True)
    back = tmp_path / "back"
    back.mkdir()
    dev.fetch(back, ("check.json",))
    assert (back / "check.json").read_text() == "{}\n"
    with pytest.raises(EnvironmentFailed, match="not one of the files"):
        dev.fetch(back, ("engine.json",))
    assert not (back / "engine.json").exists()
    dev.close()
    assert not remote.exists()


def test_jetpack_5_gets_an_opset_17_onnx_or_a_clear_refusal(photos, tmp_path):
    """TensorRT 8.5 parses opset <= 17: an opset-18 ReduceMean model is lowered (and validated against
    the source); an opset-18 Split(num_outputs) cannot be, and is refused naming why."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def save(name, nodes, inits, out_shape):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
        model = helper.make_model(helper.make_graph(nodes, name, [x], [y], inits),
                                  opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 8
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
        return tmp_path / f"{name}.onnx"

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    mean = save("mean", [helper.make_node("Conv", ["x", "w"], ["c"]),
                         helper.make_node("ReduceMean", ["c", "axes"], ["y"], keepdims=0)], [w, axes], [1, 4])
    split = save("split", [helper.make_node("Conv", ["x", "w"], ["c"]),
                           helper.make_node("Split", ["c"], ["y", "z"], axis=1, num_outputs=2)], [w], [1, 2, 30, 30])
    ok = run_json("build", "--target", "jetson", "--jetpack", "5.1", "--model", mean, "--precision", "fp32",
                  "--val", photos[1], "--out", tmp_path / "dist", "--runner", "local")
    art = ok["artifacts"][0]
    assert art["status"] == "deferred: bundle ready" and art["metrics"]["cosine"] > 0.9999
    model = onnx.load(str(Path(art["path"]) / "model.onnx"))
    assert model.opset_import[0].version == 17
    proc = run_cli("build", "--target", "jetson", "--jetpack", "5.1", "--model", split, "--precision", "fp32",
                   "--val", photos[1], "--out", tmp_path / "dist", "--runner", "local")
    assert proc.returncode == 8, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "TensorRT 8.5.2" in line and "cannot lower it (No Adapter From Version $18 for Split)" in line
    assert "export the model with opset 17" in line
