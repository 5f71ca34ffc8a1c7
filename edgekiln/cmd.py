"""Every external command goes through here: argument lists (never a shell), the command echoed
as ``+ cmd`` (shlex-quoted) into the log, output streamed line by line, exit codes checked, and
the child's whole process group stopped on Ctrl-C, kill or timeout."""

from __future__ import annotations

import collections
import os
import shlex
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .errors import EnvironmentFailed, StepFailed


def quote(cmd: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


def stream(cmd: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
           log: Path | None = None, on_line: Callable[[str], None] | None = None,
           timeout: float | None = None, tail_lines: int = 60) -> tuple[int, list[str]]:
    """Run ``cmd``; return (exit code, last lines of output). Raise EnvironmentFailed when the
    program does not exist, StepFailed on timeout; re-raise KeyboardInterrupt after stopping it."""
    cmd = [str(c) for c in cmd]
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
        raise EnvironmentFailed(f"{cmd[0]} is not installed or not on PATH", f"install {Path(cmd[0]).name}")
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    logf = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        logf = open(log, "a", encoding="utf-8", errors="replace")
        logf.write(f"+ {quote(cmd)}\n")
        logf.flush()
    proc = subprocess.Popen(cmd, cwd=cwd, env=dict(env) if env is not None else None,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, text=True, encoding="utf-8", errors="replace",
                            bufsize=1)
    timed_out = threading.Event()
    timer = None
    if timeout:
        def _expire():
            timed_out.set()
            _kill(proc)
        timer = threading.Timer(timeout, _expire)
        timer.daemon = True
        timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if logf:
                logf.write(line + "\n")
                logf.flush()
            if on_line:
                on_line(line)
        code = proc.wait()
    except BaseException:  # KeyboardInterrupt, SystemExit from a signal handler, ...
        _kill(proc)
        raise
    finally:
        if timer:
            timer.cancel()
        if logf:
            logf.close()
    if timed_out.is_set():
        raise StepFailed(f"{Path(cmd[0]).name} ran past its {timeout:g} s timeout and was stopped",
                         f"raise the timeout or see {log}")
    return code, list(tail)


def call(cmd: Sequence[str], **kwargs) -> list[str]:
    """Run ``cmd`` and raise EnvironmentFailed (with the last output line) when it fails."""
    code, tail = stream(cmd, **kwargs)
    if code != 0:
        last = next((l for l in reversed(tail) if l.strip()), "")
        raise EnvironmentFailed(f"`{quote(cmd)[:200]}` failed (exit {code}): {last.strip()[:300]}")
    return tail


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    except ProcessLookupError:
        pass
