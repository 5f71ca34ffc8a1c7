"""Packaging without builds: the reproducible/volatile split, assembling twice gives the same
bytes, the --check comparison and its exclusion rule, verify, and what_changed."""

from __future__ import annotations

import json

from edgekiln.build import ArtifactResult
from edgekiln.matrix import load_matrix
from edgekiln.release import assemble, split_manifest, what_changed
from edgekiln.release_check import compare_releases, excluded, verify

MANIFEST = {
    "schema": 1, "created": "2026-11-28T20:00:00+00:00", "model": {"name": "net"}, "target": "onnx",
    "precision": "fp32", "build_key": "k1", "files": [],
    "validation": {"passed": True, "metrics": {"cosine": 1.0, "top1_agreement": 1.0, "accuracy": 0.9,
                                               "source_accuracy": 0.9, "map50": 0.5},
                   "latency_ms": {"median": 1.5}, "size_bytes": 5, "thresholds": {"min_cosine": 0.99}},
    "steps": [{"id": "01-source", "seconds": 3.2, "command": "docker run -v /x/jobs/abc:/job …", "image": "onnx",
               "environment": {"runner": "local", "ref": "/home/u/.cache/edgekiln/envs/onnx-1/bin/python",
                               "lock_sha256": "ab"}}],
    "data": {"calibration": {"path": "/home/u/photos", "sha256": "cd"}, "validation": None},
}


def fake_build(folder, engine_bytes, created):
    (folder / "build" / "steps").mkdir(parents=True)
    (folder / "build" / "logs").mkdir()
    (folder / "model.onnx").write_bytes(b"model")
    (folder / "model.engine").write_bytes(engine_bytes)
    (folder / "build" / "steps" / "01-source.py").write_text("print('hi')\n")
    (folder / "build" / "logs" / "01-source.log").write_text(f"took {created}\n")
    (folder / "build" / "commands.sh").write_text(f"docker run … {created}\n")
    manifest = json.loads(json.dumps(MANIFEST))
    manifest["created"] = created
    manifest["files"] = [{"path": n, "size": (folder / n).stat().st_size, "sha256": "-"} for n in ("model.onnx", "model.engine")]
    from edgekiln.store import file_entries
    manifest["files"] = file_entries(folder, ["model.onnx", "model.engine"])
    return ArtifactResult("onnx", "fp32", "built", folder, manifest)


def release_of(tmp_path, name, engine_bytes, created):
    (tmp_path / "net.onnx").write_bytes(b"\x08\x07")
    (tmp_path / "release.toml").write_text(
        '[release]\nname = "r"\nversion = "1"\ndate = 2026-11-28\n[targets]\nonnx = ["fp32"]\n'
        '[models.net]\npath = "net.onnx"\n')
    matrix = load_matrix(tmp_path / "release.toml")
    art = fake_build(tmp_path / f"dist-{name}", engine_bytes, created)
    ident = {"name": "r", "version": "1", "source_date_epoch": matrix.source_date_epoch(),
             "entries": {"net/onnx/fp32": {"build_key": "k1"}}}
    stage = tmp_path / name
    assemble(stage, matrix, {"net/onnx/fp32": art}, ident)
    return stage


def test_split_manifest_moves_only_volatile_fields():
    stable, volatile = split_manifest(MANIFEST)
    assert "created" not in stable and "latency_ms" not in stable["validation"]
    assert stable["steps"] == [{"id": "01-source", "image": "onnx", "environment": {"runner": "local", "lock_sha256": "ab"}}]
    assert stable["validation"]["metrics"] == MANIFEST["validation"]["metrics"]
    assert stable["data"] == {"calibration": {"sha256": "cd"}, "validation": None}
    assert "/home/" not in json.dumps(stable) and "/x/jobs" not in json.dumps(stable)
    assert volatile == {"created": MANIFEST["created"], "latency_ms": {"median": 1.5}, "model_file": None,
                        "data_paths": {"calibration": "/home/u/photos"},
                        "steps": {"01-source": {"seconds": 3.2, "command": MANIFEST["steps"][0]["command"],
                                                "environment_ref": "/home/u/.cache/edgekiln/envs/onnx-1/bin/python",
                                                "environment_host": None}}}


