"""The CPU an int8 artifact is declared for, and where its validation can run that CPU's kernels.

int8 numerics depend on the kernel path the runtime picks from the CPU's features: on x86 without
VNNI, ONNX Runtime's u8s8 kernels multiply with VPMADDUBSW, whose 16-bit sums saturate; with VNNI
(VPDPBUSD) or AMX they do not. One int8 file gave min cosine 0.97 on a VNNI host and 0.79 on AVX2
(bench/results/int8_isa.md). So a target that runs on x86 CPUs declares the CPU class it is built for
(``--option cpu=…``, the classes below), its int8 recipe follows the class (the target file's
``[cpu.<class>]`` tables), and the artifact is validated on that class's kernel path:

* natively, when this machine's CPU takes that path;
* else under QEMU user mode (``qemu-x86_64`` with a named CPU model: TCG emulates AVX2, no
  AVX-512), a second validate step after the native one — the same gates apply to both;
* else (VNNI on an AVX2 host, AVX-512 anywhere under QEMU) on the nearest path this machine can
  run, said in one line and in the manifest — never silently.

Only the standard library here (planning is pure: the host's facts are read once, by ``host()``).
"""

from __future__ import annotations

import os
import platform as _platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

# class -> what it is, the /proc/cpuinfo flags a CPU needs for it, QEMU's CPU model that emulates
# it (None: TCG cannot), whether ONNX Runtime's u8s8 int8 kernels saturate on it, the class a
# machine that cannot run it validates on instead (the nearest path with the same saturation)
CLASSES: dict[str, dict] = {
    "x86-64-v2": {"about": "SSE4.2, no AVX2 (Nehalem .. Westmere, Atom/Celeron before 2017)",
                  "flags": ("sse4_2",), "qemu": "Nehalem", "saturates": True, "nearest": "x86-64-v3"},
    "x86-64-v3": {"about": "AVX2 + FMA, no VNNI (Haswell .. Coffee Lake, AMD Zen 1-3)",
                  "flags": ("avx2", "fma"), "qemu": "Haswell-noTSX", "saturates": True, "nearest": "x86-64-v2"},
    "x86-64-v4": {"about": "AVX-512 without VNNI (Skylake-SP/X)",
                  "flags": ("avx512f", "avx512bw"), "qemu": None, "saturates": True, "nearest": "x86-64-v3"},
    "avx-vnni": {"about": "AVX2 + AVX-VNNI (Alder Lake and later client cores)",
                 "flags": ("avx2", "avx_vnni"), "qemu": None, "saturates": False, "nearest": "avx512-vnni"},
    "avx512-vnni": {"about": "AVX-512 VNNI (Cascade Lake .. Emerald Rapids, AMD Zen 4/5)",
                    "flags": ("avx512f", "avx512_vnni"), "qemu": None, "saturates": False, "nearest": "avx-vnni"},
    "amx": {"about": "AMX int8 (Sapphire Rapids and later Xeons)",
            "flags": ("amx_int8",), "qemu": None, "saturates": False, "nearest": "avx512-vnni"},
    "arm64": {"about": "64-bit Arm (validated by the Arm validation: --platform linux/arm64)",
              "flags": (), "qemu": None, "saturates": False, "nearest": None},
}
X86 = tuple(k for k in CLASSES if k != "arm64")
# the order a CPU is classified in: the first class whose flags it has
_ORDER = ("amx", "avx512-vnni", "avx-vnni", "x86-64-v4", "x86-64-v3", "x86-64-v2")
# QEMU user mode for x86-64: where to look (EDGEKILN_QEMU_X86_64 first); >= 7.2 emulates AVX2
QEMU_PATHS = ("/usr/local/lib/edgekiln/qemu-x86_64", "qemu-x86_64-static", "qemu-x86_64")
MIN_QEMU = (7, 2)
QEMU_FIX = ("install QEMU >= 7.2 user mode (Debian trixie's qemu-user; .ci/arm64-up.sh installs it as "
            "/usr/local/lib/edgekiln/qemu-x86_64) or set EDGEKILN_QEMU_X86_64")


def classify(flags, machine: str = "x86_64") -> str:
    """The class of a CPU from its /proc/cpuinfo flags (``avx2``, ``avx512_vnni``…)."""
    if machine in ("aarch64", "arm64"):
        return "arm64"
    flags = set(flags)
    for name in _ORDER:
        if all(f in flags for f in CLASSES[name]["flags"]):
            return name
    return "x86-64-v2"


def check_class(name: str, offered) -> str:
    """``--option cpu=NAME`` checked against the classes a target offers, or UsageError."""
    if name not in offered:
        raise UsageError(f"--option cpu={name!r} is not a CPU class this target offers",
                         f"use one of {', '.join(offered)} (edgekiln targets; docs/cpu.md)")
    return name


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


@dataclass(frozen=True)
class Qemu:
    path: str
    version: tuple[int, ...] | None
    static: bool  # no ELF interpreter: it can be mounted into a container

    def ok(self) -> bool:
        return self.version is not None and self.version >= MIN_QEMU


