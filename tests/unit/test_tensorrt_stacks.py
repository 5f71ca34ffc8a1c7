"""targets/_tensorrt.toml, the device scripts rendered from it, and the bundle's shell script."""

import itertools
import shutil
import subprocess

import pytest

from edgekiln import tensorrt as T
from edgekiln.errors import UsageError
from edgekiln.images import load_bases, recipes
from edgekiln.resources import data_dir
from edgekiln.targets import all_targets, host_support

JETSON, X86 = T.stacks("jetson"), T.stacks("x86")


def test_default_jetpack_is_6_1_with_tensorrt_10_3_strongly_typed():
    st = T.stack_for("jetson")
    assert (st.key, st.tensorrt, st.api, st.python, st.cuda) == ("6.1", "10.3.0", "10", "3.10", "12.6")
    assert st.base == "nvcr.io/nvidia/l4t-jetpack:r36.4.0" and st.l4t == ("36.4+",)
    assert st.strongly_typed and not st.typed_build(dla=True)  # TRT 10 on DLA uses the flags
    assert T.stack_for("x86").base == "nvcr.io/nvidia/tensorrt:24.12-py3"


def test_api_levels_follow_tensorrt_versions():
    assert [T.api_level(v) for v in ("8.5.2", "8.6.2", "10.3.0", "10.13.3", "11.4.0")] == \
        ["8.5", "8.6", "10", "10", "11"]
    assert {st.key: st.api for st in JETSON.values()} == {"5.1": "8.5", "6.0": "8.6", "6.1": "10",
                                                         "6.2": "10", "6.2.1": "10"}
    with pytest.raises(UsageError):
        T.api_level("7.1.3")


def test_unknown_jetpack_is_one_line_listing_the_known_ones():
    with pytest.raises(UsageError) as e:
        T.stack_for("jetson", "4.6")
    line = e.value.line()
    assert "unknown JetPack '4.6'" in line and "5.1, 6.0, 6.1, 6.2, 6.2.1" in line and "\n" not in line


def test_every_row_has_its_lock_and_the_images_have_no_local_env():
    bases = load_bases()
    for name in ("tensorrt-jetson", "tensorrt-x86"):
        assert bases[name]["local"] is False
        assert name in recipes()
    for st in JETSON.values():
        assert (data_dir("images") / "tensorrt-jetson" / st.lock).is_file(), st.key
    for st in X86.values():
        assert (data_dir("images") / "tensorrt-x86" / st.lock).is_file(), st.key
    assert "local" not in bases["trtprep"]  # the workstation half has a local venv


def test_targets_say_why_no_engine_is_built_here():
    targets = all_targets()
    for name in ("jetson", "x86-gpu"):
        t = targets[name]
        assert t.runtime == "tensorrt" and t.image == "trtprep"
        if not shutil.which("nvidia-smi"):
            ok, why = host_support(t)
            assert not ok and "deferred" in why


@pytest.mark.parametrize("kind,key", [("jetson", k) for k in JETSON] + [("x86", k) for k in X86])
def test_device_scripts_render_and_compile_for_every_variant(kind, key):
    st = T.stacks(kind)[key]
    for precision, dla, dynamic in itertools.product(("fp32", "fp16", "int8"), (False, True), (False, True)):
        if dla and not st.dla:
            with pytest.raises(UsageError):
                T.device_scripts(st, precision, dla=dla, dynamic=dynamic)
            continue
        scripts = T.device_scripts(st, precision, dla=dla, dynamic=dynamic, compatibility=kind == "x86")
        build = scripts["build_engine.py"]
        assert ("STRONGLY_TYPED" in build) == st.typed_build(dla)
        assert ("EXPLICIT_BATCH" in build) == (st.api in ("8.5", "8.6"))
        assert ("set_shape" in build) == dynamic and ("GPU_FALLBACK" in build) == dla
        assert "max_workspace_size" not in build and "set_memory_pool_limit" in build
        assert "execute_async_v3" in scripts["check_engine.py"]


