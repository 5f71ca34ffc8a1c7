"""converters/ekit_tf_recover.py and the TensorRT bundle's recovery entry, without TensorFlow: the
per-layer error the TFLite debugger ranks by, the notes a mixed model gets, what the device
bundle records."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from edgekiln.deferred import recovery_of
from tests.unit.test_ekit_task import CONVERTERS

sys.path.insert(0, str(CONVERTERS))

import ekit_tf_recover as R  # noqa: E402
import ekit_trt  # noqa: E402


def test_layer_error_is_zero_for_an_exact_int8_output_and_grows_with_the_error():
    f = np.linspace(-1, 1, 64, dtype=np.float32)
    scale, zp = 2 / 255, -1
    q = np.round(f / scale) + zp  # the int8 op's output, quantized like TFLite does
    assert R.layer_error(f, q, scale, zp) < 1e-4
    assert R.layer_error(f, -q + 2 * zp, scale, zp) == pytest.approx(2.0, abs=1e-3)  # the opposite sign
    noisy = q + np.random.default_rng(0).integers(-20, 21, q.shape)
    assert R.layer_error(f, noisy, scale, zp) > R.layer_error(f, q, scale, zp)
    assert R.layer_error(np.zeros(4), np.zeros(4), 1.0, 0) == 0.0  # an all-zero layer adds nothing


def spec(*dtypes):
    return {"inputs": [{"name": "pixels", "dtype": dtypes[0]}],
            "outputs": [{"name": f"output_{i}", "dtype": d} for i, d in enumerate(dtypes[1:])]}


def test_notes_name_the_float_layers_and_io_left_float():
    rec = {"float_layers": [{"layer": "a/conv"}, {"layer": "b/fc"}], "int8_mac_share": 0.9}
    notes = R.io_note(rec, spec("uint8", "float32"), "uint8")
    assert notes[0].startswith("int8 with 2 layer(s) kept float by --recover (90.0% of MACs int8; not full integer)")
    assert "a/conv, b/fc" in notes[0]
    assert notes[1].startswith("--recover: output_0 (I/O) left float32 instead of uint8")
    assert len(R.io_note(rec, spec("uint8", "uint8"), "uint8")) == 1  # integer I/O kept: no second note
    assert len(R.io_note(rec, spec("float32", "float32"), "float32")) == 1  # float I/O was asked for
    assert R.io_note({"float_layers": []}, spec("uint8", "uint8"), "uint8") == []
    assert R.io_note(None, spec("uint8", "uint8"), "uint8") == []


def test_the_device_bundle_records_the_float_nodes_and_how_they_were_measured():
    rec = {"float_layers": [{"layer": "/features.17/Conv", "sensitivity": 0.02}], "int8_mac_share": 0.95,
           "passed": True, "proxy": ekit_trt.PROXY}
    got = recovery_of({"recovery": rec})
    assert got == {"float_layers": ["/features.17/Conv"], "int8_mac_share": 0.95, "passed": True,
                   "measured": ekit_trt.PROXY}
    assert "ONNX Runtime CPU on the Q/DQ model" in got["measured"] and "check_engine" in got["measured"]
    assert recovery_of({"recovery": {"attempted": False, "float_layers": []}}) is None
    assert recovery_of({}) is None


def test_a_map_keeps_its_element_wise_ops_float_and_a_detector_or_classifier_does_not(monkeypatch):
    # a PP-OCR-like map: conv -> hard_swish -> conv -> resize + add (FPN) -> transpose_conv -> logistic
    nodes = [("c1", "CONV_2D", ["x"], ["a"]), ("hs", "HARD_SWISH", ["a"], ["b"]), ("c2", "CONV_2D", ["b"], ["c"]),
             ("up", "RESIZE_NEAREST_NEIGHBOR", ["c"], ["d"]), ("add", "ADD", ["d", "b"], ["e"]),
             ("ct", "TRANSPOSE_CONV", ["e"], ["f"]), ("sig", "LOGISTIC", ["f"], ["y"])]
    monkeypatch.setattr(R, "graph_nodes", lambda model: (nodes, ["y"]))
    region = R.keep_float_region(b"", "auto", "map")
    assert region["float"] == ["sig", "hs", "up", "add"] and region["elementwise"] == ["hs", "up", "add", "sig"]
    assert not {"c1", "c2", "ct"} & set(region["float"])  # every conv stays int8
    for task in ("classify", None):
        assert R.keep_float_region(b"", "auto", task)["float"] == ["sig"]  # the tail only, as before
    assert R.keep_float_region(b"", "tail", "map")["float"] == ["sig"]
    assert R.keep_float_region(b"", "none", "map")["float"] == []
