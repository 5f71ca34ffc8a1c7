"""Arm (arm64) validation on an x86 machine: QEMU user mode registered in binfmt_misc.

The kernel hands every aarch64 ELF to the interpreter of a binfmt_misc entry; with the ``F`` flag
the interpreter is opened at registration, so it also runs inside containers. QEMU older than 8
(Debian bookworm's 7.2) shows the guest the host's x86 ``/proc/cpuinfo`` and ONNX Runtime and
LiteRT crash on it at start; QEMU 10 runs both. ``QEMU_CPU`` (passed to the container) picks the
emulated core: the honest model of the board (a Raspberry Pi 4 is a Cortex-A72).

Only the standard library here: ``.ci/arm64-up.sh`` runs ``python3 -m edgekiln.emulation`` before
any virtualenv exists.

    python3 -m edgekiln.emulation status [linux/arm64]
    python3 -m edgekiln.emulation archive ROOTFS.tar OUT.tar TAG --arch arm64 [--label k=v]
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

# where binfmt_misc is read (EDGEKILN_BINFMT: another folder of the same layout, e.g. in tests)
BINFMT = Path(os.environ.get("EDGEKILN_BINFMT", "/proc/sys/fs/binfmt_misc"))
MIN_QEMU = (8, 0)
FIX = ("run .ci/docker-up.sh as root (it fetches Debian trixie's qemu-user 10 and registers it), or "
       "validate on an arm64 machine: --docker-host ssh://user@pi")
# e_ident + e_machine of a little-endian 64-bit ELF per platform (masked like qemu's own entries)
MAGIC = {"linux/arm64": "7f454c460201010000000000000000000200b700"}
# QEMU's names for the Arm cores that boards carry (``--emulate-cpu``); "max": every feature QEMU has
CPUS = ("cortex-a53", "cortex-a55", "cortex-a57", "cortex-a72", "cortex-a76", "cortex-a710",
        "neoverse-n1", "neoverse-n2", "neoverse-v1", "a64fx", "max")
EMULATED_LATENCY = "emulated — not a device figure"


@dataclass(frozen=True)
class Qemu:
    entry: str  # the binfmt_misc entry's name
    interpreter: str
    flags: str
    version: tuple[int, ...] | None

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version)) if self.version else "of unknown version"


def entries(root: Path | None = None) -> dict[str, dict[str, str]]:
    """Every binfmt_misc entry: name -> {"enabled", "interpreter", "flags", "magic", ...}."""
    found, root = {}, root or BINFMT
    if not (root / "status").exists():
        return found
    for path in sorted(root.iterdir()):
        if path.name in ("register", "status") or not path.is_file():
            continue
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        info = {"enabled": lines[0].strip() if lines else ""}
        for line in lines[1:]:
            key, _, value = line.partition(" ")
            info[key.rstrip(":")] = value.strip()
        found[path.name] = info
    return found


def qemu_version(interpreter: str) -> tuple[int, ...] | None:
    """``qemu-aarch64 version 10.0.13 (Debian ...)`` -> (10, 0, 13); None when it does not say."""
    try:
        out = subprocess.run([interpreter, "--version"], capture_output=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(rb"version (\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(g) for g in m.groups() if g is not None) if m else None


def find(platform: str = "linux/arm64", root: Path | None = None) -> Qemu | None:
    """The enabled binfmt_misc entry that runs ``platform`` binaries (an F-flagged one first)."""
    magic = MAGIC.get(platform)
    if magic is None:
        return None
    hits = [Qemu(name, e.get("interpreter", ""), e.get("flags", ""), None)
            for name, e in entries(root).items()
            if e.get("enabled") == "enabled" and e.get("magic") == magic]
    if not hits:
        return None
    best = sorted(hits, key=lambda q: "F" not in q.flags)[0]
    return Qemu(best.entry, best.interpreter, best.flags, qemu_version(best.interpreter))


def status(platform: str = "linux/arm64", root: Path | None = None) -> tuple[bool, str]:
    """Can containers of ``platform`` run here under emulation? (True, "QEMU 10.0.13 (binfmt
    entry X)") or (False, one sentence: what is wrong and the fix)."""
    root = root or BINFMT
    if platform not in MAGIC:
        return False, f"edgekiln emulates only {', '.join(MAGIC)}, not {platform}"
    if not (root / "status").exists():
        return False, (f"binfmt_misc is not mounted at {root} (mount binfmt_misc -t binfmt_misc "
                       f"{root}); {FIX}")
    qemu = find(platform, root)
    if qemu is None:
        return False, f"no QEMU user emulation for {platform} is registered in binfmt_misc; {FIX}"
    if qemu.version is None or qemu.version < MIN_QEMU:
        return False, (f"QEMU {qemu.version_text} ({qemu.interpreter}) is too old: QEMU < 8 shows "
                       f"the host's /proc/cpuinfo and ONNX Runtime and LiteRT crash on it; {FIX}")
    if "F" not in qemu.flags:
        return False, (f"the binfmt_misc entry {qemu.entry} lacks the F flag, so containers "
                       f"cannot open {qemu.interpreter}; {FIX}")
    return True, f"QEMU {qemu.version_text} (binfmt entry {qemu.entry})"