def _static(path: str) -> bool:
    """True when the ELF file has no PT_INTERP program header (statically linked)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                return False
            phoff = int.from_bytes(head[32:40], "little")
            phentsize = int.from_bytes(head[54:56], "little")
            phnum = int.from_bytes(head[56:58], "little")
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
    except (OSError, IndexError):
        return False
    return not any(int.from_bytes(table[i * phentsize:i * phentsize + 4], "little") == 3 for i in range(phnum))


def find_qemu() -> Qemu | None:
    """QEMU user mode for x86-64 on this machine (EDGEKILN_QEMU_X86_64, else the usual places)."""
    wanted = os.environ.get("EDGEKILN_QEMU_X86_64")
    for cand in ([wanted] if wanted is not None else list(QEMU_PATHS)):
        path = cand if os.path.isabs(cand) else shutil.which(cand)
        if path and os.access(path, os.X_OK):
            try:
                out = subprocess.run([path, "--version"], capture_output=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            m = re.search(rb"version (\d+)\.(\d+)", out)
            return Qemu(path, tuple(int(g) for g in m.groups()) if m else None, _static(path))
    return None


@dataclass(frozen=True)
class Host:
    """This machine's CPU class and what it can emulate: the planner's only view of the host."""

    machine: str
    cpu_class: str
    model: str | None
    qemu: Qemu | None

    def emulates(self, name: str) -> bool:
        return bool(self.machine == "x86_64" and self.qemu and self.qemu.ok() and CLASSES[name]["qemu"])

    def why_not(self, name: str) -> str:
        """Why the declared class ``name`` can be neither run nor emulated here."""
        if CLASSES[name]["qemu"] is None:
            return f"QEMU emulates no {CLASSES[name]['about'].split(' (')[0]}"
        if self.qemu is None:
            return f"no QEMU user mode for x86-64 here: {QEMU_FIX}"
        return f"QEMU {'.'.join(map(str, self.qemu.version or ())) or '?'} at {self.qemu.path} is older than 7.2 (no AVX2); {QEMU_FIX}"


_HOST: Host | None = None


def host() -> Host:
    """This machine (read once per process)."""
    global _HOST
    if _HOST is None:
        machine = _platform.machine()
        flags = cpu_flags()
        model = None
        try:
            model = next((l.partition(":")[2].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                          if l.startswith("model name")), None)
        except OSError:
            pass
        _HOST = Host(machine, classify(flags, machine), model, find_qemu() if machine == "x86_64" else None)
    return _HOST


def validation_route(declared: str, here: Host) -> dict:
    """How an artifact declared for ``declared`` is validated on ``here``: ``{"declared", "native"
    (this machine's class), "extra": None | {"cpu_class", "qemu_cpu"}, "validated_on": [classes],
    "nearest": None | sentence}``. The native validation always runs (the source's reference
    outputs and latency come from it)."""
    route = {"declared": declared, "native": here.cpu_class, "extra": None,
             "validated_on": [here.cpu_class], "nearest": None}
    if declared == here.cpu_class or declared == "arm64":  # arm64: the Arm validation's business
        return route
    if here.emulates(declared):
        route["extra"] = {"cpu_class": declared, "qemu_cpu": CLASSES[declared]["qemu"]}
        route["validated_on"].append(declared)
        return route
    same = CLASSES[declared]["saturates"] == CLASSES[here.cpu_class]["saturates"]
    route["nearest"] = (f"declared cpu {declared} can be neither run nor emulated here "
                        f"({here.why_not(declared)}): validated on {here.cpu_class} (native) instead, "
                        + ("the same int8 saturation behaviour" if same else
                           "whose int8 kernels " + ("saturate" if CLASSES[here.cpu_class]["saturates"] else
                                                    "do not saturate") + " unlike the declared class's"))
    return route


def cpu_record(route: dict, native_where: dict | None) -> dict:
    """The manifest's ``cpu``: the class declared, every class its kernels were validated on (this
    machine's natively, an emulated one after it), the nearest-path sentence when the declared
    class could not be run here, and how to declare another."""
    return {"declared": route["declared"], "about": CLASSES[route["declared"]]["about"],
            "validated_on": route["validated_on"], "native": route["native"],
            "native_cpu": (native_where or {}).get("cpu"),
            "emulated": route["extra"]["cpu_class"] if route.get("extra") else None,
            "nearest": route.get("nearest"),
            "declare_another": "--option cpu=<class>: " + ", ".join(X86)}


def cpu_sentence(record: dict) -> str:
    """One line for the summary: what the int8 was validated for."""
    how = [f"{record['native']} (native)"]
    if record.get("emulated"):
        how.append(f"{record['emulated']} (emulated, QEMU {CLASSES[record['emulated']]['qemu']})")
    text = f"declared for cpu {record['declared']}; validated on " + " and ".join(how)
    return text + (f" — {record['nearest']}" if record.get("nearest") else "")
