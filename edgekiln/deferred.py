"""Deferred TensorRT builds: the device bundle of an artifact, and ``edgekiln finish`` on the device.

A TensorRT engine is built on the GPU it is for. When no NVIDIA runtime is at hand, a jetson / x86-gpu
artifact is published as a complete *bundle* with manifest status ``pending-device``:

    <artifact>/model.onnx          the ONNX the engine is built from (fp16-typed, Q/DQ int8 or fp32),
                                   already validated in ONNX Runtime against the source model
    <artifact>/report.json         that ONNX Runtime proxy report; build/ the workstation record
    <artifact>/device/             build_engine.py, check_engine.py (rendered for the stack's API level),
                                   preflight.py, build_engine.sh (`docker run` with the NVIDIA runtime),
                                   bundle.json (their parameters), reference.npz (reference inputs and
                                   the fp32 source outputs), trtexec.txt, image/ (the device image recipe)
    <artifact>/SHA256SUMS          every file above

``finish(folder)`` runs preflight -> build -> check in a copy of the folder and swaps it in: the one
case where a published artifact gains files (model.engine, engine.json, check.json, preflight.json,
device/logs/), recorded in the manifest (``finished``: who, on which device, with which TensorRT). The
steps run here (LocalDevice: ``python -I``) or on a device over ssh (edgekiln.device.SshDevice). A bundle
is code: only the files SHA256SUMS lists are copied and run, and SHA256SUMS detects corruption, not
tampering (docs/tensorrt.md).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from .errors import DeviceRefused, EnvironmentFailed, UsageError, ValidationFailed
from .resources import data_dir
from .tensorrt import Stack, device_scripts, made_for, stacks, trtexec_line, trtexec_text

PENDING, BUILT = "pending-device", "built"
SUMS = "SHA256SUMS"
PROXY_NOTE = ("validated as an ONNX Runtime CPU run of model.onnx (the ONNX the engine is built from) "
              "against the source model: a proxy; the TensorRT engine itself is not built or run until "
              "the bundle is finished on the device")


def device_thresholds(thresholds: Mapping[str, float]) -> dict[str, float]:
    """The gates the device check computes (cosine and top-1 agreement of the engine against the fp32
    reference). An int8 row has no ``min_cosine`` (its task gates judge the workstation proxy,
    docs/gates.md): its raw-cosine floor ``min_raw_cosine`` stands in, so the engine is never
    checked by agreement alone."""
    out = {k: v for k, v in thresholds.items() if k in ("min_cosine", "min_top1_agreement")}
    if "min_cosine" not in out and "min_raw_cosine" in thresholds:
        out["min_cosine"] = thresholds["min_raw_cosine"]
    return out


def stack_of(params: Mapping[str, Any]) -> Stack:
    raw = params["tensorrt"]
    return stacks(raw["kind"])[raw["key"]]


def render_image(stack: Stack, dest: Path) -> str:
    """The device image recipe for ``stack`` into ``dest`` (Dockerfile, the row's lock as
    requirements.txt, smoke.py); returns the recipe's sha256."""
    from .images import Recipe, render

    name = "tensorrt-jetson" if stack.kind == "jetson" else "tensorrt-x86"
    folder = data_dir("images") / name
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / name
        shutil.copytree(folder, work)
        for shared in folder.parent.glob("_*.jinja"):  # the bodies the recipe extends
            shutil.copy2(shared, Path(tmp) / shared.name)
        for lock in work.glob("requirements*.txt"):
            if lock.name != stack.lock:
                lock.unlink()
        (work / stack.lock).rename(work / "requirements.txt")
        plat = "linux/arm64" if stack.kind == "jetson" else "linux/amd64"
        files = render(Recipe(name, work, stack.base, (plat,), local=False), base=stack.base, platform=plat)
    digest = hashlib.sha256()
    dest.mkdir(parents=True, exist_ok=True)
    for rel, data in sorted(files.items()):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
        digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    sha = digest.hexdigest()
    (dest / "recipe.sha256").write_text(sha + "\n")
    return sha


