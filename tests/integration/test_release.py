"""Releases for real: the demo MobileNetV2 (real weights, real photos) × onnx fp32/int8, built
through the CLI in a subprocess with the local runner, packaged, checked, verified, reported."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from edgekiln import errors
from tests.conftest import ROOT, run_cli, run_json

pytestmark = pytest.mark.integration

MATRIX = """\
[release]
name = "demo"
version = "{version}"
date = 2026-11-28

[targets]
onnx = {precisions}
{models}"""

MODEL = """
[models.{name}]
path = "{weights}"
arch = "mobilenet_v2"
input = {{ shape = [1, 3, 224, 224], mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] }}
calib = "{calib}"
val = "{val}"
labels = "{val}/labels.csv"
{extra}
"""


def matrix(folder: Path, weights, photos, version="1.0.0", precisions='["fp32", "int8"]',
           names=("mobilenet_v2",), extra="") -> Path:
    calib, val = photos
    models = "".join(MODEL.format(name=n, weights=weights, calib=calib, val=val, extra=extra) for n in names)
    path = folder / f"release-{version}.toml"
    path.write_text(MATRIX.format(version=version, precisions=precisions, models=models))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("release")


@pytest.fixture(scope="module")
def released(root, weights, photos):
    file = matrix(root, weights, photos)
    result = run_json("release", file, "--out", root / "rel", "--dist", root / "dist", "--runner", "local", "-j", "2")
    return file, result


def test_release_tree_archives_and_sums(released, root):
    _, result = released
    rel = Path(result["path"])
    assert result["status"] == "released" and rel == root / "rel" / "demo-1.0.0"
    assert sorted(result["entries"]) == ["mobilenet_v2/onnx/fp32", "mobilenet_v2/onnx/int8"]
    assert [a["path"] for a in result["archives"]] == ["archives/demo-1.0.0-onnx.tar.gz", "archives/demo-1.0.0.tar.gz"]
    proc = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=rel, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = json.loads((rel / "release.json").read_text())
    for entry in info["entries"]:
        text = (rel / entry["path"] / "manifest.json").read_text()
        manifest = json.loads(text)
        assert manifest == entry["manifest"] and "created" not in manifest
        assert str(Path.home()) not in text and str(root) not in text, "a path of the build machine"
        assert "latency_ms" not in manifest["validation"] and manifest["validation"]["metrics"]["cosine"] > 0.9
        assert (rel / entry["path"] / "model.onnx").stat().st_size == manifest["files"][0]["size"]
        assert info["identity"]["entries"][entry["path"]]["build_key"] == manifest["build_key"]
    measured = json.loads((rel / "measured.json").read_text())["entries"]
    assert measured["mobilenet_v2/onnx/int8"]["latency_ms"]["median"] > 0
    with tarfile.open(rel / "archives" / "demo-1.0.0.tar.gz") as tar:
        infos = tar.getmembers()
    assert {i.mtime for i in infos} == {1795824000} and {(i.uid, i.gid, i.uname) for i in infos} == {(0, 0, "")}
    assert "demo-1.0.0/release.json" in {i.name for i in infos}
    assert not [p for p in (root / "rel").iterdir() if p.name.startswith(".")], "staging left behind"


def test_a_published_build_folder_holds_only_what_its_steps_imported(released):
    """build/ of onnx/int8: its step scripts and exactly the helpers they import (edgekiln.helpers),
    none of another runtime's."""
    from edgekiln.helpers import needed
    from edgekiln.resources import data_dir

    build = Path(released[1]["path"]) / "mobilenet_v2" / "onnx" / "int8" / "build"
    scripts = [p.read_text() for p in sorted((build / "steps").glob("*.py"))]
    params = [json.loads(p.read_text()) for p in sorted((build / "steps").glob("*.json"))]
    helpers = {p.relative_to(build).as_posix() for p in build.rglob("*") if p.is_file() and "steps" not in p.parts}
    assert helpers == set(needed(data_dir("converters"), scripts, params)), helpers
    assert {"ekit/__init__.py", "ekit_onnx.py", "ekit_torch.py", "zoo/mobilenet_v2.py"} <= helpers
    assert not {"ekit_rknn.py", "ekit_ov.py", "ekit_tf.py", "ekit_trt.py", "tensorrt_onnx_ops.json"} & helpers