def arm_validation_here(target) -> tuple[bool, str]:
    """Can ``target``'s artifacts be validated on Arm from this machine (``--platform linux/arm64``)?"""
    if not getattr(target, "emulation", None):
        return False, "not an Arm target (its target file has no emulation table)"
    import platform as _platform

    if _platform.machine() in ("aarch64", "arm64"):
        return True, "native: this machine is arm64"
    ok, why = status("linux/arm64")
    return ok, (f"emulated on {_platform.machine()}: {why}, QEMU_CPU {target.emulation.get('cpu')} "
                "(needs the Docker runner)" if ok else why)


def where_text(where: dict | None) -> str:
    """"aarch64 (emulated cortex-a72, QEMU user mode)" / "x86_64 (native, <CPU model>)"."""
    w = where or {}
    how = f"emulated {w.get('cpu')}, QEMU user mode" if w.get("emulated") else f"native, {w.get('cpu') or '?'}"
    return f"{w.get('machine', '?')}{' ' + w['cpu_class'] if w.get('cpu_class') else ''} ({how})"


def arm_validation_record(report: dict, verdicts: list, native_latency: dict | None) -> dict:
    """The manifest's ``arm_validation`` from the Arm validate step's report: where it ran, the
    runtime, its numbers and gates, ``vs_native`` (its outputs against this machine's), its latency
    (labelled EMULATED_LATENCY under emulation) and this machine's latency beside it."""
    where = report.get("where") or {}
    latency = report.get("latency_ms")
    if where.get("emulated") and latency:
        latency = dict(latency, label=EMULATED_LATENCY)
    return {"where": where, "runtime": report.get("runtime"), "metrics": report.get("metrics"),
            "gates": verdicts, "vs_native": report.get("vs_native"), "latency_ms": latency,
            "native_latency_ms": native_latency, "notes": report.get("notes", [])}


def check_cpu(cpu: str) -> str:
    """An ``--emulate-cpu`` value, or UsageError."""
    if cpu not in CPUS:
        from .errors import UsageError
        raise UsageError(f"--emulate-cpu {cpu!r} is not a QEMU Arm core edgekiln knows",
                         f"use one of {', '.join(CPUS)}")
    return cpu


# -- the arm64 stand-in base: a docker-load archive with a truthful platform -----------------------

def docker_archive(rootfs: Path, out: Path, tag: str, *, arch: str = "arm64",
                   env: tuple[str, ...] = (), cmd: tuple[str, ...] = ("python3",),
                   labels: dict[str, str] | None = None) -> str:
    """Write ``out``, a ``docker load`` archive of one layer (the ``rootfs`` tar) whose config
    says ``linux/<arch>`` (``docker import`` on Docker 20.10 labels every image amd64). Returns
    the image id."""
    h = hashlib.sha256()
    with open(rootfs, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    diff_id = "sha256:" + h.hexdigest()
    config = {"architecture": arch, "os": "linux", "created": "1970-01-01T00:00:00Z",
              "config": {"Env": list(env), "Cmd": list(cmd), "Labels": dict(labels or {})},
              "rootfs": {"type": "layers", "diff_ids": [diff_id]},
              "history": [{"created": "1970-01-01T00:00:00Z",
                           "created_by": "edgekiln.emulation.docker_archive"}]}
    blob = json.dumps(config, sort_keys=True).encode()
    image_id = hashlib.sha256(blob).hexdigest()
    manifest = [{"Config": f"{image_id}.json", "RepoTags": [tag], "Layers": [f"{h.hexdigest()}/layer.tar"]}]
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        for name, data in ((f"{image_id}.json", blob), ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.add(rootfs, arcname=f"{h.hexdigest()}/layer.tar")
    tmp.replace(out)
    return image_id


def main(argv: list[str]) -> int:
    if argv[:1] == ["status"]:
        ok, why = status(argv[1] if len(argv) > 1 else "linux/arm64")
        print(why)
        return 0 if ok else 1
    if argv[:1] == ["archive"] and len(argv) >= 4:
        arch = argv[argv.index("--arch") + 1] if "--arch" in argv else "arm64"
        labels = dict(a.split("=", 1) for a in argv[argv.index("--label") + 1:argv.index("--label") + 2]) \
            if "--label" in argv else {}
        env = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")
        print(docker_archive(Path(argv[1]), Path(argv[2]), argv[3], arch=arch, env=env, labels=labels))
        return 0
    print(__doc__.strip().splitlines()[-2:], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
