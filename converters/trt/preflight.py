"""Preflight of a TensorRT bundle ON THE DEVICE: is this the machine the bundle was made for?

Compares device/bundle.json "made_for" (kind, L4T releases, TensorRT version, GPU compute
capabilities) with what this machine has:

* L4T: ``$L4T_VERSION`` (as jetson-containers reads it), else the first line of
  ``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 4.0, ...``; ``$EDGEKILN_NV_TEGRA_RELEASE``
  names another file); none on x86;
* TensorRT: ``tensorrt.__version__`` (the bindings NVIDIA's image ships);
* GPU compute capability: cudart ``cudaGetDeviceProperties`` (cuda-python), else ``nvidia-smi``.

An engine only runs on the GPU model and TensorRT version it was built with: a mismatch is refused
with one clear line (exit 4), before anything is built. Plain Python, no TensorRT needed to import
this file (edgekiln's tests check the logic with a fake nv_tegra_release).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

EXIT_MISMATCH = 4


def parse_nv_tegra_release(text: str) -> str | None:
    """``# R36 (release), REVISION: 4.0, GCID: ...`` -> ``"36.4.0"`` (None if unreadable)."""
    m = re.match(r"\s*#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)", text or "")
    return f"{m.group(1)}.{m.group(2)}.{m.group(3)}" if m else None


def l4t_version(environ=None, release_file: str | None = None) -> str | None:
    environ = os.environ if environ is None else environ
    if environ.get("L4T_VERSION"):
        return environ["L4T_VERSION"].strip().lower().lstrip("r")
    path = Path(release_file or environ.get("EDGEKILN_NV_TEGRA_RELEASE") or "/etc/nv_tegra_release")
    try:
        first = path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return parse_nv_tegra_release(first)


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except Exception:  # not installed, or its libraries do not load: no usable TensorRT here
        return None
    return tensorrt.__version__


def _capability(text: str | None) -> str | None:
    """``"8.7"`` -> ``"8.7"``; anything else (``[N/A]``, ``N/A``, empty) -> None (not known)."""
    text = (text or "").strip()
    return text if re.fullmatch(r"\d+\.\d+", text) else None


def compute_capability() -> str | None:
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            return f"{props.major}.{props.minor}"
    except Exception:  # no cuda-python, or it cannot talk to this driver: ask nvidia-smi
        pass
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return _capability(out.stdout.splitlines()[0])
    return None


def _nums(version: str) -> list[int]:
    return [int(p) for p in re.findall(r"\d+", version)]


def _same_release(version: str, prefixes) -> bool:
    """Does ``version`` belong to one of ``prefixes``? ``"36.4"`` matches 36.4.x; ``"36.4+"`` matches
    36.4 and every later 36.x (jetson-containers' l4t_version_compatible: an r36.4 container runs on
    every r36.4+ host)."""
    have = _nums(version)
    for p in prefixes:
        want = _nums(p)
        if p.endswith("+"):
            if have[:1] == want[:1] and have[:len(want)] >= want:
                return True
        elif have[:len(want)] == want:
            return True
    return False


def _releases(prefixes) -> str:
    return " / ".join(f"r{p}" if p.endswith("+") else f"r{p}.x" for p in prefixes)


def check(made_for: dict, found: dict) -> list[str]:
    """The mismatches between the bundle and this machine, as sentences (empty: go ahead)."""
    problems = []
    trt_want, trt_have = made_for.get("tensorrt"), found.get("tensorrt")
    if trt_have is None:
        problems.append(f"no TensorRT on this device (`import tensorrt` fails in {found.get('python') or 'python'}); "
                        f"the bundle needs TensorRT {trt_want} (JetPack's python3, or the device image: "
                        "sh device/build_engine.sh)")
    elif trt_want and not _same_release(trt_have, [".".join(trt_want.split(".")[:2])]):
        problems.append(f"this machine has TensorRT {trt_have}, the bundle was made for {trt_want} "
                        "(an engine only loads in the TensorRT version that built it)")
    if made_for.get("kind") == "jetson":
        l4t = found.get("l4t")
        if l4t is None:
            problems.append(f"no L4T release found (not a Jetson?); the bundle is for "
                            f"{made_for.get('label')} (L4T {_releases(made_for.get('l4t', []))})")
        elif not _same_release(l4t, made_for.get("l4t", [])):
            problems.append(f"this Jetson runs L4T r{l4t}, the bundle is for {made_for.get('label')} "
                            f"(L4T {_releases(made_for.get('l4t', []))}): rebuild with the matching --jetpack")
    sm = found.get("sm")
    if sm is not None and made_for.get("sm") and sm not in made_for["sm"]:
        problems.append(f"GPU compute capability {sm} is not one the bundle was made for "
                        f"({', '.join(made_for['sm'])})")
    elif sm is not None and made_for.get("min_sm") and _nums(sm) < _nums(made_for["min_sm"]):
        problems.append(f"GPU compute capability {sm} is below {made_for['min_sm']}, which this bundle needs "
                        f"({made_for.get('min_sm_why', 'its build options')})")
    return problems


def detect() -> dict:
    return {"l4t": l4t_version(), "tensorrt": tensorrt_version(), "sm": compute_capability(),
            "python": sys.executable}


def main() -> int:
    here = Path(__file__).resolve().parent
    bundle = json.loads((here / "bundle.json").read_text())
    found = detect()
    problems = check(bundle["made_for"], found)
    (here.parent / "preflight.json").write_text(json.dumps({"found": found, "problems": problems}, indent=2) + "\n")
    if problems:
        print("preflight: refused: " + "; ".join(problems), file=sys.stderr, flush=True)
        return EXIT_MISMATCH
    print(f"preflight: ok (L4T {found['l4t']}, TensorRT {found['tensorrt']}, sm {found['sm']})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