def test_two_assemblies_compare_identical_except_engines_and_measurements(tmp_path):
    a = release_of(tmp_path, "a", b"engine-1", "t1")
    b = release_of(tmp_path, "b", b"engine-2", "t2")
    assert not (a / "net/onnx/fp32/build/logs").exists() and not (a / "net/onnx/fp32/build/commands.sh").exists()
    rows = {r.path: r for r in compare_releases(a, b)}
    assert rows["net/onnx/fp32/model.engine"].status == "excluded" and "TensorRT" in rows["net/onnx/fp32/model.engine"].detail
    assert {p for p, r in rows.items() if r.status == "excluded"} == {
        "net/onnx/fp32/model.engine", "measured.json", "report.html", "report.md"}
    assert rows["archives/r-1.tar.gz"].status == "identical" and "excluded" in rows["archives/r-1.tar.gz"].detail
    assert "excluded" in rows["net/onnx/fp32/manifest.json"].detail  # the engine's record is masked
    assert rows["SHA256SUMS"].status == "identical"
    assert rows["net/onnx/fp32/manifest.json"].status == "identical"  # created/commands moved out, engine masked
    assert all(r.status in ("identical", "excluded") for r in rows.values())
    (b / "net/onnx/fp32/model.onnx").write_bytes(b"MODEL")
    assert {r.path: r.status for r in compare_releases(a, b)}["net/onnx/fp32/model.onnx"] == "differing"
    assert excluded("x/y/model.plan") and not excluded("x/y/model.onnx")


def test_report_carries_task_metrics_and_thresholds(tmp_path):
    a = release_of(tmp_path, "a", b"e", "t")
    md = (a / "report.md").read_text()
    assert "map50 0.5" in md and "min_cosine 0.99" in md and "| pass |" in md
    assert (a / "report.html").read_text().count("<svg") == 2


def test_verify_sees_edits_additions_and_manifest_changes(tmp_path):
    a = release_of(tmp_path, "a", b"e", "t")
    assert verify(a) == (len((a / "SHA256SUMS").read_text().splitlines()), [])
    (a / "net/onnx/fp32/model.onnx").write_bytes(b"modeL")
    (a / "extra.txt").write_text("x")
    _, problems = verify(a)
    text = "\n".join(problems)
    assert "net/onnx/fp32/model.onnx: changed" in text and "does not match its manifest" in text
    assert "extra.txt: not in SHA256SUMS" in text and "member r-1/net/onnx/fp32/model.onnx" in text


def test_what_changed_names_the_field():
    old = {"source_date_epoch": 1, "entries": {"m/onnx/int8": {"build_key": "a", "inputs": {"calib": "1" * 64},
                                                               "thresholds": {"min_cosine": 0.9}}}}
    new = {"source_date_epoch": 2, "entries": {"m/onnx/int8": {"build_key": "b", "inputs": {"calib": "2" * 64},
                                                               "thresholds": {"min_cosine": 0.9}},
                                               "m/onnx/fp32": {"build_key": "c"}}}
    changes = what_changed(old, new)
    assert changes[0].startswith("archive mtime") and "entry m/onnx/fp32 added" in changes
    assert "m/onnx/int8: inputs.calib 111111111111… → 222222222222…" in changes
    same = {"source_date_epoch": 1, "entries": {"m/onnx/int8": {"build_key": "z", "inputs": {"calib": "1" * 64},
                                                                "thresholds": {"min_cosine": 0.9}}}}
    assert "build key (edgekiln's recipes" in what_changed(old, same)[0]


