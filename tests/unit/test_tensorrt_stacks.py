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


# ---------------------------------------------------------------- what the device scripts do when run


def _bundle_with(tmp_path, st, precision="fp16", dla=False, dynamic=False):
    """A device/ folder with the rendered scripts and a bundle.json (no engine, no TensorRT here)."""
    import json

    device = tmp_path / "art" / "device"
    (device / "image").mkdir(parents=True)
    (device / "image" / "recipe.sha256").write_text("ab" * 32 + "\n")
    for name, text in T.device_scripts(st, precision, dla=dla, dynamic=dynamic,
                                       compatibility=st.kind == "x86").items():
        (device / name).write_text(text)
    (device / "bundle.json").write_text(json.dumps({
        "onnx": "model.onnx", "engine": "model.engine", "precision": precision, "shapes": None, "input": "x",
        "input_shape": [1, 3, 8, 8], "outputs": ["y"], "workspace_mib": 64, "dla_core": None,
        "timing_cache": "timing.cache", "reference": "reference.npz", "hardware_compatible": False,
        "version_compatible": False, "thresholds": {"min_cosine": 0.99}, "latency_runs": 2, "latency_warmup": 1,
        "made_for": T.made_for(st)}))
    return device


@pytest.mark.parametrize("kind", ["jetson", "x86"])
def test_build_engine_sh_runs_one_step_with_the_groups_and_gpu_flags_of_its_kind(tmp_path, kind):
    """Run for real with a `docker` that records its argv: Jetson adds the video group (a non-root
    container sees no Tegra GPU without it) and the NVIDIA runtime; x86 uses --gpus all only (CDI-only
    hosts have no `nvidia` runtime); both run python3 in isolated mode."""
    import os

    device = _bundle_with(tmp_path, T.stack_for(kind))
    bin_dir, log = tmp_path / "bin", tmp_path / "docker.log"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{log}"\necho --- >> "{log}"\n')
    (bin_dir / "docker").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    proc = subprocess.run(["sh", str(device / "build_engine.sh"), "check"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    inspect, run = [part.splitlines() for part in log.read_text().split("---\n")[:2]]
    assert inspect[:2] == ["image", "inspect"] and run[0] == "run"
    assert run[-3:] == ["sh", "-c", "python3 -I device/check_engine.py"]
    pairs = list(zip(run, run[1:]))
    if kind == "jetson":
        assert ("--group-add", "video") in pairs and ("--runtime", "nvidia") in pairs and "--gpus" not in run
    else:
        assert ("--gpus", "all") in pairs and "--runtime" not in run
    bad = subprocess.run(["sh", str(device / "build_engine.sh"), "engine"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "usage: sh device/build_engine.sh [all|preflight|build|check]" in bad.stderr


def test_device_scripts_crash_with_their_own_exit_codes_not_the_threshold_miss_code(tmp_path):
    """No TensorRT and no CUDA here: build_engine.py exits 3 and check_engine.py 5, each with its reason
    as the last line. Exit 1 is check_engine's threshold miss only (edgekiln finish reports it as
    'misses the thresholds')."""
    import sys

    device = _bundle_with(tmp_path, T.stack_for("jetson"))
    build = subprocess.run([sys.executable, "-I", str(device / "build_engine.py")], capture_output=True, text=True)
    assert build.returncode == 3, build.stderr
    assert build.stderr.strip().splitlines()[-1].startswith("build_engine: could not build the engine: "
                                                            "ModuleNotFoundError")
    check = subprocess.run([sys.executable, "-I", str(device / "check_engine.py")], capture_output=True, text=True)
    assert check.returncode == 5, check.stderr
    last = check.stderr.strip().splitlines()[-1]
    assert last.startswith("check_engine: could not run the check: CheckError: no CUDA binding works here")
    assert "cuda-python: " in last and "pycuda: " in last and "ctypes-libcudart: " in last  # each tried, and why it failed


@pytest.mark.parametrize("kind,key", [("jetson", "5.1"), ("jetson", "6.1"), ("x86", "24.12")])
def test_check_engine_binds_cuda_first_and_checks_every_tensorrt_call(kind, key):
    st = T.stacks(kind)[key]
    for dla in (False, True) if st.dla else (False,):
        text = T.device_scripts(st, "int8", dla=dla, dynamic=True, compatibility=kind == "x86")["check_engine.py"]
        assert "pycuda.autoinit" not in text.replace("not pycuda.autoinit", "") and "retain_primary_context" in text
        assert text.index("cuda = Cuda()") < text.index("deserialize_cuda_engine")
        for call in ("context.set_input_shape(", "context.set_tensor_address(", "context.execute_async_v3("):
            assert f"ok({call}" in text, call
        assert ("runtime.DLA_core = " in text) == dla
        assert "latency_warmup" in text and 'ref_of = {name: f"y{k}"' in text


def test_trtexec_line_is_the_scripts_equivalent_on_the_device():
    jp61, x86 = T.stack_for("jetson", "6.1"), T.stack_for("x86")
    shapes = {"min": [1, 3, 32, 32], "opt": [1, 3, 32, 32], "max": [2, 3, 32, 32]}
    line = T.trtexec_line(jp61, "fp16", shapes=shapes, input_name="input:0", dla_core=None, workspace_mib=64)
    assert line[0] == "/usr/src/tensorrt/bin/trtexec"  # JetPack: not on PATH
    assert "--timingCacheFile=device/timing.cache" in line  # the cache build_engine.py reuses
    assert "--minShapes='input:0':1x3x32x32" in line  # a name with a colon is quoted for trtexec
    assert T.trtexec_line(x86, "fp16", shapes=None, input_name="x", dla_core=None, workspace_mib=64)[0] == "trtexec"
    dla = T.trtexec_text(jp61, T.trtexec_line(jp61, "int8", shapes=None, input_name="x", dla_core=0,
                                              workspace_mib=64), dla=True)
    assert "board without DLA cores" in dla


def test_trtexec_txt_cannot_run_an_input_name_as_shell(tmp_path):
    """An ONNX input name is data: the printed line quotes every word (shlex.join), so running it
    with sh never runs what a crafted name holds."""
    import shlex

    name = f"x;touch {tmp_path}/PWNED;#"
    shapes = {"min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [2, 3, 8, 8]}
    args = T.trtexec_line(T.stack_for("jetson"), "fp32", shapes=shapes, input_name=name, dla_core=None,
                          workspace_mib=64)
    last = T.trtexec_text(T.stack_for("jetson"), args, dla=False).splitlines()[-1]
    assert shlex.split(last) == args
    subprocess.run(["sh", "-c", last], cwd=tmp_path, capture_output=True)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("precisions,options,expected", [
    (("fp32",), {"dla_core": 0}, "DLA runs fp16 and int8 only"),
    (("fp16",), {"dla_core": 0, "shapes": "1x3x224x224:2x3x224x224:4x3x224x224"}, "DLA needs one fixed shape"),
])
def test_plan_refuses_what_dla_cannot_do(precisions, options, expected):
    with pytest.raises(UsageError) as e:
        _plan("jetson", precisions, jetpack="6.1", **options)
    assert expected in e.value.line() and "\n" not in e.value.line()
    _plan("jetson", ("fp16", "int8"), dla_core=0, shapes="1x3x224x224:1x3x224x224:1x3x224x224")  # fine


def test_dla_fp32_is_refused_by_the_cli_in_one_line_with_exit_2(tmp_path):
    import sys

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [x], [y], [w])),
              str(tmp_path / "m.onnx"))
    proc = subprocess.run([sys.executable, "-m", "edgekiln", "build", "--target", "jetson", "--model",
                           str(tmp_path / "m.onnx"), "--precision", "fp32", "--option", "dla_core=0",
                           "--out", str(tmp_path / "dist"), "--runner", "local"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "DLA runs fp16 and int8 only" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "dist" / "m").exists()
