"""Builds across machines for real: Debian's redis-server on a free loopback port as the broker,
two `edgekiln worker` processes bound to the two Docker engines of .ci/docker-up.sh (A: the
default engine, queues amd64 and arm64 under QEMU; B: the second engine, amd64 only), a shared
folder as the store. A small release (two small real ONNX models, onnx fp32/int8, real photos:
examples/release.toml — MobileNetV2 × 18 artifacts on 7 targets, whose images would be built on
both engines — is too slow for the suite on 2 cores) released through the broker equals the same
release built here; a rerun sends no task; Ctrl-C revokes; kill -9 of a busy worker mid-release is
redelivered and the release completes and verifies; an arm64 step goes only to the arm64 worker.

Skipped without redis-server or celery — a FAILURE with EDGEKILN_REQUIRE_BROKER=1 (CI: .ci/run)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekiln import errors
from tests.conftest import ROOT, run_cli

from .conftest import SECOND_HOST, STAND_IN
from .test_arm64 import ARM_BASE, arm_engine  # noqa: F401 (the fixture: arm64 emulation or skip/fail)
from .test_parity import _tiny_onnx

REQUIRED = os.environ.get("EDGEKILN_REQUIRE_BROKER") == "1"
VT = 60  # the tests' visibility timeout: above their longest chain (38 s), and what a kill -9 costs


def _unavailable(why: str):
    if REQUIRED:
        pytest.fail(f"EDGEKILN_REQUIRE_BROKER=1 but {why}", pytrace=False)
    pytest.skip(f"{why} (EDGEKILN_REQUIRE_BROKER=1 fails instead)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    exe = shutil.which("redis-server")
    if exe is None:
        _unavailable("no redis-server (apt-get install redis-server)")
    try:
        import celery  # noqa: F401
    except ImportError:
        _unavailable("celery is not installed (pip install -e '.[test]')")
    folder = tmp_path_factory.mktemp("redis")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=open(folder / "redis.log", "w"), stderr=subprocess.STDOUT)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


class Worker:
    def __init__(self, name: str, url: str, store: Path, root: Path, args: list[str], env=None):
        self.name, self.log = name, root / f"{name}.log"
        environ = dict(os.environ, EDGEKILN_VISIBILITY_TIMEOUT=str(VT), **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgekiln", "worker", "--broker", url, "--store", str(store), "--name", name,
             "--work", str(root / name), "--runner", "docker", *args],
            cwd=ROOT, env=environ, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while "ready." not in self.text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.text()
            time.sleep(0.3)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def chains(self) -> list[dict]:
        """The chains this worker ran, in order: key, entry, start, done (from its log)."""
        runs: list[dict] = []
        for m in re.finditer(r"\[(\w{12})\] edgekiln-chain (start|done) (\S+) (\S+) at ([\d.]+)", self.text()):
            key, what, model, art, at = m.groups()
            if what == "start":
                runs.append({"key": key, "entry": f"{model}/{art}", "start": float(at)})
            else:
                next(r for r in reversed(runs) if r["key"] == key)["done"] = float(at)
        return runs

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def onnx_image2(engine2, tmp_path_factory):
    """images/onnx on the second engine too (worker B would build it on its first task)."""
    from edgekiln.images import ensure_image

    return ensure_image(engine2, "onnx", base=STAND_IN, root=tmp_path_factory.mktemp("ctx2"), timeout=900)[0]


@pytest.fixture(scope="module")
def fleet(redis_url, onnx_image, onnx_image2, tmp_path_factory):
    """(broker URL, store, {a, b}): two workers on the two engines, a shared store."""
    root = tmp_path_factory.mktemp("fleet")
    url, store = f"{redis_url}/0", root / "store"
    workers = {
        "a": Worker("a", url, store, root, ["--queues", "amd64,arm64",
                                             "--base-image", f"onnx={STAND_IN},arm-validate={ARM_BASE}"]),
        "b": Worker("b", url, store, root, ["--queues", "amd64", "--docker-host", SECOND_HOST,
                                             "--base-image", f"onnx={STAND_IN}"]),
    }
    yield url, store, workers
    for w in workers.values():
        w.stop()


RELEASE = """[release]
name = "fleet"
version = "{version}"
date = 2026-11-28
[models.tiny]
path = "tiny.onnx"
calib = "{calib}"
val = "{val}"
targets = {{ onnx = ["fp32", "int8"] }}
[models.tiny.thresholds]
"onnx.fp32.min_cosine" = {cosine}
[models.tiny2]
path = "tiny2.onnx"
val = "{val}"
targets = {{ onnx = ["fp32"] }}
[models.tiny2.thresholds]
"onnx.fp32.min_cosine" = {cosine}
"""


@pytest.fixture(scope="module")
def release_dir(photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    _tiny_onnx(root / "tiny.onnx")
    second = (root / "tiny.onnx").read_bytes().replace(b"tiny", b"tin2")  # another graph name: another model
    (root / "tiny2.onnx").write_bytes(second)
    calib, val = photos

    def write(version: str, cosine: float) -> Path:
        path = root / f"release-{version}.toml"
        path.write_text(RELEASE.format(version=version, calib=calib, val=val, cosine=cosine))
        return path
    return write


def _release(*args, env=None, timeout=900, check=0):
    return run_cli("release", *map(str, args), env=dict({"EDGEKILN_BASE_IMAGE": STAND_IN}, **(env or {})),
                   timeout=timeout, check=check)


def _sent(proc) -> int:
    return _sent_text(proc.stderr)


def _sent_text(text: str) -> int:
    m = re.search(r"sent (\d+) chain", text)
    return int(m[1]) if m else 0


@pytest.fixture(scope="module")
def local_and_broker(fleet, release_dir, tmp_path_factory):
    url, store, workers = fleet
    rel = release_dir("1.0.0", 0.99)
    here = tmp_path_factory.mktemp("here")
    t0 = time.monotonic()
    _release(rel, "--out", here / "out", "--dist", here / "dist", "--runner", "docker")
    t1 = time.monotonic()
    proc = _release(rel, "--out", here / "bout", "--dist", here / "bdist", "--broker", url, "--store", store)
    t2 = time.monotonic()
    print(f"release here {t1 - t0:.1f}s, through the broker {t2 - t1:.1f}s")
    return here, proc, rel


def test_release_through_the_broker_equals_the_local_one(fleet, local_and_broker):
    from edgekiln.release_check import compare_releases, verify

    url, store, workers = fleet
    here, proc, rel = local_and_broker
    assert _sent(proc) == 3, proc.stderr
    rows = compare_releases(here / "out" / "fleet-1.0.0", here / "bout" / "fleet-1.0.0")
    assert rows and all(r.status in ("identical", "excluded") for r in rows), \
        [(r.path, r.status, r.detail) for r in rows if r.status not in ("identical", "excluded")]
    assert {r.path for r in rows if r.status == "excluded"} <= {"measured.json", "report.html", "report.md"}
    assert verify(here / "bout" / "fleet-1.0.0")[1] == []
    # both workers served, at the same time
    a, b = workers["a"].chains(), workers["b"].chains()
    assert a and b, (workers["a"].text()[-2000:], workers["b"].text()[-2000:])
    # three chains (a chain that outlived the visibility timeout would run again: a cache hit, same key)
    assert len({c["key"] for c in a + b}) == 3 and all("done" in c for c in a + b)
    assert any(x["start"] < y["done"] and y["start"] < x["done"] for x in a for y in b), (a, b)
    # the store holds each build once, committed by its manifest
    keys = {c["key"] for c in a + b}
    built = [p.name for p in (store / "builds").iterdir()]
    assert {k[:12] for k in built} == keys and all((store / "builds" / k / "manifest.json").is_file() for k in built)


def test_a_second_run_sends_no_task(fleet, local_and_broker, tmp_path):
    url, store, workers = fleet
    here, _, rel = local_and_broker
    before = {n: len(w.chains()) for n, w in workers.items()}
    # a fresh build store: every artifact comes from the shared store, verified, with no task
    proc = _release(rel, "--out", tmp_path / "out", "--dist", tmp_path / "dist", "--broker", url, "--store", store)
    assert _sent(proc) == 0 and "sent" not in proc.stderr, proc.stderr
    assert {n: len(w.chains()) for n, w in workers.items()} == before
    again = json.loads((tmp_path / "out" / "fleet-1.0.0" / "release.json").read_text())
    first = json.loads((here / "bout" / "fleet-1.0.0" / "release.json").read_text())
    assert again["entries"] == first["entries"]


def test_shards_into_a_store_then_assemble(local_and_broker, tmp_path):
    """A CI matrix without a broker: two shards (entries 0,2 and 1) build into a store (here from
    the local build store: cache hits), --assemble packages the same release; a corrupted store
    object is refused (exit 13) before anything is published."""
    from edgekiln.release_check import compare_releases

    here, _, rel = local_and_broker
    store = tmp_path / "store"
    one = json.loads(run_cli("release", rel, "--shard", "1/2", "--store", store, "--dist", here / "dist",
                             "--json", check=0).stdout)
    assert list(one["entries"]) == ["tiny/onnx/fp32", "tiny2/onnx/fp32"]
    # shard 2 has not run: --assemble names what is missing, one line
    proc = run_cli("release", rel, "--assemble", "--store", store, "--out", tmp_path / "out", "--dist",
                   tmp_path / "dist", check=errors.UsageError.exit_code)
    assert "tiny/onnx/int8" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "dist").exists()  # nothing fetched before the missing entry was named
    two = json.loads(run_cli("release", rel, "--shard", "2/2", "--store", store, "--dist", here / "dist",
                             "--json", check=0).stdout)
    assert list(two["entries"]) == ["tiny/onnx/int8"]
    # a flipped byte in a stored artifact: refused, nothing released
    ident = json.loads((here / "out" / "fleet-1.0.0" / "release.json").read_text())["identity"]["entries"]
    tar = store / "builds" / ident["tiny/onnx/int8"]["build_key"] / "artifact.tar"
    good = tar.read_bytes()
    tar.write_bytes(good[:-600] + bytes([good[-600] ^ 1]) + good[-599:])
    proc = run_cli("release", rel, "--assemble", "--store", store, "--out", tmp_path / "out", "--dist",
                   tmp_path / "dist", check=errors.IntegrityError.exit_code)
    assert "sha256" in proc.stderr and not (tmp_path / "out" / "fleet-1.0.0").exists()
    tar.write_bytes(good)
    run_cli("release", rel, "--assemble", "--store", store, "--out", tmp_path / "out", "--dist", tmp_path / "dist",
            check=0)
    rows = compare_releases(here / "out" / "fleet-1.0.0", tmp_path / "out" / "fleet-1.0.0")
    assert all(r.status in ("identical", "excluded") for r in rows), [r for r in rows if r.status != "identical"]


def test_an_arm64_step_goes_only_to_the_arm64_worker(arm_engine, fleet, release_dir, photos, tmp_path):
    url, store, workers = fleet
    model = tmp_path / "tiny.onnx"
    shutil.copy(Path(release_dir("1.0.0", 0.99)).parent / "tiny.onnx", model)
    before = {n: {c["key"] for c in w.chains()} for n, w in workers.items()}
    proc = run_cli("build", "--model", model, "--target", "onnx", "--precision", "fp32", "--val", photos[1],
                   "--platform", "linux/arm64", "--out", tmp_path / "dist", "--broker", url, "--store", store,
                   "--json", timeout=900, check=0)
    art = json.loads(proc.stdout)["artifacts"][0]
    manifest = json.loads(Path(art["manifest"]).read_text())
    assert manifest["arm_validation"]["where"]["machine"] == "aarch64"
    new = {n: {c["key"] for c in w.chains()} - before[n] for n, w in workers.items()}
    assert new["a"] == {manifest["build_key"][:12]} and new["b"] == set(), new
    assert "1 on arm64" in proc.stderr


def test_ctrl_c_revokes_then_kill_9_of_a_busy_worker_is_redelivered(fleet, release_dir, tmp_path):
    """Ctrl-C on the driver revokes what it sent (exit 130, nothing released); the rerun sends
    the chains again; kill -9 of the worker running a chain: the chain is redelivered after the
    visibility timeout, the release completes, verifies, and each artifact is published once."""
    url, store, workers = fleet
    rel = release_dir("2.0.0", 0.98)  # another threshold: new build keys, real work
    args = [sys.executable, "-m", "edgekiln", "release", str(rel), "--out", str(tmp_path / "out"),
            "--dist", str(tmp_path / "dist"), "--broker", url, "--store", str(store)]
    env = dict(os.environ, EDGEKILN_BASE_IMAGE=STAND_IN)
    seen = {n: len(w.chains()) for n, w in workers.items()}
    driver = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait(lambda: any(len(w.chains()) > seen[n] for n, w in workers.items()), 120, "no chain started")
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == errors.Interrupted.exit_code, err
    assert "revoked" in err and not (tmp_path / "out" / "fleet-2.0.0").exists(), err
    # the chain still queued is dropped; the running ones finish into the store
    _wait(lambda: any("Discarding revoked task" in w.text() for w in workers.values()), 180, "nothing was revoked")
    _wait(lambda: all("done" in c for w in workers.values() for c in w.chains()), 180, "the workers stay busy")
    # the rerun sends what is not in the store; kill -9 the worker that runs it
    seen = {n: len(w.chains()) for n, w in workers.items()}
    t0 = time.monotonic()
    driver = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def running():
        return [n for n, w in workers.items() if any("done" not in c for c in w.chains()[seen[n]:])]
    _wait(running, 120, "no chain started on the rerun")
    victim = running()[0]
    workers[victim].proc.kill()  # SIGKILL: no goodbye, the task stays unacknowledged
    workers[victim].proc.wait()
    out, err = driver.communicate(timeout=600)
    print(f"release with kill -9 of worker {victim}: {time.monotonic() - t0:.1f}s")
    assert driver.returncode == 0, err
    assert _sent_text(err) >= 1
    survivor = workers["b" if victim == "a" else "a"]
    lost = workers[victim].chains()[-1]
    assert "done" not in lost and any(c["key"] == lost["key"] and "done" in c
                                      for c in survivor.chains()[seen[survivor.name]:]), survivor.text()[-3000:]
    folder = tmp_path / "out" / "fleet-2.0.0"
    run_cli("verify", folder, check=0)
    # published once: one version folder per model, no staging left, each build key as released
    released = json.loads((folder / "release.json").read_text())["identity"]["entries"]
    for model in ("tiny", "tiny2"):
        names = sorted(p.name for p in (tmp_path / "dist" / model).iterdir())
        assert len([n for n in names if n != "latest"]) == 1 and not [n for n in names if n.startswith(".")], names
    for key, entry in released.items():
        model, target, precision = key.split("/")
        version = entry["build_version"]
        manifest = json.loads((tmp_path / "dist" / model / version / target / precision / "manifest.json").read_text())
        assert manifest["build_key"] == entry["build_key"]


def test_faults_and_bad_input_are_one_line_each(redis_url, fleet, release_dir, tmp_path):
    url, store, _ = fleet
    rel = release_dir("3.0.0", 0.97)

    def one_line(proc, code):
        assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr
        lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
        assert len(lines) == 1, proc.stderr
        return lines[0]

    dead = f"redis://127.0.0.1:{_free_port()}/0"
    line = one_line(_release(rel, "--out", tmp_path / "o", "--broker", dead, "--store", store, check=None),
                    errors.BrokerUnreachable.exit_code)
    assert "does not answer" in line
    line = one_line(run_cli("worker", "--broker", dead, "--store", store, check=None), errors.BrokerUnreachable.exit_code)
    # a queue no worker serves (another database of the same Redis: no worker listens there)
    line = one_line(_release(rel, "--out", tmp_path / "o", "--dist", tmp_path / "d", "--broker", f"{redis_url}/5",
                             "--store", store, env={"EDGEKILN_QUEUE_WAIT": "2"}, check=None),
                    errors.NoWorker.exit_code)
    assert "no worker serves queue amd64" in line
    # the broker goes away while the driver waits for a worker: one line, not a hang
    folder = tmp_path / "redis2"
    folder.mkdir()
    port = _free_port()
    redis2 = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    _wait(lambda: _answers(port), 30, "the second redis-server did not start")
    driver = subprocess.Popen([sys.executable, "-m", "edgekiln", "release", str(rel), "--out", str(tmp_path / "o"),
                               "--dist", str(tmp_path / "d"), "--broker", f"redis://127.0.0.1:{port}/0", "--store",
                               str(store)], cwd=ROOT, env=dict(os.environ, EDGEKILN_QUEUE_WAIT="60"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)
        redis2.terminate()
        redis2.wait(timeout=10)
        out, err = driver.communicate(timeout=60)
    finally:
        driver.kill()
        redis2.kill()
    assert "waiting for a worker" in err
    assert driver.returncode == errors.BrokerUnreachable.exit_code and "Traceback" not in err, err
    assert len([l for l in err.splitlines() if l.startswith("error:")]) == 1, err
    one_line(_release(rel, "--out", tmp_path / "o", "--broker", url, check=None), errors.UsageError.exit_code)
    one_line(_release(rel, "--out", tmp_path / "o", "--store", store, check=None), errors.UsageError.exit_code)
    one_line(run_cli("worker", "--store", store, check=None, env={"EDGEKILN_BROKER": ""}), errors.UsageError.exit_code)
    # a worker with other recipes refuses (its own database, so it takes no one else's work)
    home = tmp_path / "home"
    from edgekiln.resources import data_dir

    for name in ("targets", "converters", "images"):
        shutil.copytree(data_dir(name), home / name)
    with open(home / "targets" / "onnx.toml", "a") as fh:
        fh.write("\n# another recipe\n")
    other = Worker("old", f"{redis_url}/6", store, tmp_path, ["--queues", "amd64"], env={"EDGEKILN_HOME": str(home)})
    try:
        line = one_line(_release(rel, "--out", tmp_path / "o", "--dist", tmp_path / "d", "--broker",
                                 f"{redis_url}/6", "--store", store, check=None), errors.WorkerMismatch.exit_code)
        assert "worker old" in line and "refused" in line
        assert not (tmp_path / "o" / "fleet-3.0.0").exists()
    finally:
        other.stop()


def _wait(condition, seconds: float, why: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, why
        time.sleep(0.2)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free loopback port (an emulator: PUT/GET/HEAD only are relied on)."""
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        _unavailable("moto_server is not installed (pip install -e '.[test]')")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    _wait(lambda: _answers(port), 30, log.read_text() if log.exists() else "moto_server did not start")
    client.create_bucket(Bucket="ek-test")
    yield env, client
    proc.terminate()
    proc.wait(timeout=10)


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_an_s3_store(redis_url, onnx_image, s3, release_dir, photos, tmp_path):
    """The store in S3 (moto's server): a worker on its own broker database, a build through it."""
    env, client = s3
    url, store = f"{redis_url}/7", "s3://ek-test/fleet"
    model = tmp_path / "tiny.onnx"
    shutil.copy(Path(release_dir("1.0.0", 0.99)).parent / "tiny.onnx", model)
    worker = Worker("s3", url, store, tmp_path, ["--queues", "amd64", "--base-image", f"onnx={STAND_IN}"], env=env)
    try:
        proc = run_cli("build", "--model", model, "--target", "onnx", "--precision", "fp32", "--val", photos[1],
                       "--out", tmp_path / "dist", "--broker", url, "--store", store, "--json", env=env,
                       timeout=600, check=0)
    finally:
        worker.stop()
    art = json.loads(proc.stdout)["artifacts"][0]
    key = json.loads(Path(art["manifest"]).read_text())["build_key"]
    names = {o["Key"] for o in client.list_objects_v2(Bucket="ek-test", Prefix="fleet/")["Contents"]}
    assert {f"fleet/builds/{key}/artifact.tar", f"fleet/builds/{key}/manifest.json"} <= names
    assert any(n.startswith("fleet/inputs/") and n.endswith("-tiny.onnx.tar") for n in names)
    assert [c["key"] for c in worker.chains()] == [key[:12]]