def test_verify_of_a_folder_that_is_no_release_is_a_usage_error(tmp_path):
    from edgekiln import errors
    from tests.conftest import run_cli

    proc = run_cli("verify", tmp_path, check=errors.UsageError.exit_code)
    assert proc.stderr.startswith("error:") and "is not a release folder" in proc.stderr


def _resum(folder):
    from edgekiln.archive import write_sums

    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS"]
    write_sums(folder, names)


def test_verify_refuses_link_members_even_with_fresh_sums(tmp_path):
    """review finding 10: an archive re-packed with a symlink member and a hardlink member named
    ../../../tmp/… passed verify once SHA256SUMS was regenerated."""
    import tarfile

    a = release_of(tmp_path, "a", b"e", "t")
    archive = next(a.rglob("*.tar.gz"))
    with tarfile.open(archive, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]
    with tarfile.open(archive, "w:gz") as tar:
        for m, data in members:
            tar.addfile(m, __import__("io").BytesIO(data) if data is not None else None)
        link = tarfile.TarInfo("r-1/net/onnx/fp32/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../../../../root/.bashrc"
        tar.addfile(link)
        hard = tarfile.TarInfo("../../../tmp/pwned")
        hard.type, hard.linkname = tarfile.LNKTYPE, "r-1/net/onnx/fp32/model.onnx"
        tar.addfile(hard)
    _resum(a)
    _, problems = verify(a)
    text = "\n".join(problems)
    assert "member r-1/net/onnx/fp32/evil is a link" in text and "member ../../../tmp/pwned is a link" in text


def test_verify_of_a_malformed_release_json_is_one_line_exit_13(tmp_path):
    from edgekiln import errors
    from tests.conftest import run_cli

    a = release_of(tmp_path, "a", b"e", "t")
    info = json.loads((a / "release.json").read_text())
    for bad in ({**info, "entries": [{}]}, {**info, "entries": [1]}, [1], {**info, "archives": "x"},
                {**info, "entries": [{**info["entries"][0], "manifest": {
                    **info["entries"][0]["manifest"], "files": [{"path": "/etc/hostname", "size": 1, "sha256": "x"}]}}]}):
        (a / "release.json").write_text(json.dumps(bad))
        _resum(a)
        proc = run_cli("verify", a, check=errors.IntegrityError.exit_code)
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        assert "release.json" in proc.stderr
    (a / "SHA256SUMS").write_bytes(b"\xff\xfe not text\n")
    proc = run_cli("verify", a, check=errors.IntegrityError.exit_code)
    assert "Traceback" not in proc.stderr


def test_verify_refuses_a_link_in_the_release_folder(tmp_path):
    a = release_of(tmp_path, "a", b"e", "t")
    (tmp_path / "outside").write_text("host file\n")
    (a / "net/onnx/fp32/model.onnx").unlink()
    (a / "net/onnx/fp32/model.onnx").symlink_to(tmp_path / "outside")
    _, problems = verify(a)
    assert any("model.onnx: a symbolic link" in p for p in problems)


def test_report_md_cells_are_text_only(tmp_path):
    """review finding 11: report.md carried a version's and a step's raw <img onerror> markup."""
    from edgekiln.report import by_model, markdown

    manifest = json.loads(json.dumps(MANIFEST))
    manifest["model"]["name"] = "net<script>x</script>"
    manifest["not_executed"] = ["<img src=x onerror=alert(1)>\n| injected | row |"]
    manifest["notes"] = ["<img src=x onerror=alert(2)>"]
    manifest["validation"]["metrics"]["<img src=y onerror=alert(3)>"] = 1.0
    manifest["size_bytes"] = 5
    text = markdown("r 1 <b>", by_model([manifest]))
    assert "<img" not in text and "<script>" not in text and "<b>" not in text
    assert all(line.startswith(("#", "|", "Charts")) or not line for line in text.splitlines())
