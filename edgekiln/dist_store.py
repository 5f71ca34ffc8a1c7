"""The shared content-addressed store the driver and the workers meet in (``--store``).

    <store>/inputs/<sha256>.tar            a model file (with its ONNX data files) or an image
                                           folder, by the hash edgekiln.store.sha256_tree gives it
    <store>/builds/<build key>/artifact.tar   one built artifact folder (as published)
    <store>/builds/<build key>/manifest.json  written LAST: the commit of that build (the tar's
                                           sha256 and size, the worker that built it)

A build is in the store when its manifest.json is; a reader never sees a half-written one
(each object is written under a temporary name and renamed, or one S3 PUT). Whoever reads
verifies: the tar against the manifest's sha256, an input against its name, every artifact
file against the artifact's own manifest (``fetch_build``).

Backends: a directory (a shared file system: NFS, a mounted volume) or ``s3://bucket/prefix``
(boto3; credentials and endpoint from the usual AWS variables, AWS_ENDPOINT_URL for MinIO).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path

from .errors import EnvironmentFailed, IntegrityError, UsageError
from .store import file_entries, sha256_file, sha256_tree

BUILD_TAR, BUILD_MANIFEST = "artifact.tar", "manifest.json"


class DirBackend:
    """Objects as files under a folder; writes are a temporary file plus ``os.replace``."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{uuid.uuid4().hex[:8]}"
            probe.write_text("x")
            probe.unlink()
        except OSError as exc:
            raise UsageError(f"--store {self.root} cannot be written: {exc.strerror or exc}",
                             "give a folder every worker and the driver can write (a shared file system)") from None

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def put_file(self, key: str, path: Path) -> None:
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".tmp-{uuid.uuid4().hex[:8]}-{dest.name}"
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(delete=False) as fh:
            fh.write(data)
        try:
            self.put_file(key, Path(fh.name))
        finally:
            os.unlink(fh.name)

    def get_file(self, key: str, dest: Path) -> None:
        shutil.copyfile(self.root / key, dest)

    def get_bytes(self, key: str) -> bytes:
        return (self.root / key).read_bytes()


class S3Backend:
    """Objects in ``s3://bucket/prefix`` (each PUT is atomic per object)."""

    def __init__(self, url: str):
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise UsageError(f"--store {url} needs boto3", "pip install 'edgekiln[dist]'") from None
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise UsageError(f"--store {url!r} names no bucket", "e.g. s3://my-bucket/edgekiln")
        self.url, self.bucket, self.prefix = url, bucket, prefix.strip("/")
        self.s3 = boto3.client("s3", config=Config(retries={"max_attempts": 3}, connect_timeout=5, read_timeout=60))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, exc: Exception):
        raise EnvironmentFailed(f"store {self.url}: {exc}", "check the bucket, AWS credentials and AWS_ENDPOINT_URL") from None

    def check(self) -> None:
        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # botocore's errors: no bucket, no credentials, unreachable
            self._fail(exc)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            self._fail(exc)
        except Exception as exc:
            self._fail(exc)

    def put_file(self, key: str, path: Path) -> None:
        try:
            self.s3.upload_file(str(path), self.bucket, self._key(key))
        except Exception as exc:
            self._fail(exc)

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as exc:
            self._fail(exc)

    def get_file(self, key: str, dest: Path) -> None:
        try:
            self.s3.download_file(self.bucket, self._key(key), str(dest))
        except Exception as exc:
            self._fail(exc)

    def get_bytes(self, key: str) -> bytes:
        buf = io.BytesIO()
        try:
            self.s3.download_fileobj(self.bucket, self._key(key), buf)
        except Exception as exc:
            self._fail(exc)
        return buf.getvalue()


def open_store(url: str | os.PathLike | None):
    """The backend for ``--store`` (EDGEKILN_STORE): a folder or ``s3://bucket/prefix``."""
    url = str(url or "")
    if not url:
        raise UsageError("--broker needs a shared store: --store DIR (a shared file system) or s3://bucket/prefix",
                         "or set EDGEKILN_STORE; every worker and the driver must reach it")
    if url.startswith("s3://"):
        return S3Backend(url)
    if "://" in url:
        raise UsageError(f"--store {url!r}: only a folder or s3://bucket/prefix", "e.g. --store /mnt/shared/edgekiln")
    return DirBackend(Path(url))


# ---------------------------------------------------------------- inputs


