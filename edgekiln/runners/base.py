"""The interface every runner implements (local virtualenv, Docker).

A runner knows how to make the environment of an image (``prepare``), what exact command runs
a step in it (``command``) and how to run it (``run``). Everything else — planning, rendering,
validation, publishing — is the same whatever runs the steps, so the local and Docker runners
give the same result for the same request.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from ..errors import BY_KIND, StepFailed

ERROR_MARK = "EDGEKILN-ERROR "
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Env:
    """A prepared environment: where a step's python lives and what pinned it."""

    image: str  # images/<image>
    runner: str  # "local" | "docker"
    lock_hash: str  # sha256 of the image's requirements lock
    ref: str  # local: the venv's python; docker: image tag
    host: str | None = None  # docker host (None: default engine)
    platform: str | None = None


@dataclass(frozen=True)
class Job:
    """One build's job directory and the host paths of its read-only inputs."""

    root: Path
    inputs: Mapping[str, Path | None]  # model (file), calib (dir), val (dir)

    @property
    def work(self) -> Path:
        return self.root / "work"

    def log_path(self, step_id: str) -> Path:
        """The host writes logs (and the Docker runner its ``.sh``) here, outside ``work/`` (the
        only folder a container step may write): a step cannot plant a link the host writes through."""
        return self.root / "logs" / f"{step_id}.log"


OnLine = Callable[[str], None]


class Runner(ABC):
    name: str = "?"

    @abstractmethod
    def prepare(self, image: str, on_line: OnLine | None = None, *, local_ok: bool = True) -> Env:
        """Make (or reuse) the environment of ``images/<image>``; raise EnvironmentFailed.
        ``local_ok`` False: the image cannot be a local virtualenv (a step's ``local``)."""

    @abstractmethod
    def planned_env(self, image: str, platform: str | None = None, on_line: OnLine | None = None, *,
                    local_ok: bool = True) -> Env:
        """The Env ``prepare`` would give, without making anything (for the dry run)."""

    @abstractmethod
    def command(self, env: Env, job: Job, script: str) -> list[str]:
        """The exact argument list that runs ``script`` (relative to the job root)."""

    @abstractmethod
    def run(self, env: Env, job: Job, script: str, log: Path, on_line: OnLine | None = None,
            timeout: float | None = None) -> None:
        """Run one step; stream its output to ``log`` and ``on_line``; raise on failure."""


def step_error(step_id: str, returncode: int, log: Path, tail: list[str]) -> Exception:
    """Turn a failed step's output into the right error (a user error the script recognised,
    or StepFailed pointing at the log)."""
    for line in reversed(tail):
        if line.startswith(ERROR_MARK):
            try:
                info = json.loads(line[len(ERROR_MARK):])
                cls = BY_KIND.get(info.get("kind"), StepFailed)
                message = ANSI.sub("", str(info.get("message")))
                return cls(f"{step_id}: {message}", info.get("hint") or f"log: {log}")
            except ValueError:
                break
    last = next((l for l in reversed(tail) if l.strip()), "")
    return StepFailed(f"step {step_id} failed (exit {returncode}): {last.strip()[:300]}",
                      f"see the full log: {log}")
