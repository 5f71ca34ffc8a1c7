"""Targets are data: one TOML file per target in ``targets/``.

A new target that reuses an image and converters is one TOML file; nothing in the code changes.
``targets/_sources.toml`` says which step turns each source format into the canonical ONNX.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .errors import TargetError
from .resources import data_dir

METRICS = ("min_cosine", "max_abs", "mean_abs", "min_top1_agreement", "max_accuracy_drop",
           # task metrics of the artifact against the source (converters/ekit/task.py)
           "min_det_f1", "min_det_recall", "min_miou", "min_map_iou", "min_region_f1",
           # the gates that can tell (docs/gates.md; edgekiln/plan.py GATES)
           "min_det_map50", "min_det_map50_low", "min_det_map", "min_det_band_f1", "min_det_band_f1_low",
           "min_miou_low", "min_map_iou_low", "min_region_f1_low", "min_top1_agreement_low",
           "max_prob_tv", "min_raw_cosine")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    runtime: str
    image: str
    platform: str
    artifacts: tuple[str, ...]
    precisions: tuple[str, ...]
    default_precisions: tuple[str, ...]
    calibration: tuple[str, ...]  # precisions that need calibration images
    convert: str  # template
    validate: str  # template
    needs: tuple[str, ...] = ()  # host capabilities, e.g. "nvidia-gpu"
    options: Mapping[str, Any] = field(default_factory=dict)
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    via: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # per source format overrides
    path: str = ""
    # [emulation]: validation on Arm (`--platform linux/arm64`): image (its arm64 validate image),
    # cpu (the QEMU core of the board, e.g. cortex-a72), latency_runs/latency_warmup (small: emulated
    # timings mean nothing for a device). Empty: the target has no Arm validation.
    emulation: Mapping[str, Any] = field(default_factory=dict)
    # [cpu]: the CPU classes an x86 CPU target's artifacts can be declared for (--option cpu=…,
    # edgekiln/isa.py): ``recipes`` class -> the options that class sets (unless given on the command
    # line), ``precisions`` whose numerics depend on the class's kernels (validated on its path),
    # latency_runs/latency_warmup of an emulated validation. Empty: the target declares no CPU.
    cpu: Mapping[str, Any] = field(default_factory=dict)
    # [stages]: what the target declares beyond convert and validate, each "module:function" of
    # edgekiln (the core calls them by these names and never names a runtime):
    #   params            (target, options, precisions) -> the extra params of its convert/validate steps
    #   after_validation  (folder, artifact, target, params, job, manifest) -> (manifest, status):
    #                     what becomes of a validated artifact before it is published (default:
    #                     published as it is; e.g. a deferred device bundle)
    stages: Mapping[str, str] = field(default_factory=dict)

    @property
    def cpu_classes(self) -> tuple[str, ...]:
        return tuple(self.cpu.get("recipes", {}))

    def thresholds_for(self, precision: str) -> dict[str, float]:
        return dict(self.thresholds.get(precision, {}))


@dataclass(frozen=True)
class SourceKind:
    """How one source format becomes the canonical ONNX plus reference outputs, and the facts
    about the format (targets/_sources.toml is the one place they live)."""

    format: str
    template: str
    image: str
    suffixes: tuple[str, ...]
    by_content: bool = False  # the suffix alone does not decide: the file's content is read
    arch: bool = False  # carries an --arch file
    layout: str = "nchw"  # default input layout


def _tuple(raw: Mapping[str, Any], key: str, default=()) -> tuple:
    value = raw.get(key, default)
    if isinstance(value, str):
        value = [value]
    return tuple(value)


def load_target(path: Path) -> Target:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TargetError(f"target file {path} is not valid TOML: {exc}", "fix the file") from None
    try:
        steps = raw.get("steps", {})
        target = Target(
            name=raw["name"],
            description=raw.get("description", ""),
            runtime=raw["runtime"],
            image=raw["image"],
            platform=raw.get("platform", "linux/amd64"),
            artifacts=_tuple(raw, "artifacts"),
            precisions=_tuple(raw, "precisions"),
            default_precisions=_tuple(raw, "default_precisions") or _tuple(raw, "precisions")[:1],
            calibration=_tuple(raw, "calibration"),
            convert=steps["convert"],
            validate=steps["validate"],
            needs=_tuple(raw, "needs"),
            options=dict(raw.get("options", {})),
            thresholds={k: dict(v) for k, v in raw.get("thresholds", {}).items()},
            via={k: dict(v) for k, v in raw.get("via", {}).items()},
            path=str(path),
            emulation=dict(raw.get("emulation", {})),
            cpu=dict(raw.get("cpu", {})),
            stages=dict(raw.get("stages", {})),
        )
    except KeyError as exc:
        raise TargetError(f"target file {path} lacks the key {exc}", "see targets/onnx.toml") from None
    for name, ref in target.stages.items():
        module, _, function = str(ref).partition(":")
        if name not in STAGES or not module.startswith("edgekiln.") or not function.isidentifier():
            raise TargetError(f"{path}: [stages] {name} = {ref!r} is not a stage edgekiln runs",
                              f"declare {' or '.join(STAGES)} as \"edgekiln.<module>:<function>\"")
    for precision, limits in target.thresholds.items():
        unknown = set(limits) - set(METRICS)
        if unknown:
            raise TargetError(f"{path}: unknown threshold(s) {sorted(unknown)} for {precision}",
                              f"use {', '.join(METRICS)}")
    return target


STAGES = ("params", "after_validation")


def stage(target: Target, name: str):
    """The function a target declares for stage ``name`` ([stages]), or None (nothing to do)."""
    import importlib

    ref = target.stages.get(name)
    if not ref:
        return None
    module, _, function = ref.partition(":")
    return getattr(importlib.import_module(module), function)


def all_targets(root: Path | None = None) -> dict[str, Target]:
    root = root or data_dir("targets")
    found = {}
    for path in sorted(root.glob("*.toml")):
        if path.name.startswith("_"):
            continue
        target = load_target(path)
        found[target.name] = target
    return found


def source_kinds(root: Path | None = None) -> dict[str, SourceKind]:
    path = (root or data_dir("targets")) / "_sources.toml"
    raw = tomllib.loads(path.read_text())
    return {
        fmt: SourceKind(fmt, entry["template"], entry["image"], _tuple(entry, "suffixes"),
                        bool(entry.get("by_content", False)), bool(entry.get("arch", False)),
                        entry.get("layout", "nchw"))
        for fmt, entry in raw.items()
    }


def arch_formats(sources: Mapping[str, SourceKind]) -> tuple[str, ...]:
    """The source formats whose --arch file travels with the job."""
    return tuple(fmt for fmt, kind in sources.items() if kind.arch)


def host_support(target: Target) -> tuple[bool, str]:
    """Can this host run the target's conversion and validation? (and why not)."""
    if target.runtime == "tensorrt" and not shutil.which("nvidia-smi"):
        return False, ("no NVIDIA GPU/TensorRT here, and an engine is tied to the GPU and TensorRT it is built "
                       "with: a deferred bundle is made instead (finish it on the device: `edgekiln finish`)")
    if "nvidia-gpu" in target.needs and not shutil.which("nvidia-smi"):
        return False, "needs an NVIDIA GPU with TensorRT (use --docker-host on the device)"
    return True, "ok"
