"""Property-based: the release-matrix and input-spec parsers turn ANY structure into a Matrix or
InputSpec, or into an EdgekilnError (one line, an exit code) — never a traceback (issue 22 item 11).
Bounded to a few seconds."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgekiln.errors import EdgekilnError  # noqa: E402
from edgekiln.matrix import INPUT_KEYS, MODEL_KEYS, _Loader, load_matrix  # noqa: E402
from edgekiln.request import input_spec, load_sidecar  # noqa: E402
from edgekiln.targets import all_targets  # noqa: E402

KEYS = ["release", "targets", "models", "options", "thresholds", "name", "version", "date", "path", "arch",
        "input", "calib", "val", "labels", "opset", "simplify", "max_images", "trust_pickle", "trust_model",
        "shape", "layout", "color", "scale", "mean", "std", "resize", "dynamic_batch", "pad", "bgr",
        "onnx", "rpi", "fp32", "int8", "min_cosine", "onnx.int8.min_top1_agreement", "m", "archives", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["fp32", "int8", "nchw", "nhwc", "m.onnx", "1.0",
                                                           "crop", "letterbox", "bgr", "onnxslim", ""]),
                    st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2100, 1, 1)))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
                      max_leaves=20)
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz")
    (path / "m.onnx").write_bytes(b"\x08\x07")
    return path


@pytest.fixture(scope="module")
def targets():
    return all_targets()


def _matrix(folder, targets, raw):
    try:
        _Loader(folder / "release.toml", "", targets).from_raw(raw)
    except EdgekilnError as exc:
        assert exc.exit_code > 1 and "\n" not in exc.message


@SETTINGS
@given(raw=values)
def test_any_structure_is_a_matrix_or_one_error(folder, targets, raw):
    _matrix(folder, targets, raw)


model_body = st.fixed_dictionaries({"path": st.one_of(st.just("m.onnx"), st.just("m.onnx"), values)}, optional={
    **{k: values for k in MODEL_KEYS if k != "path"},
    "input": st.one_of(st.dictionaries(st.sampled_from(INPUT_KEYS), values, max_size=4), values),
    "targets": st.one_of(st.just({"onnx": ["int8"]}), values),
    "thresholds": st.one_of(st.dictionaries(st.sampled_from(["min_cosine", "onnx.int8.min_cosine", "int8.x"]), values),
                            values)})
VALID_RELEASE = {"name": "r", "version": "1", "date": dt.date(2026, 11, 28)}
release = st.one_of(st.just(VALID_RELEASE), st.just(VALID_RELEASE), st.just(VALID_RELEASE),
                    st.fixed_dictionaries({"name": st.sampled_from(["r", "bad name", 3]),
                                           "version": st.one_of(st.sampled_from(["1", "1\n<b>", "latest"]), values),
                                           "date": st.one_of(st.just(dt.date(2026, 11, 28)), values)}))
skeleton = st.fixed_dictionaries({
    "release": release,
    "targets": st.one_of(st.just({"onnx": ["fp32"]}), st.just({"onnx": ["fp32", "int8"], "rpi": "fp32"}), values),
    "models": st.dictionaries(st.sampled_from(["m", "m2", "archives", "a b", "..", "release.json"]), model_body,
                              min_size=1, max_size=2),
}, optional={"options": values, "thresholds": values})


@SETTINGS
@given(raw=skeleton)
def test_nearly_valid_release_files_are_a_matrix_or_one_error(folder, targets, raw):
    _matrix(folder, targets, raw)


@SETTINGS
@given(text=st.text(max_size=200))
def test_any_text_is_a_matrix_or_one_error(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "fuzz-release.toml"
    path.write_text(text)
    try:
        load_matrix(path)
    except EdgekilnError as exc:
        assert exc.exit_code > 1


@SETTINGS
@given(side=st.dictionaries(st.sampled_from(KEYS), values, max_size=8))
def test_any_sidecar_is_a_spec_or_one_error(side):
    try:
        input_spec(sidecar=side)
    except EdgekilnError as exc:
        assert exc.exit_code > 1 and "\n" not in exc.message


@SETTINGS
@given(text=st.text(max_size=200))
def test_any_sidecar_text_is_a_spec_or_one_error(tmp_path_factory, text):
    path = Path(tmp_path_factory.getbasetemp()) / "m.onnx.edgekiln.toml"
    path.write_text(text)
    try:
        input_spec(sidecar=load_sidecar(path))
    except EdgekilnError as exc:
        assert exc.exit_code > 1
