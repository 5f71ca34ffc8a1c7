"""Parsing of what the user asks for, and source-format detection (no environments)."""

import zipfile

import pytest

from edgekiln.errors import InvalidModel, ModelNotFound, UsageError
from edgekiln.request import (detect_format, input_spec, parse_assignments, parse_floats, parse_shape,
                              safe_name)


@pytest.mark.parametrize("raw, expected", [
    ("mobilenet", "mobilenet"),
    ("my model", "my_model"),
    ('a"; import os', "a_import_os"),
    ("../../etc/passwd", "etc_passwd"),
    ("..", "model"),
    ("", "model"),
    ("modèle-ünïcode", "modèle-ünïcode"),
    ("a/b\\c", "a_b_c"),
    (".hidden", "hidden"),
])
def test_safe_name_is_one_harmless_path_component(raw, expected):
    assert safe_name(raw) == expected
    assert "/" not in safe_name(raw) and not safe_name(raw).startswith(".")


def test_shape_and_floats():
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    assert parse_shape(None) is None
    for bad in ("1,3,224", "a,b,c,d", "1,3,0,224", "-1,3,2,2"):
        with pytest.raises(UsageError):
            parse_shape(bad)
    assert parse_floats("0.5", "mean") == (0.5,)
    with pytest.raises(UsageError):
        parse_floats("1,2", "mean")
    with pytest.raises(UsageError):
        parse_floats("0.2,0,0.2", "std")


def test_input_spec_cli_wins_over_sidecar():
    spec = input_spec(shape="1,3,224,224", mean="0.5,0.5,0.5",
                      sidecar={"std": [0.25, 0.25, 0.25], "mean": [0, 0, 0], "color": "bgr", "shape": [1, 3, 8, 8]})
    assert spec.shape == (1, 3, 224, 224)
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.25, 0.25, 0.25)
    assert spec.color == "bgr"
    assert spec.to_json()["shape"] == [1, 3, 224, 224]


@pytest.mark.parametrize("kwargs", [{"layout": "chwn"}, {"resize": "zoom"}, {"scale": -1},
                                    {"shape": "1,224,224,3", "layout": "nchw"}])
def test_input_spec_rejects_nonsense(kwargs):
    with pytest.raises(UsageError):
        input_spec(**kwargs)


def test_assignments_are_typed():
    assert parse_assignments(["a=1", "b=true", "c=uint8", "d=0.5", "e=[1, 2]"], "option") == \
        {"a": 1, "b": True, "c": "uint8", "d": 0.5, "e": [1, 2]}
    with pytest.raises(UsageError):
        parse_assignments(["novalue"], "option")


def test_detect_format(tmp_path):
    with pytest.raises(ModelNotFound):
        detect_format(tmp_path / "missing.onnx", arch=None, trust_pickle=False)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(InvalidModel, match="empty"):
        detect_format(empty, arch=None, trust_pickle=False)
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    assert detect_format(tmp_path / "m.onnx", arch=None, trust_pickle=False) == "onnx"
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InvalidModel, match="not a model"):
        detect_format(text, arch=None, trust_pickle=False)
    fake_pt = tmp_path / "fake.pt"
    fake_pt.write_text("not torch at all")
    with pytest.raises(InvalidModel, match="not a PyTorch file"):
        detect_format(fake_pt, arch=None, trust_pickle=False)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(InvalidModel, match="SavedModel"):
        detect_format(folder, arch=None, trust_pickle=False)
    (folder / "saved_model.pb").write_bytes(b"x")
    assert detect_format(folder, arch=None, trust_pickle=False) == "saved_model"


def test_detect_torch_archives(tmp_path):
    ts = tmp_path / "scripted.pt"
    with zipfile.ZipFile(ts, "w") as zf:
        zf.writestr("scripted/code/__torch__.py", "")
        zf.writestr("scripted/constants.pkl", "")
        zf.writestr("scripted/data.pkl", "")
    assert detect_format(ts, arch=None, trust_pickle=False) == "torchscript"
    ckpt = tmp_path / "weights.pth"
    with zipfile.ZipFile(ckpt, "w") as zf:
        zf.writestr("weights/data.pkl", "")
    with pytest.raises(UsageError, match="--arch"):
        detect_format(ckpt, arch=None, trust_pickle=False)
    assert detect_format(ckpt, arch="mobilenet_v2", trust_pickle=False) == "state_dict"
    assert detect_format(ckpt, arch=None, trust_pickle=True) == "pickle"
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(b"\x80\x02\x8a\x0alZ\xfc\x9cF\xf9 j\xa8P\x19.")
    assert detect_format(legacy, arch="mobilenet_v2", trust_pickle=False) == "state_dict"
