"""Issue 18: an int8 declared for an x86 CPU class is validated on that class's kernels, and a gate
there can refuse it. Real MobileNetV2 weights, real photos, ONNX Runtime in the local runner; the
AVX2 path under QEMU user mode on a host that lacks it (qemu-x86_64 -cpu Haswell-noTSX)."""

from __future__ import annotations

import json

import pytest

from edgekiln.isa import host
from tests.conftest import QEMU_ON, run_cli, run_json

pytestmark = pytest.mark.integration


def _build(model, photos, out, *args, env=None, check=None):
    calib, val = photos
    return run_cli("build", "--target", "onnx", "--model", model, "--precision", "int8",
                   "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--calib", calib, "--val", val,
                   "--out", out, "--runner", "local", *args, env=env, check=check)


def test_8bit_weights_are_refused_on_the_avx2_kernel_path(mobilenet_onnx, photos, tmp_path):
    """u8s8 with 8-bit weights: VNNI computes it exactly, AVX2's VPMADDUBSW saturates (min cosine
    0.79 measured). Declared for AVX2, the gate on the AVX2 path refuses it — on any x86 host."""
    proc = _build(mobilenet_onnx, photos, tmp_path, "--option", "reduce_range=false", env=QEMU_ON, check=10)
    assert "missed" in proc.stderr and "Traceback" not in proc.stderr
    if host().cpu_class != "x86-64-v3":  # refused by the emulated validation, which the line names
        assert "on x86_64 x86-64-v3 (emulated Haswell-noTSX, QEMU user mode)" in proc.stderr
    assert not list(tmp_path.glob("*/*/onnx/int8/model.onnx")), "a refused int8 was published"


def test_a_class_this_host_cannot_run_is_validated_on_the_nearest_path_and_said(mobilenet_onnx, photos, tmp_path):
    """No QEMU: an AVX2 int8 on a VNNI host is validated natively, and the build says so in one line
    and in the manifest; declaring this host's own class validates natively with no such line."""
    here = host().cpu_class
    proc = _build(mobilenet_onnx, photos, tmp_path / "a", env={"EDGEKILN_QEMU_X86_64": ""}, check=0)
    res = json.loads(_build(mobilenet_onnx, photos, tmp_path / "a", "--json",  # a cache hit: the record
                            env={"EDGEKILN_QEMU_X86_64": ""}, check=0).stdout)
    cpu = json.loads((tmp_path / "a" / "mobilenet_v2" / res["version"] / "onnx" / "int8" / "manifest.json"
                      ).read_text())["cpu"]
    assert cpu["declared"] == "x86-64-v3" and cpu["validated_on"] == [here] and cpu["emulated"] is None
    if here == "x86-64-v3":
        assert cpu["nearest"] is None
    else:
        assert "declared cpu x86-64-v3 can be neither run nor emulated here (no QEMU user mode" in cpu["nearest"]
        assert cpu["nearest"] in proc.stderr.replace("\n", " ") or cpu["nearest"][:60] in proc.stderr
        assert "declared for cpu x86-64-v3; validated on" in proc.stdout + proc.stderr
    if here in ("avx512-vnni", "amx", "avx-vnni", "x86-64-v3"):
        res = run_json("build", "--target", "onnx", "--model", mobilenet_onnx, "--precision", "int8",
                       "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--calib", photos[0],
                       "--val", photos[1], "--out", tmp_path / "b", "--runner", "local", "--option", f"cpu={here}",
                       env=QEMU_ON)
        manifest = json.loads((tmp_path / "b" / "mobilenet_v2" / res["version"] / "onnx" / "int8" / "manifest.json"
                               ).read_text())
        assert manifest["cpu"]["validated_on"] == [here] and manifest["cpu"]["nearest"] is None
        assert "cpu_validation" not in manifest


def test_an_unknown_cpu_class_is_one_line(mobilenet_onnx, photos, tmp_path):
    proc = _build(mobilenet_onnx, photos, tmp_path, "--option", "cpu=pentium4", check=2)
    assert "--option cpu='pentium4' is not a CPU class this target offers" in proc.stderr
    assert "Traceback" not in proc.stderr and not any(tmp_path.iterdir())