def test_same_release_again_is_a_no_op_and_other_inputs_are_refused(released, root, weights, photos, tmp_path):
    file, _ = released
    again = run_json("release", file, "--out", root / "rel", "--dist", root / "dist", "--runner", "local")
    assert again["status"] == "exists"
    changed = matrix(tmp_path, weights, photos, extra='thresholds = { "onnx.int8.min_top1_agreement" = 0.5 }')
    proc = run_cli("release", changed, "--out", root / "rel", "--dist", root / "dist", "--runner", "local",
                   check=errors.PublishConflict.exit_code)
    line = proc.stderr.strip()
    assert "Traceback" not in line and "already released from other inputs" in line
    assert "mobilenet_v2/onnx/int8: thresholds.min_top1_agreement 0.8 → 0.5" in line, line


def test_check_rebuilds_from_scratch_and_every_file_is_identical(released, root):
    file, _ = released
    result = run_json("release", file, "--out", root / "rel", "--dist", root / "dist", "--runner", "local",
                      "-j", "2", "--check")
    counts = result["check"]["counts"]
    statuses = {f["path"]: f["status"] for f in result["check"]["files"]}
    assert counts.get("differing", 0) == 0 and counts.get("missing", 0) == 0, result["check"]
    assert statuses["mobilenet_v2/onnx/int8/model.onnx"] == "identical"
    assert statuses["archives/demo-1.0.0.tar.gz"] == "identical"
    assert {p for p, s in statuses.items() if s == "excluded"} == {"measured.json", "report.html", "report.md"}
    print(f"release --check: {counts['identical']}/{len(statuses) - counts['excluded']} identical")


def test_a_refused_entry_stops_the_release_naming_it(root, weights, photos, tmp_path):
    """All or nothing: fp32 passes, int8 misses an impossible cosine: nothing is released, the
    line names model, target, precision and threshold, the exit code is a refusal's."""
    file = matrix(tmp_path, weights, photos, version="3.0.0", extra='thresholds = { "onnx.int8.min_cosine" = 0.999 }')
    proc = run_cli("release", file, "--out", tmp_path / "rel", "--dist", root / "dist", "--runner", "local",
                   check=errors.ValidationFailed.exit_code)
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: release demo-3.0.0 stopped, nothing released"), line
    assert "mobilenet_v2 onnx/int8 refused: min cosine 0.999 missed" in line, line
    assert not (tmp_path / "rel" / "demo-3.0.0").exists()


