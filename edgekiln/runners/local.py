"""The local runner: each image's pinned requirements as a virtual environment on this host.

The environment is made from exactly ``images/<image>/requirements.txt`` (the same lock the
Docker image installs), cached under ``<cache>/envs/<image>-<hash>`` where the hash covers the lock
and the Python version, and reused by every later build. Creation holds a file lock, so parallel
builds never make the same environment twice, and an environment is only used once its ``ready``
marker exists (an interrupted creation is redone, never used half-made).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from ..cmd import call, stream
from ..errors import EnvironmentFailed
from ..images import lock_file, lock_hash, pip_check_failures, pip_check_known
from ..resources import cache_dir
from .base import Env, Job, OnLine, Runner, step_error


def python_for_envs() -> str:
    """The interpreter environments are made with: EDGEKILN_PYTHON, else this one."""
    return os.environ.get("EDGEKILN_PYTHON") or sys.executable


class LocalRunner(Runner):
    name = "local"

    def __init__(self, root: Path | None = None, python: str | None = None,
                 qemu: tuple[str, str] | None = None):
        self.root = root or cache_dir() / "envs"
        self.python = python or python_for_envs()
        # (QEMU user-mode binary, CPU model): steps run under it — an x86 CPU class this machine does
        # not have (edgekiln.isa); the interpreter's path is its argv[0], so the venv's packages load
        self.qemu = qemu

    def env_dir(self, image: str) -> Path:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        if self.python != sys.executable:
            version = Path(self.python).name
        key = hashlib.sha256(f"{lock_hash(image)}\n{version}".encode()).hexdigest()[:12]
        return self.root / f"{image}-{key}"

    def planned_env(self, image: str, platform: str | None = None, on_line: OnLine | None = None, *,
                    local_ok: bool = True) -> Env:
        """The Env ``prepare`` gives, without making anything (the dry run's commands)."""
        if not local_ok:
            raise EnvironmentFailed(f"image {image} cannot be a local virtualenv (its runtime is not on the "
                                    "package index)", "use a Docker engine that can build it: --docker-host")
        return Env(image=image, runner=self.name, lock_hash=lock_hash(image),
                   ref=str(self.env_dir(image) / "bin" / "python"))

    def prepare(self, image: str, on_line: OnLine | None = None, *, local_ok: bool = True) -> Env:
        env = self.planned_env(image, local_ok=local_ok)
        path = self.env_dir(image)
        if (path / "ready").exists():
            return env
        self.root.mkdir(parents=True, exist_ok=True)
        with open(f"{path}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (path / "ready").exists():  # made by a parallel build while we waited
                return env
            self._create(image, path, on_line)
        return env

    def _create(self, image: str, path: Path, on_line: OnLine | None) -> None:
        if path.exists():
            shutil.rmtree(path)  # a creation that was interrupted: never use it half-made
        start = time.monotonic()
        log = path.with_suffix(".log")
        try:
            call([self.python, "-m", "venv", str(path)], log=log, on_line=on_line)
            pip = [str(path / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
            call(pip + ["install", "--no-input", "--upgrade", "pip"], log=log, on_line=on_line)
            # The lock is complete (every transitive pin), so --no-deps installs exactly it — the
            # same as the Docker image — and `pip check` proves nothing is missing.
            call(pip + ["install", "--no-input", "--no-deps", "-r", str(lock_file(image))], log=log,
                 on_line=on_line)
            code, tail = stream(pip + ["check"], log=log, on_line=on_line)
            broken = pip_check_failures(tail, pip_check_known(image))
            if code != 0 and broken:
                raise EnvironmentFailed(f"`pip check` failed: {broken[0][:300]}")
        except EnvironmentFailed as exc:
            shutil.rmtree(path, ignore_errors=True)
            raise EnvironmentFailed(f"could not make the {image} environment: {exc.message}",
                                    f"see {log}; check that the package index is reachable") from None
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        (path / "ready").write_text(json.dumps({"seconds": round(time.monotonic() - start, 1)}))

    def command(self, env: Env, job: Job, script: str) -> list[str]:
        """Exactly what runs (from the job directory): ``env`` sets the two variables a step reads."""
        argv = ["env", "PYTHONPATH=.", f"EKIT_PATHS={json.dumps(self.paths(job))}"]
        if self.qemu:  # QEMU reads QEMU_CPU; the step reads it too (ekit.where: emulated, which CPU)
            return argv + [f"QEMU_CPU={self.qemu[1]}", self.qemu[0], "-0", env.ref, env.ref, script]
        return argv + [env.ref, script]

    def paths(self, job: Job) -> dict[str, str | None]:
        return {name: (str(Path(p).resolve()) if p else None) for name, p in job.inputs.items()}

    def run(self, env: Env, job: Job, script: str, log: Path, on_line: OnLine | None = None,
            timeout: float | None = None) -> None:
        environ = dict(os.environ)
        for var in ("PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
            environ.pop(var, None)
        environ.update(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        step_id = Path(script).stem
        code, tail = stream(self.command(env, job, script), cwd=job.root, env=environ, log=log,
                            on_line=on_line, timeout=timeout)
        if code != 0:
            raise step_error(step_id, code, log, tail)