def device_bundle(folder: Path, params: Mapping[str, Any], work: Path, source: Path,
                  thresholds: Mapping[str, float], reason: str) -> dict[str, Any]:
    """Write ``folder/device/`` for a staged TensorRT artifact and return the manifest's ``deferred``
    entry. ``work``: the job's work/<target>/<precision> (trt.json), ``source``: work/source."""
    stack, options, precision = stack_of(params), params["options"], params["precision"]
    info = json.loads((work / "trt.json").read_text())
    io = json.loads((source / "io.json").read_text())
    dla_core = params["tensorrt"]["dla_core"]
    compat = stack.kind == "x86"
    scripts = device_scripts(stack, precision, dla=dla_core is not None, dynamic=info["shapes"] is not None,
                             compatibility=compat)
    device = folder / "device"
    device.mkdir()
    for name, text in scripts.items():
        (device / name).write_text(text)
    (device / "build_engine.sh").chmod(0o755)
    shutil.copy2(data_dir("converters") / "trt" / "preflight.py", device / "preflight.py")
    shutil.copy2(work / "device_reference.npz", device / "reference.npz")
    hardware_compatible = bool(options.get("hardware_compatible", False))
    trtexec = trtexec_line(stack, precision, shapes=info["shapes"], input_name=io["inputs"][0]["name"],
                           dla_core=dla_core, workspace_mib=int(options["workspace_mib"]),
                           hardware_compatible=hardware_compatible,
                           version_compatible=bool(options.get("version_compatible", False)))
    (device / "trtexec.txt").write_text(trtexec_text(stack, trtexec, dla=dla_core is not None))
    recipe = render_image(stack, device / "image")
    made = made_for(stack, hardware_compatible)
    bundle = {"onnx": "model.onnx", "engine": "model.engine", "precision": precision, "shapes": info["shapes"],
              "input": io["inputs"][0]["name"], "input_shape": io["inputs"][0]["shape"],
              "outputs": [o["name"] for o in io["outputs"]],  # the order of reference.npz's y0, y1, ...
              "workspace_mib": int(options["workspace_mib"]), "dla_core": dla_core,
              "timing_cache": "timing.cache", "reference": "reference.npz",
              "hardware_compatible": hardware_compatible,
              "version_compatible": bool(options.get("version_compatible", False)),
              "thresholds": device_thresholds(thresholds),
              "latency_runs": int(options["latency_runs"]), "latency_warmup": int(options.get("latency_warmup", 3)),
              "made_for": made, "trtexec": trtexec,
              "api_level": stack.api, "strongly_typed": stack.typed_build(dla_core is not None),
              "recovery": recovery_of(info)}
    (device / "bundle.json").write_text(json.dumps(bundle, indent=2) + "\n")
    return {"reason": reason, "stack": made, "image_base": stack.base, "image_recipe_sha256": recipe,
            "how_to_finish": ["edgekiln finish <this folder>   (on the device)",
                              "edgekiln finish <this folder> --device ssh://user@device   (from the workstation)",
                              "sh device/build_engine.sh      (on the device, Docker + NVIDIA runtime)"],
            "missing": ["model.engine: the TensorRT engine (built on the device: it is tied to the GPU "
                        "and the TensorRT version)",
                        "check.json: the engine's agreement with the fp32 reference and its latency"],
            "not_executed": ["device/build_engine.py (TensorRT builder)", "device/check_engine.py (engine run)",
                             "device/preflight.py (device check)", "device/build_engine.sh (docker run)",
                             "device/image (docker build of NVIDIA's base)"],
            "trtexec": shlex.join(trtexec), "workstation": info}


def recovery_of(info: Mapping[str, Any]) -> dict[str, Any] | None:
    """--recover's outcome for the device: the nodes the Q/DQ ONNX keeps float and how it was measured."""
    rec = info.get("recovery") or {}
    if not rec.get("float_layers"):
        return None
    return {"float_layers": [r["layer"] for r in rec["float_layers"]], "int8_mac_share": rec.get("int8_mac_share"),
            "passed": rec.get("passed"), "measured": rec.get("proxy")}