def test_release_works_without_matplotlib(released, root, tmp_path):
    """The base install has no matplotlib: the release is made (cached builds), its report says
    the charts were skipped."""
    file, _ = released
    code = ("import sys; sys.modules['matplotlib'] = None; from edgekiln.cli import program; "
            "program.run(['edgekiln'] + sys.argv[1:])")
    proc = subprocess.run([sys.executable, "-c", code, "release", str(file), "--out", str(tmp_path), "--dist",
                           str(root / "dist"), "--runner", "local", "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (Path(json.loads(proc.stdout)["path"]) / "report.html").read_text()
    assert "Charts skipped: matplotlib is not installed" in page and "<svg" not in page


def test_check_covers_the_accuracy_control_path(weights, photos, tmp_path):
    """intel int8 with labelled validation images and a max drop: NNCF's accuracy control runs;
    the IR's rt_info holds nothing measured, so the rebuild is byte-identical."""
    file = matrix(tmp_path, weights, photos, version="4.0.0", precisions='["int8"]',
                  extra='thresholds = { "intel.int8.max_accuracy_drop" = 5 }')
    file.write_text(file.read_text().replace('onnx = ["int8"]', 'intel = ["int8"]'))
    result = run_json("release", file, "--out", tmp_path / "rel", "--dist", tmp_path / "dist", "--runner", "local",
                      "--check")
    manifest = json.loads((Path(result["path"]) / "mobilenet_v2" / "intel" / "int8" / "manifest.json").read_text())
    convert = next(s for s in manifest["steps"] if s["kind"] == "convert")
    quant = json.loads((Path(result["path"]) / "mobilenet_v2" / "intel" / "int8" / convert["params"]).read_text())
    assert quant["thresholds"]["max_accuracy_drop"] == 5
    log = next((tmp_path / "dist" / "mobilenet_v2").glob("*/intel/int8/build/logs/*-convert.log")).read_text()
    assert "accuracy control:" in log  # the path ran (labelled images, a max drop)
    statuses = {f["path"]: f["status"] for f in result["check"]["files"]}
    assert statuses["mobilenet_v2/intel/int8/model.xml"] == "identical", result["check"]
    assert result["check"]["counts"].get("differing", 0) == 0, result["check"]


def test_verify_passes_and_catches_a_one_byte_edit(released, tmp_path):
    rel = Path(released[1]["path"])
    assert "ok:" in run_cli("verify", rel, check=0).stdout
    copy = tmp_path / rel.name
    shutil.copytree(rel, copy)
    archive = copy / "archives" / "demo-1.0.0-onnx.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    proc = run_cli("verify", copy, check=errors.IntegrityError.exit_code)
    assert "archives/demo-1.0.0-onnx.tar.gz: changed" in proc.stdout
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


def test_a_changed_manifest_is_caught(released, tmp_path):
    copy = tmp_path / "r"
    shutil.copytree(Path(released[1]["path"]), copy)
    manifest = copy / "mobilenet_v2" / "onnx" / "fp32" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"passed": true', '"passed": false'))
    proc = run_cli("verify", copy, "--json", check=errors.IntegrityError.exit_code)
    problems = json.loads(proc.stdout)["problems"]
    assert any("manifest.json: changed" in p for p in problems)
    assert any("differs from release.json" in p for p in problems)


def test_interrupted_release_leaves_no_folder_and_the_rerun_completes_from_cache(released, root, weights, photos):
    """Two models; SIGTERM while the second builds: no release folder, no staging; the rerun
    finds the first model cached and completes."""
    file = matrix(root, weights, photos, version="2.0.0", precisions='["fp32"]', names=("mobilenet_v2", "copy"))
    dist, out = root / "dist", root / "rel"
    args = [sys.executable, "-m", "edgekiln", "release", str(file), "--out", str(out), "--dist", str(dist),
            "--runner", "local"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(dist.glob(".edgekiln/jobs/*/logs/*source*.log")):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == errors.Interrupted.exit_code, err
    assert not (out / "demo-2.0.0").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".stage")]
    again = run_json(*args[3:])
    assert again["status"] == "released"
    assert again["entries"]["mobilenet_v2/onnx/fp32"]["status"] == "cached"
    assert again["entries"]["copy/onnx/fp32"]["status"] == "built"


def test_report_of_a_single_build(released, root, tmp_path):
    (version,) = [p for p in (root / "dist" / "mobilenet_v2").iterdir() if p.name != "latest" and p.is_dir()][:1]
    run_cli("report", version, "--out", tmp_path, check=0)
    md = (tmp_path / "report.md").read_text()
    assert "| onnx | int8 |" in md and "min_cosine" in md
    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg") == 2 and "http-equiv=\"Content-Security-Policy\"" in page


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def browser_or_skip():
    """Playwright driving Debian's chromium (never `playwright install`); in CI
    (EDGEKILN_REQUIRE_BROWSER=1, set by .ci/run) a missing browser is a failure, not a skip."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is not installed (pip install -e '.[test]')"
    if missing is None and not os.access(CHROMIUM, os.X_OK):
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    if missing:
        if os.environ.get("EDGEKILN_REQUIRE_BROWSER") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    return sync_playwright


def ink(png: bytes) -> float:
    """Share of pixels that are not (near) white."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("L")
    return sum(img.histogram()[:200]) / (img.width * img.height)


def test_report_renders_in_chromium_offline(released, tmp_path):
    sync_playwright = browser_or_skip()
    page_path = Path(released[1]["path"]) / "report.html"
    requests = []
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            text = page.inner_text("body")
            charts = {}
            for kind in ("size", "latency"):
                element = page.locator(f"#chart-{kind}-0")
                box = element.bounding_box()
                assert box and box["width"] > 200 and box["height"] > 80, (kind, box)
                charts[kind] = (ink(element.screenshot()), element.inner_text())
        finally:
            chromium.close()
    assert requests == [page_path.as_uri()], f"the page made requests: {requests}"
    assert "mobilenet_v2" in text and "onnx" in text and "int8" in text and "pass" in text
    assert "size vs accuracy" in charts["size"][1] and "onnx/int8" in charts["size"][1]
    assert "latency per target/precision" in charts["latency"][1]
    for kind, (share, _) in charts.items():
        assert 0.01 < share < 0.6, f"{kind} chart looks blank or solid: {share:.3f} of its pixels are ink"
    assert (tmp_path / "report.png").stat().st_size > 10_000
