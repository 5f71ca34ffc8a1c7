"""Every rendered device script uses only TensorRT Python names that exist in the bindings of the
TensorRT version it is rendered for — checked offline against the real bindings wheels (downloaded once
into ~/.cache/edgekiln/trt-wheels; see tests/trt_api.py)."""

import itertools

import pytest

from edgekiln import tensorrt as T
from tests import trt_api

# the wheel each API level is checked against: the stack's own version where a wheel exists
# (10.3.0, 10.7.0), else the nearest one (8.5 and 8.6.2 have no wheel: 8.6.1 is the only 8.x one)
WHEEL_OF = {"8.5.2": "8.6.1", "8.6.2": "8.6.1", "10.3.0": "10.3.0", "10.7.0": "10.7.0", "11.4.0": "11.4.0.106"}
# API level 11 has no row yet (no JetPack/NGC image with TensorRT 11 is confirmed): the templates are
# still rendered for it, as an x86 stack with TensorRT 11.4 installed from pip.
TRT11 = T.Stack(kind="x86", key="trt11", tensorrt="11.4.0", api="11", cuda="12.9", python="3.12",
                base="nvcr.io/nvidia/cuda:12.9.1-runtime-ubuntu24.04", sm=("8.0",), dla=False,
                lock="requirements.txt")
STACKS = list(T.stacks("jetson").values()) + list(T.stacks("x86").values()) + [TRT11]


@pytest.fixture(scope="module")
def wheels():
    try:
        return {v: trt_api.strings(v) for v in trt_api.WHEELS}
    except RuntimeError as e:  # pragma: no cover - needs the package index once
        pytest.fail(f"{e} (the TensorRT bindings wheels are needed once; CI downloads them)")


def variants(st):
    for precision, dla, dynamic in itertools.product(("fp32", "fp16", "int8"), (False, True), (False, True)):
        if dla and not st.dla:
            continue
        yield precision, dla, dynamic


@pytest.mark.parametrize("st", STACKS, ids=lambda s: f"{s.kind}-{s.key}-trt{s.tensorrt}")
def test_rendered_scripts_use_only_names_of_their_tensorrt(wheels, st):
    version = WHEEL_OF[st.tensorrt]
    checked = 0
    for precision, dla, dynamic in variants(st):
        scripts = T.device_scripts(st, precision, dla=dla, dynamic=dynamic, compatibility=st.kind == "x86")
        for name in ("build_engine.py", "check_engine.py"):
            missing = trt_api.lint(scripts[name], version)
            assert not missing, f"{name} {precision} dla={dla} dynamic={dynamic}: {missing}"
            checked += 1
    assert checked >= 12


def test_the_lint_fails_on_names_a_version_removed(wheels):
    """The gate can fail: TensorRT 11 has no weak typing, 10 has no max_workspace_size."""
    old = ("import tensorrt as trt\n"
           "network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))\n"
           "config.set_flag(trt.BuilderFlag.INT8)\nconfig.set_flag(trt.BuilderFlag.FP16)\n"
           "config.int8_calibrator = None\nconfig.max_workspace_size = 1 << 30\n")
    assert trt_api.lint(old, "8.6.1") == []
    assert [m.split()[0] for m in trt_api.lint(old, "10.3.0")] == ["config.max_workspace_size"]
    eleven = " ".join(trt_api.lint(old, "11.4.0.106"))
    for gone in ("BuilderFlag.INT8", "BuilderFlag.FP16", "int8_calibrator", "EXPLICIT_BATCH", "max_workspace_size"):
        assert gone in eleven
    # a TensorRT 8.6 network cannot be strongly typed (that flag came with 9.x)
    typed = "import tensorrt as trt\nnetwork = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))\n"
    assert trt_api.lint(typed, "8.6.1") and not trt_api.lint(typed, "10.3.0")
