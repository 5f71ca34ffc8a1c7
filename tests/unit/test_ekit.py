"""converters/ekit.py: the helper every converter script imports (numpy + Pillow only).

Real image files in every awkward mode are written to tmp folders; no conversion environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

EKIT = Path(__file__).resolve().parents[2] / "converters" / "ekit"  # the package (tests/conftest.py: on sys.path)


def _load_ekit():
    import ekit

    assert Path(ekit.__file__).parent == EKIT
    return ekit


ekit = _load_ekit()

SPEC = {"name": None, "shape": [1, 3, 4, 4], "layout": "nchw", "color": "rgb", "scale": 255.0,
        "mean": None, "std": None, "resize": "stretch", "dynamic_batch": False}


def spec(**kw):
    return {**SPEC, **kw}


def solid(mode, size=(8, 6), color=None):
    return Image.new(mode, size, color)


# --------------------------------------------------------------------------- awkward files

def test_every_mode_loads_as_uint8_rgb(tmp_path):
    solid("L", color=100).save(tmp_path / "grey.png")
    solid("LA", color=(100, 0)).save(tmp_path / "grey_alpha.png")
    p = solid("P")
    p.putpalette([10, 20, 30] * 256)
    p.save(tmp_path / "palette.png")
    solid("RGBA", color=(10, 20, 30, 0)).save(tmp_path / "rgba.png")
    solid("CMYK", color=(0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    solid("1", color=1).save(tmp_path / "bilevel.bmp")
    for name, expect in [("grey.png", (100, 100, 100)), ("grey_alpha.png", (100, 100, 100)),
                         ("palette.png", (10, 20, 30)), ("rgba.png", (10, 20, 30)),
                         ("bilevel.bmp", (255, 255, 255))]:
        a = ekit.load_rgb(tmp_path / name)
        assert a.dtype == np.uint8 and a.shape == (6, 8, 3), name
        assert tuple(a[0, 0]) == expect, name
    cmyk = ekit.load_rgb(tmp_path / "cmyk.jpg")  # C=M=Y=K=0 is white
    assert cmyk.shape == (6, 8, 3) and cmyk.min() >= 250


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    a16 = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(a16).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    a = ekit.load_rgb(tmp_path / "deep.png")
    assert a[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (a[..., 0] == a[..., 2]).all()


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    img.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    a = ekit.load_rgb(tmp_path / "rot.jpg")
    assert a.shape == (4, 2, 3)  # portrait after transpose


def test_corrupt_files_return_none_and_warn(tmp_path, capsys):
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "good.jpg")
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("this is not a picture")
    (tmp_path / "empty.png").write_bytes(b"")
    assert ekit.load_rgb(tmp_path / "good.jpg") is not None
    for name in ("truncated.jpg", "text.jpg", "empty.png"):
        assert ekit.load_rgb(tmp_path / name) is None, name
    out = capsys.readouterr().out
    assert "truncated.jpg" in out and "text.jpg" in out and "empty.png" in out


def test_list_images_recursive_sorted_and_skips_label_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    for rel in ("b/2.PNG", "a.jpg", "b/1.jpeg", ".hidden/x.jpg", "labels.csv", "notes.txt"):
        (tmp_path / rel).write_bytes(b"x")
    names = [p.relative_to(tmp_path).as_posix() for p in ekit.list_images(tmp_path)]
    assert names == ["a.jpg", "b/1.jpeg", "b/2.PNG"]


# --------------------------------------------------------------------------- preprocessing

def test_preprocess_by_hand():
    pix = np.zeros((1, 2, 2, 3), np.uint8)
    pix[0, 0, 0] = (255, 0, 51)
    s = spec(shape=[1, 3, 2, 2], mean=[0.5, 0.5, 0.5], std=[0.5, 0.25, 0.2])
    x = ekit.preprocess(pix, s)
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    # R: (1 - .5)/.5 = 1; G: (0 - .5)/.25 = -2; B: (0.2 - .5)/.2 = -1.5
    np.testing.assert_allclose(x[0, :, 0, 0], [1.0, -2.0, -1.5], rtol=1e-6)
    np.testing.assert_allclose(x[0, :, 1, 1], [-1.0, -2.0, -2.5], rtol=1e-6)
    # BGR + NHWC + scale 1: channels reversed, raw 0..255, mean listed in BGR order
    xb = ekit.preprocess(pix, spec(shape=[1, 2, 2, 3], layout="nhwc", color="bgr", scale=1.0,
                                   mean=[1, 2, 3]))
    assert xb.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(xb[0, 0, 0], [50, -2, 252])
    # one channel: Pillow's luma
    xg = ekit.preprocess(pix, spec(shape=[1, 1, 2, 2], scale=1.0))
    assert xg.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(xg[0, 0, 0, 0], 255 * 0.299 + 51 * 0.114, rtol=1e-5)


def test_crop_resize_matches_torchvision_rule(tmp_path):
    # 400x300 image, 224 input: shorter side -> 256, longer int(256*400/300) = 341, centre crop
    a = np.zeros((300, 400, 3), np.uint8)
    a[:, :200] = 200  # left half bright
    Image.fromarray(a).save(tmp_path / "wide.png")
    out = ekit.load_rgb(tmp_path / "wide.png", (224, 224), "crop")
    assert out.shape == (224, 224, 3)
    # crop starts at round((341-224)/2) = 58 of the 341 wide image: the edge at 170.5 -> 112.5
    assert out[0, 100, 0] == 200 and out[0, 124, 0] == 0
    st = ekit.load_rgb(tmp_path / "wide.png", (10, 20), "stretch")
    assert st.shape == (10, 20, 3)


def test_describe_preprocessing_mentions_numbers():
    s = spec(shape=[1, 3, 224, 224], mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
             resize="crop")
    text = ekit.describe_preprocessing(s)
    assert "256" in text and "224x224" in text and "0.485" in text and "NCHW" in text
    assert "BGR" in ekit.describe_preprocessing(spec(color="bgr"))


# --------------------------------------------------------------------------- data sets + labels

def _write(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), (value, value, value)).save(path)


def test_load_set_class_folders_integer_and_named(tmp_path):
    _write(tmp_path / "ints" / "7" / "a.png")
    _write(tmp_path / "ints" / "3" / "b.png")
    d = ekit.load_set(tmp_path / "ints", SPEC)
    assert d["files"] == ["3/b.png", "7/a.png"] and d["labels"].tolist() == [3, 7]
    assert d["x"].shape == (2, 3, 4, 4) and d["pixels"].shape == (2, 4, 4, 3)
    assert d["labels"].dtype == np.int64
    _write(tmp_path / "names" / "dog" / "a.png")
    _write(tmp_path / "names" / "cat" / "b.png")
    d = ekit.load_set(tmp_path / "names", SPEC)
    assert d["labels"].tolist() == [0, 1]  # cat, dog
    _write(tmp_path / "flat" / "a.png")
    assert ekit.load_set(tmp_path / "flat", SPEC)["labels"].tolist() == [-1]


def test_load_set_label_file(tmp_path):
    _write(tmp_path / "a.png")
    _write(tmp_path / "sub" / "b.png")
    _write(tmp_path / "c.png")
    (tmp_path / "labels.csv").write_text("filename,label\na.png,5\nsub/b.png, 9\n")
    d = ekit.load_set(tmp_path, SPEC)
    assert d["files"] == ["a.png", "c.png", "sub/b.png"]
    assert d["labels"].tolist() == [5, -1, 9] and d["labels_from"] == "labels.csv"


def test_load_set_skips_bad_files_and_fails_below_minimum(tmp_path, capsys):
    _write(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_text("nope")
    d = ekit.load_set(tmp_path, SPEC, min_count=1)
    assert d["files"] == ["good.png"] and d["skipped"][0][0] == "bad.jpg"
    with pytest.raises(SystemExit) as e:
        ekit.load_set(tmp_path, SPEC, min_count=2, purpose="calibration")
    assert e.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("EDGEKILN-ERROR ")
    info = json.loads(err[len("EDGEKILN-ERROR "):])
    assert info["kind"] == "data" and "calibration" in info["message"]


@pytest.mark.parametrize("make", ["missing", "empty", "file", "only_text"])
def test_load_set_missing_or_empty_folder_is_data_error(tmp_path, capsys, make):
    folder = tmp_path / "d"
    if make == "empty":
        folder.mkdir()
    elif make == "file":
        folder.write_text("x")
    elif make == "only_text":
        folder.mkdir()
        (folder / "labels.txt").write_text("a.png 1\n")
    with pytest.raises(SystemExit):
        ekit.load_set(folder, SPEC)
    info = json.loads(capsys.readouterr().err.strip().splitlines()[-1].split(" ", 1)[1])
    assert info["kind"] == "data" and str(folder) in info["message"]


def test_load_set_limit_spreads_over_classes(tmp_path):
    for c in range(4):
        for i in range(5):
            _write(tmp_path / str(c) / f"{i}.png")
    d = ekit.load_set(tmp_path, SPEC, limit=4)
    assert len(d["files"]) == 4 and sorted(set(d["labels"].tolist())) == [0, 1, 2, 3]


def test_synthetic_set_is_seeded():
    a = ekit.synthetic_set(spec(mean=[0.5] * 3, std=[0.5] * 3), n=3, seed=1)
    b = ekit.synthetic_set(spec(mean=[0.5] * 3, std=[0.5] * 3), n=3, seed=1)
    assert a["x"].shape == (3, 3, 4, 4) and np.array_equal(a["x"], b["x"])
    assert -1.0 <= a["x"].min() and a["x"].max() <= 1.0 and (a["labels"] == -1).all()


def test_shape_not_fixed_is_shape_error(capsys):
    with pytest.raises(SystemExit):
        ekit.input_hw(spec(shape=[1, 3, None, 224]))
    assert '"kind": "shape"' in capsys.readouterr().err


def test_reference_roundtrip(tmp_path):
    d = ekit.synthetic_set(SPEC, n=2)
    ekit.write_reference(tmp_path / "r.npz", d, [np.ones((2, 5)), np.zeros((2, 1))])
    r = ekit.read_reference(tmp_path / "r.npz")
    assert len(r["y"]) == 2 and r["files"] == d["files"] and r["labels"].tolist() == [-1, -1]


# --------------------------------------------------------------------------- compare & co

def test_compare_known_arrays():
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    out = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    m = ekit.compare([ref], [out], labels=[0, 2])
    assert m["n"] == 2 and m["max_abs"] == 2.0 and m["mean_abs"] == pytest.approx(4 / 6)
    assert m["cosine"] == 0.0 and m["cosine_mean"] == 0.5
    assert m["top1_agreement"] == 0.5
    assert m["accuracy"] == 1.0 and m["source_accuracy"] == 0.5
    json.dumps(m, allow_nan=False)
    same = ekit.compare([ref, ref[:, :1]], [ref, ref[:, :1]])
    assert same["cosine"] == pytest.approx(1.0) and same["max_abs"] == 0.0
    assert same["accuracy"] is None


def test_compare_non_classification_and_shapes():
    ref = np.random.default_rng(0).normal(size=(3, 2, 4, 4))
    m = ekit.compare([ref], [ref * 2])
    assert m["top1_agreement"] is None and m["cosine"] == pytest.approx(1.0)
    m = ekit.compare([np.ones((2, 10))], [np.ones((2, 1, 10))])  # size-1 dims tolerated
    assert m["max_abs"] == 0.0 and m["top1_agreement"] == 1.0
    with pytest.raises(ValueError):
        ekit.compare([np.ones((2, 3, 4))], [np.ones((2, 4, 3))])
    nan = ekit.compare([np.ones((1, 3))], [np.array([[np.nan, 1, 1]])])
    assert nan["nonfinite"] == 1 and nan["cosine"] == 0.0 and nan["max_abs"] is None
    zero = ekit.compare([np.zeros((1, 3))], [np.zeros((1, 3))])
    assert zero["cosine"] == 1.0


def test_latency_tensor_spec_file_size(tmp_path):
    lat = ekit.latency(lambda: None, runs=5, warmup=1)
    assert lat["runs"] == 5 and lat["median"] >= 0 and lat["p90"] >= lat["median"] - 1e-9
    t = ekit.tensor_spec("x", [None, 3, "h", 224], "tensor(uint8)",
                         {"scale": np.float32(0.5), "zero_point": np.uint8(128)})
    assert t == {"name": "x", "shape": [None, 3, "h", 224], "dtype": "uint8",
                 "quantization": {"scale": [0.5], "zero_point": [128]}}
    assert ekit.tensor_spec("y", (1, 10), np.float32)["dtype"] == "float32"
    (tmp_path / "a").write_bytes(b"123")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"45")
    assert ekit.file_size(tmp_path / "a") == 3 and ekit.file_size([tmp_path / "a", tmp_path / "d"]) == 5


def test_params_paths_finish_fail(tmp_path, monkeypatch):
    steps = tmp_path / "steps"
    steps.mkdir()
    (steps / "01-x.json").write_text('{"step": "01-x", "kind": "source"}')
    assert ekit.params(steps / "01-x.py")["kind"] == "source"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EKIT_PATHS", json.dumps({"model": "/m", "calib": None, "val": "/v"}))
    assert ekit.paths() == {"model": "/m", "calib": None, "val": "/v"}
    assert ekit.work() == tmp_path / "work"
    ekit.finish(steps / "01-x.py", ["numpy", "no-such-dist-xyz"], metrics={"a": np.float32(1)})
    res = json.loads((tmp_path / "work" / "results" / "01-x.json").read_text())
    assert res["versions"]["numpy"] == np.__version__ and res["versions"]["no-such-dist-xyz"] is None
    assert res["metrics"] == {"a": 1.0}
    # fail(): last stderr line, exit 3, in a real process
    p = subprocess.run([sys.executable, "-c",
                        "import sys; sys.path.insert(0, sys.argv[1]); import ekit; "
                        "print('progress'); ekit.fail('shape', 'bad \"shape\"', 'fix it')",
                        str(EKIT.parent)], capture_output=True, text=True)
    assert p.returncode == 3
    last = p.stderr.strip().splitlines()[-1]
    assert json.loads(last[len("EDGEKILN-ERROR "):]) == {"kind": "shape", "message": 'bad "shape"',
                                                         "hint": "fix it"}
