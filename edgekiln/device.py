"""Finish a TensorRT bundle on a device reached over ssh, from the workstation, in one command.

``--device ssh://[user@]host[:port]`` (``edgekiln build`` and ``edgekiln finish``): the bundle's listed
files go to a fresh temporary folder on the device (tar over ssh), its three steps run there one by one
(preflight, build_engine, check_engine: so a failure names its step), and only the files each step
adds come back (model.engine, engine.json, check.json, preflight.json, device/timing.cache; a tar
read member by member: regular files with exactly those names, nothing else). The workstation then
records and swaps exactly as ``edgekiln finish`` on the device does (edgekiln.deferred.finish).

How the steps run on the device (the URL's query):
  (none)             its ``python3`` in isolated mode (JetPack's python3 imports TensorRT; numpy needed);
  ?python=PATH       that Python instead;
  ?docker            ``sh device/build_engine.sh <step>``: the device image (NVIDIA's base) under Docker
                     with the NVIDIA runtime, the same container build_engine.sh runs by hand.
``EDGEKILN_SSH`` adds ssh options (e.g. ``-F ~/.ssh/edgekiln_config`` or ``-i KEY``). Nothing but the
ssh client and ``tar``/``sh``/``mktemp`` on the device is used: no agent, no server of edgekiln's own.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tarfile
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .errors import EdgekilnError, EnvironmentFailed, UsageError
from .deferred import PENDING, stream


class SshDevice:
    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname or parts.path not in ("", "/"):
            raise UsageError(f"--device {url!r} is not ssh://[user@]host[:port]",
                             "e.g. --device ssh://nvidia@orin or ssh://nvidia@orin?docker")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - {"python", "docker"}
        if unknown:
            raise UsageError(f"--device {url!r}: unknown setting(s) {', '.join(sorted(unknown))}",
                             "the device URL takes ?python=PATH or ?docker")
        self.docker = "docker" in query
        self.python = (query.get("python") or ["python3"])[0] or "python3"
        self.where = f"device {parts.scheme}://{parts.netloc}"
        target = f"{parts.username}@{parts.hostname}" if parts.username else parts.hostname
        self.ssh = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
                    *(["-p", str(parts.port)] if parts.port else []),
                    *shlex.split(os.environ.get("EDGEKILN_SSH", "")), target]
        self.dir: str | None = None

    def _remote(self, words: list[str], cd: bool = True) -> list[str]:
        """ssh runs its command through the remote shell: every word is quoted."""
        cmd = shlex.join(words)
        return self.ssh + ["--", f"cd {shlex.quote(self.dir)} && {cmd}" if cd else cmd]

    def _check(self, proc: subprocess.CompletedProcess, what: str) -> None:
        if proc.returncode != 0:
            tail = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
            raise EnvironmentFailed(f"{self.where}: {what} failed (exit {proc.returncode})"
                                    + (f": {tail[-1]}" if tail else ""),
                                    "check that `ssh` reaches the device without a password (EDGEKILN_SSH adds "
                                    "options); the bundle stays pending")

    def ship(self, stage: Path, files: list[str]) -> None:
        proc = subprocess.run(self._remote(["mktemp", "-d", "/tmp/edgekiln-bundle.XXXXXXXX"], cd=False),
                              capture_output=True, stdin=subprocess.DEVNULL)
        self._check(proc, "making a folder on the device (ssh … mktemp -d)")
        self.dir = proc.stdout.decode().strip()
        send = subprocess.Popen(self._remote(["tar", "-xf", "-"]), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        errors: list[bytes] = []
        reader = threading.Thread(target=lambda: errors.append(send.stderr.read()), daemon=True)
        reader.start()
        try:
            with tarfile.open(fileobj=send.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for rel in files:
                    tar.add(stage / rel, arcname=rel, recursive=False)
        except BrokenPipeError:
            pass
        finally:
            send.stdin.close()
        code = send.wait()
        reader.join()
        self._check(subprocess.CompletedProcess(send.args, code, b"", b"".join(errors)),
                    f"copying the bundle to {self.dir} (tar over ssh)")

    def run(self, stage: Path, step: str, script: str, log: Path) -> tuple[int, list[str]]:
        words = ["sh", "device/build_engine.sh", step] if self.docker else [self.python, "-I", script]
        code, lines = stream(self._remote(words), log, stdin=subprocess.DEVNULL)
        if code == 255:  # ssh's own failure (the device unreachable), not the step's
            raise EnvironmentFailed(f"{self.where}: ssh failed while running {step}: "
                                    f"{lines[-1] if lines else 'no output'}",
                                    "check that `ssh` reaches the device; the bundle stays pending")
        return code, lines

    def fetch(self, stage: Path, files) -> None:
        """Bring back exactly ``files`` (regular files, those names only) into ``stage``."""
        want = set(files)
        proc = subprocess.Popen(self._remote(["tar", "-cf", "-", *files]), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        got = set()
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    if member.name not in want or not member.isreg():
                        raise EnvironmentFailed(f"{self.where}: the device sent {member.name!r}, which is not "
                                                f"one of the files the step makes ({', '.join(sorted(want))})",
                                                "the bundle stays pending")
                    data = tar.extractfile(member).read()
                    dest = stage / member.name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.unlink(missing_ok=True)
                    dest.write_bytes(data)
                    got.add(member.name)
        except tarfile.TarError as exc:
            proc.kill()
            raise EnvironmentFailed(f"{self.where}: bringing back {', '.join(files)} failed: {exc}",
                                    "the bundle stays pending") from None
        finally:
            err = proc.stderr.read()
            code = proc.wait()
        self._check(subprocess.CompletedProcess(proc.args, code, b"", err), f"bringing back {', '.join(files)}")
        if got != want:
            raise EnvironmentFailed(f"{self.where}: the device did not send {', '.join(sorted(want - got))}",
                                    "the bundle stays pending")

    def close(self) -> None:
        if self.dir:
            subprocess.run(self._remote(["rm", "-rf", "--", self.dir], cd=False), capture_output=True,
                           stdin=subprocess.DEVNULL)
            self.dir = None


def device_for(url: str | None):
    if not url:
        return None
    if url.startswith("ssh://"):
        return SshDevice(url)
    raise UsageError(f"--device {url!r} is not ssh://[user@]host[:port]",
                     "e.g. --device ssh://nvidia@orin (add ?docker to run the steps in the device image)")


def finish_results(result, url: str, say) -> None:
    """``edgekiln build --device URL``: finish every pending TensorRT artifact of ``result`` on the
    device; each success replaces the artifact's status and manifest; the first failure becomes
    ``result.error`` (the bundle stays published as pending, the error names the device step)."""
    from .deferred import finish

    device_for(url)  # a malformed URL is refused before anything runs
    if not any(art.manifest.get("status") == PENDING for art in result.artifacts):
        say(f"--device {url}: no deferred TensorRT bundle to finish")
    for art in result.artifacts:
        if art.manifest.get("status") != PENDING:
            continue
        say(f"finishing {art.target}/{art.precision} on {url} (preflight, engine, check)")
        try:
            art.manifest = finish(art.path, device=device_for(url))
        except EdgekilnError as exc:  # DeviceRefused, EnvironmentFailed, ValidationFailed, ...
            result.error = result.error or exc
            say(f"not finished: {art.target}/{art.precision} stays a deferred bundle at {art.path}")
            continue
        art.status = f"built (finished on {url})"
