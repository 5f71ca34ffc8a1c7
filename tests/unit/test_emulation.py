"""edgekiln.emulation: reading binfmt_misc, the one-line errors for a missing or too-old QEMU, the
docker-load archive with a truthful platform, and the plan of an Arm validation."""

from __future__ import annotations

import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from edgekiln import emulation
from edgekiln.errors import TargetError, UsageError

AARCH64 = emulation.MAGIC["linux/arm64"]


def _binfmt(root: Path, *, version: str | None = "10.0.13", flags: str = "F", enabled: bool = True) -> Path:
    """A folder laid out like /proc/sys/fs/binfmt_misc with one aarch64 entry whose interpreter
    prints ``qemu-aarch64 version <version>``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "status").write_text("enabled\n")
    (root / "register").write_text("")
    if version is None:
        return root
    qemu = root.parent / f"qemu-{version}"
    qemu.write_text(f"#!/bin/sh\necho 'qemu-aarch64 version {version} (Debian)'\n")
    qemu.chmod(0o755)
    (root / "qemu-aarch64").write_text(
        f"{'enabled' if enabled else 'disabled'}\ninterpreter {qemu}\nflags: {flags}\noffset 0\n"
        f"magic {AARCH64}\nmask ffffffffffffff00fffffffffffffffffeffffff\n")
    return root


def test_qemu_10_with_the_f_flag_is_usable(tmp_path):
    ok, why = emulation.status("linux/arm64", _binfmt(tmp_path / "b"))
    assert ok and why == "QEMU 10.0.13 (binfmt entry qemu-aarch64)"


@pytest.mark.parametrize("kind, words", [
    ("unmounted", "binfmt_misc is not mounted"),
    ("none", "no QEMU user emulation for linux/arm64 is registered"),
    ("disabled", "no QEMU user emulation for linux/arm64 is registered"),
    ("old", "QEMU 7.2.0"),
    ("no-f", "lacks the F flag"),
])
def test_missing_or_unusable_qemu_is_one_line_with_the_fix(tmp_path, kind, words):
    root = tmp_path / "b"
    if kind == "unmounted":
        root.mkdir()
    else:
        _binfmt(root, version={"none": None, "old": "7.2.0"}.get(kind, "10.0.13"),
                flags="" if kind == "no-f" else "F", enabled=kind != "disabled")
    ok, why = emulation.status("linux/arm64", root)
    assert not ok and words in why and "\n" not in why
    assert ".ci/docker-up.sh" in why  # the fix
    if kind == "old":
        assert "too old" in why and "crash" in why


def test_only_arm64_is_emulated_and_cpus_are_checked():
    assert emulation.status("linux/s390x")[0] is False
    assert emulation.check_cpu("cortex-a76") == "cortex-a76"
    with pytest.raises(UsageError, match="cortex-a72"):
        emulation.check_cpu("pentium")


def test_docker_archive_says_arm64(tmp_path):
    rootfs = tmp_path / "rootfs.tar"
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "hello").write_text("hi\n")
    with tarfile.open(rootfs, "w") as tar:
        tar.add(tmp_path / "r" / "hello", arcname="hello")
    out = tmp_path / "img.tar"
    image_id = emulation.docker_archive(rootfs, out, "x/y:z", arch="arm64", labels={"k": "v"})
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        config = json.load(tar.extractfile(manifest[0]["Config"]))
        assert manifest[0]["RepoTags"] == ["x/y:z"] and manifest[0]["Config"] == f"{image_id}.json"
        assert tar.extractfile(manifest[0]["Layers"][0]).read() == rootfs.read_bytes()
    assert (config["architecture"], config["os"]) == ("arm64", "linux")
    assert config["config"]["Labels"] == {"k": "v"}


def _request(**kw):
    from edgekiln.request import BuildRequest

    return BuildRequest(model=Path("m.onnx"), model_name="m", source_format="onnx", targets=("rpi",),
                        precisions=("int8",), calib=Path("calib"), **kw)


def test_plan_adds_an_arm_validation_after_this_machines():
    from edgekiln.images import image_facts
    from edgekiln.plan import plan_build
    from edgekiln.targets import all_targets, source_kinds

    targets, sources = all_targets(), source_kinds()
    plain = plan_build(_request(), targets, sources, image_facts())
    assert [s.kind for s in plain.steps] == ["source", "convert", "validate"]
    assert plain.artifacts[0].elsewhere == () and "emulate_cpu" not in plain.steps[2].params_json
    plan = plan_build(_request(validate_on="linux/arm64"), targets, sources, image_facts())
    conv, val, arm = plan.steps[1:]
    art = plan.artifacts[0]
    assert art.elsewhere == (arm.id,) and arm.id.endswith("-rpi-int8-validate-aarch64")
    assert (arm.image, arm.platform, arm.emulate_cpu, arm.local) == ("arm-validate", "linux/arm64", "cortex-a72", False)
    assert arm.needs == (val.id,) and val.params["save_outputs"] is True
    assert arm.params["report_name"] == "report-aarch64.json" and arm.params["compare_with"] == "outputs.npz"
    assert arm.params["options"]["latency_runs"] == 3 and val.params["options"]["latency_runs"] == 50
    assert conv.emulate_cpu is None and arm in plan.steps_for(art)
    pi5 = plan_build(_request(validate_on="linux/arm64", emulate_cpu="cortex-a76"), targets, sources, image_facts())
    assert pi5.steps[-1].emulate_cpu == "cortex-a76"
    with pytest.raises(TargetError, match="no Arm validation"):
        plan_build(replace(_request(validate_on="linux/arm64"), targets=("intel",)), targets, sources, image_facts())


def test_arm_validation_here_says_why_not(tmp_path, monkeypatch):
    from edgekiln.targets import all_targets

    t = all_targets()
    assert emulation.arm_validation_here(t["intel"]) == (False, "not an Arm target (its target file has no emulation table)")
    monkeypatch.setattr(emulation, "BINFMT", _binfmt(tmp_path / "old", version="7.2.0"))
    ok, why = emulation.arm_validation_here(t["rpi"])
    assert not ok and "too old" in why


def test_targets_says_whether_arm_validation_is_available():
    from tests.conftest import run_json

    rows = {r["name"]: r for r in run_json("targets")}
    assert rows["intel"]["arm_validation"] is False and "not an Arm target" in rows["intel"]["arm_validation_why"]
    ok, why = emulation.arm_validation_here(__import__("edgekiln.targets", fromlist=["x"]).all_targets()["rpi"])
    assert (rows["rpi"]["arm_validation"], rows["rpi"]["arm_validation_why"]) == (ok, why)
    assert why  # available: how (QEMU version, QEMU_CPU); not: what is missing and the fix


@pytest.mark.parametrize("extra, words", [
    (["--platform", "linux/arm64", "--runner", "local"], "error: validation on linux/arm64 needs the Docker runner"),
    (["--emulate-cpu", "cortex-a76"], "error: --emulate-cpu needs --platform linux/arm64"),
    (["--platform", "linux/arm64", "--emulate-cpu", "pentium"], "error: --emulate-cpu 'pentium' is not a QEMU Arm core"),
])
def test_arm_validation_flags_are_checked_in_one_line(weights, extra, words):
    from edgekiln.errors import UsageError
    from tests.conftest import run_cli

    proc = run_cli("build", "--model", weights, "--arch", "mobilenet_v2", "--target", "rpi", *extra, "--dry-run")
    assert proc.returncode == UsageError.exit_code and proc.stderr.strip().splitlines()[-1].startswith(words), proc.stderr
    assert "Traceback" not in proc.stderr