def _tar(members: list[tuple[str, Path]], dest: Path) -> None:
    """A tar without owners or times (the same content gives the same bytes)."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in sorted(members):
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)


def _untar(src: Path, dest: Path) -> None:
    with tarfile.open(src) as tar:
        for m in tar.getmembers():  # plain files under dest only
            if not m.isfile() or m.name.startswith("/") or ".." in Path(m.name).parts:
                raise IntegrityError(f"{src.name}: member {m.name!r} is not a plain relative file",
                                     "the store was written by something other than edgekiln")
        tar.extractall(dest, filter="data")


def input_members(path: Path, named: bool) -> list[tuple[str, Path]]:
    """A model (``named``: under its own name; an ONNX file with its data files) or a folder's files."""
    from .inputs import onnx_external_files, tree_files

    if path.is_file():
        return [(path.name, path)] + [(n, path.parent / n) for n in onnx_external_files(path)]
    prefix = f"{path.name}/" if named else ""
    return [(prefix + p.relative_to(path).as_posix(), p) for p in tree_files(path, str(path))]


def put_input(store, path: Path, digest: str, named: bool) -> str:
    """Put a model (``named``) or an image folder into the store under its sha256 (once)."""
    key = input_key(digest, Path(path).name if named else None)
    if not store.exists(key):
        with tempfile.TemporaryDirectory(prefix="edgekiln-put-") as tmp:
            _tar(input_members(Path(path), named), Path(tmp) / "in.tar")
            store.put_file(key, Path(tmp) / "in.tar")
    return key


def input_key(digest: str, name: str | None) -> str:
    """A model keeps its file name (converters read its suffix): ``inputs/<sha256>-<name>.tar``."""
    return f"inputs/{digest}-{name}.tar" if name else f"inputs/{digest}.tar"


def get_input(store, digest: str, name: str | None, cache: Path) -> Path:
    """An input unpacked under ``cache/<sha256>`` (verified); a model: its file ``name``."""
    folder = cache / (f"{digest}-{name}" if name else digest)
    if not folder.is_dir():  # unpacked, verified, then renamed into place
        tmp = cache / f".tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            store.get_file(input_key(digest, name), tmp / "in.tar")
            _untar(tmp / "in.tar", tmp / "x")
            (tmp / "in.tar").unlink()
            got = sha256_tree(tmp / "x" / name if name else tmp / "x")
            if got != digest:
                raise IntegrityError(f"store input {digest[:12]}… unpacks to content with sha256 {got[:12]}…",
                                     f"the store is corrupt: remove {input_key(digest, name)} and run the driver again")
            try:
                os.rename(tmp / "x", folder)
            except OSError:  # a parallel task put it there first
                if not folder.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder / name if name else folder


# ---------------------------------------------------------------- builds


def has_build(store, build_key: str) -> bool:
    return store.exists(f"builds/{build_key}/{BUILD_MANIFEST}")


def put_build(store, build_key: str, folder: Path, worker: str) -> None:
    """Put a built artifact folder: its tar first, the manifest (the commit) last."""
    with tempfile.TemporaryDirectory(prefix="edgekiln-put-") as tmp:
        tar = Path(tmp) / BUILD_TAR
        _tar([(p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file()], tar)
        store.put_file(f"builds/{build_key}/{BUILD_TAR}", tar)
        record = {"build_key": build_key, "sha256": sha256_file(tar), "size": tar.stat().st_size, "worker": worker}
    store.put_bytes(f"builds/{build_key}/{BUILD_MANIFEST}", (json.dumps(record, indent=2) + "\n").encode())


def fetch_build(store, build_key: str, dest: Path) -> dict:
    """Unpack a committed build into ``dest`` (made here) and verify it: the tar's sha256, the
    build key in the artifact's manifest, every file the manifest lists. Returns the store record."""
    try:
        record = json.loads(store.get_bytes(f"builds/{build_key}/{BUILD_MANIFEST}"))
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"store build {build_key[:12]}…: manifest unreadable ({exc})",
                             f"remove builds/{build_key} from the store and run again") from None
    dest.mkdir(parents=True)
    tar = dest.parent / f".{dest.name}.tar"
    try:
        store.get_file(f"builds/{build_key}/{BUILD_TAR}", tar)
        got = sha256_file(tar)
        if got != record.get("sha256"):
            raise IntegrityError(f"store build {build_key[:12]}…: {BUILD_TAR} has sha256 {got[:12]}…, "
                                 f"its manifest says {str(record.get('sha256'))[:12]}…",
                                 f"remove builds/{build_key} from the store and run again")
        _untar(tar, dest)
    finally:
        tar.unlink(missing_ok=True)
    manifest = json.loads((dest / "manifest.json").read_text())
    if manifest.get("build_key") != build_key:
        raise IntegrityError(f"store build {build_key[:12]}… holds the build {str(manifest.get('build_key'))[:12]}…",
                             f"remove builds/{build_key} from the store and run again")
    listed = manifest.get("files", [])
    if file_entries(dest, [f["path"] for f in listed if (dest / f["path"]).is_file()]) != \
            [f for f in listed if (dest / f["path"]).is_file()] or \
            any(not (dest / f["path"]).exists() for f in listed):
        raise IntegrityError(f"store build {build_key[:12]}…: a file differs from its manifest's sha256",
                             f"remove builds/{build_key} from the store and run again")
    return record