def test_trtexec_line_uses_mempoolsize_and_matches_the_typing():
    jp51, jp61 = T.stack_for("jetson", "5.1"), T.stack_for("jetson", "6.1")
    shapes = {"min": [1, 3, 320, 320], "opt": [2, 3, 320, 320], "max": [4, 3, 320, 320]}
    line = T.trtexec_line(jp61, "int8", shapes=shapes, input_name="images", dla_core=None, workspace_mib=512)
    assert "--memPoolSize=workspace:512" in line and "--stronglyTyped" in line
    assert "--optShapes=images:2x3x320x320" in line and not any("--workspace" in a for a in line)
    line = T.trtexec_line(jp51, "fp16", shapes=None, input_name="x", dla_core=0, workspace_mib=512)
    assert "--fp16" in line and "--useDLACore=0" in line and "--allowGPUFallback" in line
    assert "--stronglyTyped" not in line
    line = T.trtexec_line(T.stack_for("x86"), "fp16", shapes=None, input_name="x", dla_core=None, workspace_mib=64,
                          hardware_compatible=True, version_compatible=True)
    assert "--hardwareCompatibilityLevel=ampere+" in line and "--versionCompatible" in line


@pytest.mark.parametrize("kind", ["jetson", "x86"])
def test_build_engine_sh_passes_shellcheck(tmp_path, kind):
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck is needed: apt-get install shellcheck (.ci/run installs it)")
    st = T.stack_for(kind)
    text = T.device_scripts(st, "fp16", dla=False, dynamic=False)["build_engine.sh"]
    assert text.count("docker run") == 1 and "--runtime nvidia" in text
    path = tmp_path / "build_engine.sh"
    path.write_text(text)
    proc = subprocess.run(["shellcheck", "-s", "sh", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# ---------------------------------------------------------------- the plan carries the chosen stack


def _plan(target, precisions=None, **options):
    from pathlib import Path

    from edgekiln.plan import plan_build
    from edgekiln.request import BuildRequest, InputSpec
    from edgekiln.targets import source_kinds

    req = BuildRequest(model=Path("/m/model.onnx"), model_name="model", source_format="onnx", targets=(target,),
                       precisions=precisions, input=InputSpec(shape=(1, 3, 224, 224)), options=options,
                       calib=Path("/photos"))
    return plan_build(req, all_targets(), source_kinds())


def test_plan_puts_the_stack_into_the_convert_params():
    plan = _plan("jetson")
    assert [(a.target, a.precision) for a in plan.artifacts] == [("jetson", "fp16")]
    conv = plan.step(plan.artifacts[0].convert_step)
    assert conv.image == "trtprep" and conv.template == "trt/convert.py.jinja"
    trt = conv.params["tensorrt"]
    assert (trt["tensorrt"], trt["api"], trt["typed"], trt["dla_core"]) == ("10.3.0", "10", True, None)
    trt = _plan("jetson", ("int8",), jetpack="5.1", dla_core=0).step("02-jetson-int8-convert").params["tensorrt"]
    assert (trt["tensorrt"], trt["typed"], trt["dla_core"]) == ("8.5.2", False, 0)
    assert _plan("x86-gpu").step("02-x86-gpu-fp16-convert").params["tensorrt"]["base"] == \
        "nvcr.io/nvidia/tensorrt:24.12-py3"


@pytest.mark.parametrize("target,options,expected", [
    ("jetson", {"jetpack": "4.6"}, "unknown JetPack '4.6'"),
    ("x86-gpu", {"stack": "99.01"}, "unknown NGC TensorRT image '99.01' — --option stack= takes one of: 24.12"),
    ("x86-gpu", {"dla_core": 0}, "has no DLA cores"),
    ("jetson", {"dla_core": "x"}, "is not an integer"),
])
def test_plan_refuses_a_bad_stack_in_one_line(target, options, expected):
    with pytest.raises(UsageError) as e:
        _plan(target, **options)
    assert expected in e.value.line()
