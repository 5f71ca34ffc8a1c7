"""Copying a step's job into a container and its outputs back out, for engines that do not share
this machine's files (DockerEngine, edgekiln.docker, decides when; this is how).

In: one tar streamed to ``docker cp -``: writable mounts owned by the run user, read-only ones
owned by root without write bits, symbolic links followed (the container gets files, never links).
Out: regular files and folders only; a path that would leave the folder is skipped, a link or
device the step made is refused — the trust boundary bind mounts get from edgekiln.outputs.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Sequence

from .errors import EnvironmentFailed, StepFailed

if TYPE_CHECKING:
    from .docker import Mount, RunSpec

log = logging.getLogger("edgekiln.docker")


def copy_in(cli: list[str], where: str, name: str, spec: RunSpec, user: str) -> None:
    """Stream the mounts into the container as one tar: writable ones owned by the run user,
    read-only ones owned by root without write bits (so the step cannot change them)."""
    uid, _, gid = user.partition(":")
    owner = (int(uid) if uid.isdigit() else 0, int(gid) if gid.isdigit() else 0)
    argv = cli + ["cp", "-", f"{name}:/"]  # tar headers keep their owners
    log.debug("+ %s", shlex.join(argv))
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            made: set[str] = set()
            for m in spec.mounts:
                target = PurePosixPath(m.target)
                for parent in reversed(target.parents):
                    if str(parent) != "/" and str(parent) not in made:
                        _tar_dir(tar, str(parent).lstrip("/"), (0, 0), 0o755)
                        made.add(str(parent))
                who = (0, 0) if m.read_only else owner
                skip = {Path(m.source) / rel for rel in nested(m, spec.mounts)}  # its own mount follows
                _tar_tree(tar, Path(m.source), str(target).lstrip("/"), who, m.read_only, skip)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read().decode(errors="replace").strip()
    if proc.wait() != 0:
        raise EnvironmentFailed(f"copying the job into {name} at {where} failed: "
                                f"{err.splitlines()[-1] if err else proc.returncode}")


def copy_out(cli: list[str], where: str, name: str, mount: Mount, exclude: tuple[str, ...],
             step: str = "run") -> None:
    """Stream a writable mount's folder back out: regular files and folders only; a path
    that would leave the folder is skipped, a link or device the step made is refused
    (StepFailed, as edgekiln.outputs.check_outputs does for bind mounts)."""
    refused: list[str] = []
    argv = cli + ["cp", f"{name}:{mount.target}", "-"]
    log.debug("+ %s", shlex.join(argv))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dest = Path(mount.source)
    top = PurePosixPath(mount.target).name
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                rel = PurePosixPath(member.name)
                if rel.parts and rel.parts[0] == top:
                    rel = PurePosixPath(*rel.parts[1:]) if len(rel.parts) > 1 else PurePosixPath(".")
                if str(rel) == "." or ".." in rel.parts or rel.is_absolute():
                    continue
                if any(str(rel) == e or str(rel).startswith(e.rstrip("/") + "/") for e in exclude):
                    continue
                out = dest / rel
                if member.isdir():
                    out.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    out.parent.mkdir(parents=True, exist_ok=True)
                    tmp = out.with_name(out.name + ".edgekiln-tmp")
                    with open(tmp, "wb") as fh:
                        shutil.copyfileobj(tar.extractfile(member), fh)
                    os.chmod(tmp, member.mode & 0o755 | 0o600)
                    os.replace(tmp, out)
                else:
                    refused.append(str(rel))
    except tarfile.TarError as exc:
        proc.kill()
        raise EnvironmentFailed(f"copying the outputs out of {name} failed: {exc}") from None
    finally:
        err = proc.stderr.read().decode(errors="replace").strip()
        rc = proc.wait()
    if rc != 0:
        raise EnvironmentFailed(f"copying the outputs out of {name} at {where} failed: "
                                f"{err.splitlines()[-1] if err else rc}")
    if refused:
        raise StepFailed(f"step {step} left a link or special file in its outputs: {refused[0]} — refused "
                         "(a step may only write plain files and folders)",
                         "nothing was published; if the model file runs code, do not trust it")


def _tar_dir(tar: tarfile.TarFile, name: str, owner: tuple[int, int], mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.uid, info.gid = owner
    info.mtime = int(time.time())
    tar.addfile(info)


def nested(m: Mount, mounts: Sequence[Mount]) -> list[str]:
    """The relative paths of the other mounts inside ``m`` (``work`` inside the read-only job)."""
    inner = []
    for other in mounts:
        rel = PurePosixPath(other.target)
        if other is not m and PurePosixPath(m.target) in rel.parents:
            inner.append(rel.relative_to(m.target).as_posix())
    return inner


def _tar_tree(tar: tarfile.TarFile, source: Path, name: str, owner: tuple[int, int],
              read_only: bool, skip: set[Path] = frozenset()) -> None:
    """Add ``source`` (file or folder) as ``name``, owned by ``owner``; read-only sources lose
    their write bits. Symlinks are followed (the container gets the files, not the links).
    Folders in ``skip`` are left out (another mount brings them)."""
    if source.is_dir():
        _tar_dir(tar, name, owner, 0o555 if read_only else 0o755)
        for child in sorted(source.iterdir()):
            if child not in skip:
                _tar_tree(tar, child, f"{name}/{child.name}", owner, read_only, skip)
        return
    st = source.stat()
    info = tarfile.TarInfo(name)
    info.size = st.st_size
    info.mtime = int(st.st_mtime)
    info.mode = (0o555 if st.st_mode & 0o100 else 0o444) if read_only else (st.st_mode & 0o777 | 0o600)
    info.uid, info.gid = owner
    with open(source, "rb") as fh:
        tar.addfile(info, fh)


def copy_in_line(cli: list[str], name: str, m: Mount, user: str, skip: Sequence[str] = ()) -> str:
    """The shell pipeline that copies one mount into a created container by hand (the same tar
    ``copy_in`` streams: writable mounts owned by the run user, inputs read-only)."""
    src = Path(m.source)
    rel = m.target.lstrip("/")
    uid, _, gid = user.partition(":")
    tar = ["tar", "--numeric-owner", "-cf", "-"]
    if m.read_only:
        tar += ["--owner=0", "--group=0", "--mode=a-w"]
    else:
        tar += [f"--owner={uid or 0}", f"--group={gid or 0}"]
    tar += [f"--exclude=./{inner}" for inner in skip]  # their own mounts copy them
    if src.is_dir():
        tar += ["-C", str(src), f"--transform=s,^\\.,{rel},", "."]
    else:
        tar += ["-C", str(src.parent), f"--transform=s,^.*$,{rel},", src.name]
    return shlex.join(tar) + " | " + shlex.join(cli + ["cp", "-", f"{name}:/"])
