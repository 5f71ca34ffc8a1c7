"""The declared CPU class of an x86 int8 (edgekiln/isa.py): classification, how an artifact is
validated on a given host, the plan it makes, and each refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekiln import isa
from edgekiln.errors import UsageError
from edgekiln.images import image_facts
from edgekiln.plan import plan_build
from edgekiln.request import BuildRequest
from edgekiln.targets import all_targets, source_kinds

QEMU = isa.Qemu("/usr/local/lib/edgekiln/qemu-x86_64", (10, 0), True)
VNNI_HOST = isa.Host("x86_64", "avx512-vnni", "AMD EPYC", QEMU)
VNNI_NO_QEMU = isa.Host("x86_64", "avx512-vnni", "AMD EPYC", None)
AVX2_HOST = isa.Host("x86_64", "x86-64-v3", "AMD EPYC 7B12", QEMU)
OLD_QEMU = isa.Host("x86_64", "avx512-vnni", "Xeon", isa.Qemu("/usr/bin/qemu-x86_64", (7, 1), False))


@pytest.mark.parametrize("flags, expected", [
    ({"sse4_2"}, "x86-64-v2"),
    ({"sse4_2", "avx2", "fma"}, "x86-64-v3"),
    ({"avx2", "fma", "avx512f", "avx512bw"}, "x86-64-v4"),
    ({"avx2", "fma", "avx_vnni"}, "avx-vnni"),
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"}, "avx512-vnni"),
    ({"avx512f", "avx512_vnni", "amx_int8"}, "amx"),
])
def test_classify_by_the_flags_that_pick_the_int8_kernels(flags, expected):
    assert isa.classify(flags) == expected
    assert isa.classify(flags, "aarch64") == "arm64"


def test_this_machine_is_classified_from_proc_cpuinfo():
    here = isa.host()
    assert here.cpu_class in isa.CLASSES
    if here.machine == "x86_64":
        assert here.cpu_class == isa.classify(isa.cpu_flags())


def test_routes_native_emulated_and_nearest():
    assert isa.validation_route("avx512-vnni", VNNI_HOST)["extra"] is None  # the host's own class: native only
    r = isa.validation_route("x86-64-v3", VNNI_HOST)
    assert r["extra"] == {"cpu_class": "x86-64-v3", "qemu_cpu": "Haswell-noTSX"}
    assert r["validated_on"] == ["avx512-vnni", "x86-64-v3"] and r["nearest"] is None
    r = isa.validation_route("x86-64-v3", AVX2_HOST)
    assert r["extra"] is None and r["validated_on"] == ["x86-64-v3"] and r["nearest"] is None
    # VNNI on an AVX2 host: TCG emulates no AVX-512 -> the nearest path, said
    r = isa.validation_route("avx512-vnni", AVX2_HOST)
    assert r["extra"] is None and "QEMU emulates no AVX-512 VNNI" in r["nearest"]
    assert "validated on x86-64-v3 (native) instead" in r["nearest"] and "do not saturate" not in r["nearest"]
    # AVX2 declared, VNNI host without QEMU: the nearest path, and how to get QEMU
    r = isa.validation_route("x86-64-v3", VNNI_NO_QEMU)
    assert r["extra"] is None and "no QEMU user mode for x86-64 here" in r["nearest"] and "qemu-user" in r["nearest"]
    assert "kernels do not saturate unlike the declared class's" in r["nearest"]
    assert "older than 7.2" in isa.validation_route("x86-64-v3", OLD_QEMU)["nearest"]


def test_a_static_qemu_is_told_from_a_dynamic_one(tmp_path):
    import shutil
    import sys

    assert isa._static(str(Path(sys.executable).resolve())) is False  # CPython has an ELF interpreter
    assert isa._static(str(tmp_path)) is False
    qemu = shutil.which("qemu-x86_64") or "/usr/local/lib/edgekiln/qemu-x86_64"
    if Path(qemu).exists():
        assert isa._static(qemu) is True


def _request(**kw) -> BuildRequest:
    base = dict(model=Path("m.onnx"), model_name="m", source_format="onnx", targets=("onnx",),
                precisions=("fp32", "int8"), calib=Path("calib"))
    base.update(kw)
    return BuildRequest(**base)


def _plan(host, **kw):
    return plan_build(_request(**kw), all_targets(), source_kinds(), image_facts(), host)


def test_plan_validates_an_avx2_int8_again_under_qemu_on_a_vnni_host():
    plan = _plan(VNNI_HOST)
    fp32, int8 = plan.artifacts
    assert fp32.elsewhere == ()  # fp32 numerics do not depend on the int8 kernels
    (step_id,) = int8.elsewhere
    step = plan.step(step_id)
    assert step_id.endswith("-onnx-int8-validate-x86-64-v3")
    assert (step.qemu, step.emulate_cpu, step.platform, step.image) == ("x86_64", "Haswell-noTSX", "linux/amd64", "onnx")
    assert step.params["report_name"] == "report-x86-64-v3.json" and step.params["compare_with"] == "outputs.npz"
    assert step.params["options"]["latency_runs"] == 3
    val = plan.step(int8.validate_step)
    assert val.params["save_outputs"] is True and val.params["cpu"]["declared"] == "x86-64-v3"
    # the recipe of the declared class: 7-bit weights for AVX2, in the convert step's options
    assert plan.step(int8.convert_step).params["options"]["reduce_range"] is True


def test_plan_on_the_declared_class_or_without_qemu_adds_no_step():
    assert _plan(AVX2_HOST).artifacts[1].elsewhere == ()
    plan = _plan(VNNI_NO_QEMU)
    assert plan.artifacts[1].elsewhere == ()
    assert "no QEMU" in plan.step(plan.artifacts[1].validate_step).params["cpu"]["nearest"]
    assert _plan(None).artifacts[1].elsewhere == ()  # no host known: a pure plan records no route


def test_declaring_a_vnni_cpu_changes_the_recipe_and_a_user_option_wins():
    plan = _plan(VNNI_HOST, options={"cpu": "avx512-vnni"})
    int8 = plan.artifacts[1]
    assert int8.elsewhere == () and plan.step(int8.convert_step).params["options"]["reduce_range"] is False
    plan = _plan(VNNI_HOST, options={"reduce_range": False})
    assert plan.step(plan.artifacts[1].convert_step).params["options"]["reduce_range"] is False
    assert plan.artifacts[1].elsewhere  # still validated on the declared (default) class


def test_cpu_arm64_is_the_arm_validation():
    plan = _plan(VNNI_HOST, options={"cpu": "arm64"}, precisions=("int8",))
    (step_id,) = plan.artifacts[0].elsewhere
    step = plan.step(step_id)
    assert step_id.endswith("-validate-aarch64") and step.platform == "linux/arm64" and step.qemu is None
    assert plan.step(plan.artifacts[0].convert_step).params["options"]["reduce_range"] is False


def test_an_unknown_cpu_class_is_one_line():
    with pytest.raises(UsageError, match=r"--option cpu='pentium4' is not a CPU class this target offers") as e:
        _plan(VNNI_HOST, options={"cpu": "pentium4"})
    assert "x86-64-v3" in e.value.hint


def test_the_summary_line_says_what_was_declared_and_where_it_ran():
    record = isa.cpu_record(isa.validation_route("x86-64-v3", VNNI_HOST), {"cpu": "AMD EPYC"})
    assert record["validated_on"] == ["avx512-vnni", "x86-64-v3"] and record["native_cpu"] == "AMD EPYC"
    assert isa.cpu_sentence(record) == ("declared for cpu x86-64-v3; validated on avx512-vnni (native) and "
                                        "x86-64-v3 (emulated, QEMU Haswell-noTSX)")
    near = isa.cpu_sentence(isa.cpu_record(isa.validation_route("avx512-vnni", AVX2_HOST), None))
    assert near.startswith("declared for cpu avx512-vnni; validated on x86-64-v3 (native) — declared cpu")


def test_runners_wrap_a_qemu_step(tmp_path, monkeypatch):
    """The local runner runs the interpreter under QEMU with its venv path as argv[0]; the Docker
    runner mounts the static binary read-only and does the same inside the container."""
    from edgekiln.runners import local as local_mod
    from edgekiln.runners.base import Env, Job

    runner = local_mod.LocalRunner(root=tmp_path, qemu=("/q/qemu-x86_64", "Haswell-noTSX"))
    env = Env("onnx", "local", "x", "/envs/onnx/bin/python")
    argv = runner.command(env, Job(tmp_path, {"model": None}), "steps/06-v.py")
    assert argv[-6:] == ["QEMU_CPU=Haswell-noTSX", "/q/qemu-x86_64", "-0", "/envs/onnx/bin/python",
                         "/envs/onnx/bin/python", "steps/06-v.py"]


def test_the_local_fallback_of_an_emulated_step_stays_emulated(tmp_path):
    """--runner auto with an image the engine cannot have: the step falls back to a local
    virtualenv, and a step planned under QEMU (an x86 class this host lacks) still runs under it
    (the demo once ran it natively while its summary said "emulated")."""
    from edgekiln.runners import _variant
    from edgekiln.runners import local as local_mod
    from edgekiln.runners.base import Env, Job
    from edgekiln.runners.docker import DockerRunner

    plain = local_mod.LocalRunner(root=tmp_path)
    docker = DockerRunner("unix:///nonexistent.sock", fallback=lambda: plain)
    emulated = _variant(docker, qemu_user=("/q/qemu-x86_64", "Haswell-noTSX"))
    env = Env("onnx", "local", "x", "/envs/onnx/bin/python")
    argv = emulated.command(env, Job(tmp_path, {"model": None}), "steps/06-v.py")
    assert argv[-6:] == ["QEMU_CPU=Haswell-noTSX", "/q/qemu-x86_64", "-0", "/envs/onnx/bin/python",
                         "/envs/onnx/bin/python", "steps/06-v.py"]
    native = docker.command(env, Job(tmp_path, {"model": None}), "steps/05-v.py")  # the shared runner: no QEMU
    assert "/q/qemu-x86_64" not in native and plain.qemu is None