def defer_engine(folder: Path, artifact, target, params: Mapping[str, Any], job, manifest: dict[str, Any]):
    """The ``after_validation`` stage of the TensorRT targets (targets/jetson.toml [stages]): the
    validated ONNX becomes a deferred device bundle (no engine is built here). -> (manifest, status)."""
    from .targets import host_support

    ok, reason = host_support(target)
    if ok:  # an NVIDIA GPU is here, but edgekiln does not build engines in the build itself yet
        reason = "engines are built by `edgekiln finish` on the device (not inside `edgekiln build` yet)"
    deferred = device_bundle(folder, params, job.work / artifact.work_dir, job.work / "source",
                             artifact.thresholds, reason)
    return mark_pending(folder, manifest, deferred), "deferred: bundle ready"


def mark_pending(folder: Path, manifest: dict[str, Any], deferred: dict[str, Any]) -> dict[str, Any]:
    """Record the bundle in the manifest (status pending-device) and write SHA256SUMS."""
    manifest["status"] = PENDING
    manifest["deferred"] = deferred
    manifest.setdefault("validation", {})["proxy"] = PROXY_NOTE
    manifest["not_executed"] = list(manifest.get("not_executed", [])) + deferred["not_executed"]
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    write_sums(folder)
    return manifest


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_sums(folder: Path) -> None:
    lines = [f"{_sha(p)}  {p.relative_to(folder).as_posix()}\n" for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != SUMS and "__pycache__" not in p.parts]
    (folder / SUMS).write_text("".join(lines))


def verify_sums(folder: Path) -> list[str]:
    """Files whose content does not match SHA256SUMS, are missing, or are not listed in it at all
    (an added device/json.py would shadow the standard library of the scripts). SHA256SUMS detects
    corruption and accidents, not tampering: whoever can change the bundle can rewrite it too."""
    bad, listed = [], set()
    for line in (folder / SUMS).read_text().splitlines():
        sha, _, rel = line.partition("  ")
        listed.add(rel)
        path = folder / rel
        if path.is_symlink() or not path.is_file() or _sha(path) != sha:
            bad.append(rel)
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if (p.is_file() or p.is_symlink()) and rel != SUMS and rel not in listed:
            bad.append(f"{rel} (not listed)")
    return bad


def listed_files(folder: Path) -> list[str]:
    """The bundle's files: SHA256SUMS and what it lists (all that is shipped to a device)."""
    return [SUMS] + [line.partition("  ")[2] for line in (folder / SUMS).read_text().splitlines()]


# ---------------------------------------------------------------- finish (on the device)

# (step, script, files it adds to the artifact on success)
STEPS = (("preflight", "device/preflight.py", ("preflight.json",)),
         ("build", "device/build_engine.py", ("model.engine", "engine.json", "device/timing.cache")),
         ("check", "device/check_engine.py", ("check.json",)))
EXIT_PREFLIGHT, EXIT_MISSED = 4, 1  # preflight.py's refusal; check_engine.py's threshold miss


def stream(cmd: list[str], log: Path, cwd: Path | None = None, stdin=None) -> tuple[int, list[str]]:
    """Run ``cmd`` with its stdout and stderr merged, echoed line by line to our stderr (a Jetson
    build takes minutes: the TensorRT log shows as it comes) and written to ``log``."""
    print("+ " + shlex.join(cmd), file=sys.stderr, flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        for line in proc.stdout:
            sys.stderr.write(line)
            out.write(line)
            lines.append(line.rstrip("\n"))
        code = proc.wait()
    return code, lines


class LocalDevice:
    """``edgekiln finish`` on the device itself: the scripts run here, with ``python`` in isolated
    mode (-I: no PYTHON* variables, no user site, the script's folder not on sys.path)."""

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable
        self.where = "this machine"

    def ship(self, stage: Path, files: list[str]) -> None:
        pass

    def run(self, stage: Path, step: str, script: str, log: Path) -> tuple[int, list[str]]:
        return stream([self.python, "-I", script], log, cwd=stage)

    def fetch(self, stage: Path, files) -> None:
        pass

    def close(self) -> None:
        pass


def _last(lines: list[str], fallback: str) -> str:
    return next((line.strip() for line in reversed(lines) if line.strip()), fallback)


def finish(folder: Path, python: str | None = None, who: str | None = None, device=None) -> dict[str, Any]:
    """Complete a pending-device artifact in place: preflight, build, check in a copy, then swap.
    ``device``: where the scripts run (default: here, LocalDevice(python); edgekiln.device.SshDevice
    ships the bundle to another machine and brings the new files back).
    Refuses (DeviceRefused) on the wrong device/TensorRT; EnvironmentFailed when a device step cannot
    run; ValidationFailed when the engine misses the thresholds. The published artifact changes only
    by the final swap: on any failure it stays the pending bundle it was."""
    folder = Path(folder).resolve()
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file() or not (folder / "device" / "bundle.json").is_file():
        raise UsageError(f"{folder} is not a TensorRT bundle (no manifest.json / device/bundle.json)",
                         "pass an artifact folder such as dist/<model>/<version>/jetson/fp16")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("status") != PENDING:
        raise UsageError(f"{folder} is not pending (status {manifest.get('status')!r})", "nothing to finish")
    bad = verify_sums(folder)
    if bad:
        raise UsageError(f"the bundle was changed after it was made: {', '.join(bad[:5])}",
                         "rebuild it, or restore the files (SHA256SUMS)")
    device = device or LocalDevice(python)
    stage = folder.with_name(f".finish-{folder.name}-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    files = listed_files(folder)
    for rel in files:  # only the listed files, never following a link
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / rel, stage / rel, follow_symlinks=False)
    keep = False  # a failed build/check leaves its copy (and logs/) for inspection; anything else nothing
    try:
        device.ship(stage, files)
        for step, script, adds in STEPS:
            code, lines = device.run(stage, step, script, stage / "device" / "logs" / f"{step}.log")
            if code == 0:
                device.fetch(stage, adds)
                continue
            last = _last(lines, f"{script} exited {code}")
            if step == "preflight" and code == EXIT_PREFLIGHT:
                raise DeviceRefused(f"{device.where}: the device refused the bundle: "
                                    f"{last.removeprefix('preflight: refused: ')}",
                                    "finish the bundle on the device it was made for, or rebuild for this one")
            keep = step != "preflight"
            where = f"; its output is in {stage / 'device' / 'logs'}" if keep else ""
            if step == "check" and code == EXIT_MISSED:
                raise ValidationFailed(f"{device.where}: device step check ({script}): {last}",
                                       f"the bundle stays pending{where}")
            raise EnvironmentFailed(f"{device.where}: device step {step} ({script}) failed (exit {code}): {last}",
                                    f"the bundle stays pending{where}")
        found = json.loads((stage / "preflight.json").read_text())["found"]
        check = json.loads((stage / "check.json").read_text())
        engine = json.loads((stage / "engine.json").read_text())
        manifest["status"] = BUILT
        manifest["finished"] = {
            "by": who or f"{getpass.getuser()}@{platform.node()}",
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "where": device.where,
            "device": {"l4t": found.get("l4t"), "sm": found.get("sm"), "tensorrt": found.get("tensorrt")},
            "tensorrt": engine["tensorrt"], "engine": engine, "check": check,
            "files_added": ["model.engine", "engine.json", "check.json", "preflight.json", "device/timing.cache",
                            "device/logs/preflight.log", "device/logs/build.log", "device/logs/check.log"]}
        if isinstance(device, LocalDevice):
            manifest["finished"]["device"]["machine"] = platform.machine()
        manifest["not_executed"] = [n for n in manifest.get("not_executed", [])
                                    if n not in manifest.get("deferred", {}).get("not_executed", [])]
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        write_sums(stage)
        old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
        os.rename(folder, old)  # the swap: two renames in one directory
        os.rename(stage, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if not keep:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        device.close()
    return manifest
