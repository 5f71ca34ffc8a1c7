"""Planning: a pure function from a request and the target definitions to frozen steps.

No I/O and no environments here, so the plan is unit-testable and printable with ``--dry-run``.
One build = one source step per distinct (template, image) the targets need, then for every
target × precision a convert step and a validate step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import DataError, TargetError, UsageError
from .isa import Host, check_class, validation_route
from .request import BuildRequest
from .targets import METRICS, SourceKind, Target, arch_formats, stage

ZOO = {"mobilenet_v2": "zoo/mobilenet_v2.py:mobilenet_v2"}


@dataclass(frozen=True)
class Step:
    id: str  # "01-source-onnx", "02-onnx-int8-convert"
    kind: str  # source | convert | validate
    template: str  # converters/<template>
    image: str  # images/<image>
    target: str | None
    precision: str | None
    params_json: str  # the step's params (frozen as canonical JSON text)
    needs: tuple[str, ...] = ()  # ids of the steps that must run first
    platform: str | None = None  # the platform the step's image is made for (None: the engine's own)
    local: bool = True  # the image can have a local virtualenv (false: a runtime not on the package index)
    gpu: bool = False  # the step needs an NVIDIA GPU (the runner asks the engine for one)
    emulate_cpu: str | None = None  # a validation elsewhere: the CPU QEMU emulates (QEMU_CPU)
    qemu: str | None = None  # "x86_64": run the step under QEMU user mode explicitly (an x86 CPU class
                             # this machine does not have, edgekiln.isa); None: natively or binfmt's

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json)

    @property
    def script(self) -> str:
        """The rendered script, relative to the job root."""
        return f"steps/{self.id}.py"


@dataclass(frozen=True)
class Artifact:
    target: str
    precision: str
    files: tuple[str, ...]
    work_dir: str  # relative to the job's work/
    source_step: str
    convert_step: str
    validate_step: str
    thresholds_json: str
    # validations of the same artifact elsewhere, after validate_step: on Arm (--platform linux/arm64),
    # on the declared x86 CPU class's kernels (--option cpu=…); each step's params say where ("elsewhere")
    elsewhere: tuple[str, ...] = ()

    @property
    def thresholds(self) -> dict[str, float]:
        return json.loads(self.thresholds_json)

    @property
    def key(self) -> str:
        return f"{self.target}/{self.precision}"


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    artifacts: tuple[Artifact, ...]

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    @property
    def images(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.image for s in self.steps))

    def steps_for(self, artifact: Artifact) -> tuple[Step, ...]:
        ids = (artifact.source_step, artifact.convert_step, artifact.validate_step, *artifact.elsewhere)
        return tuple(s for s in self.steps if s.id in ids)


def _canon(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False)


def resolve_arch(arch: str | None) -> str | None:
    """Built-in names map to files in converters/zoo; a user file is copied to arch/ by render."""
    if not arch:
        return None
    if arch in ZOO:
        return ZOO[arch]
    module, sep, factory = arch.rpartition(":")
    if not sep or not module or not factory.isidentifier():
        raise UsageError(f"--arch {arch!r} is not module:factory",
                         f"e.g. --arch mymodels.py:build or --arch pkg.module:build, or one of: {', '.join(ZOO)}")
    if module.endswith(".py"):
        return f"arch/{module.replace(chr(92), '/').rsplit('/', 1)[-1]}:{factory}"
    return arch


def split_thresholds(overrides: Mapping[str, Any], precision: str) -> dict[str, float]:
    result = {}
    for key, value in overrides.items():
        scope, _, metric = key.rpartition(".")
        if metric not in METRICS:
            raise UsageError(f"--threshold {key}: unknown metric {metric!r}", f"use one of {', '.join(METRICS)}")
        if scope in ("", precision):
            try:
                result[metric] = float(value)
            except (TypeError, ValueError):
                raise UsageError(f"--threshold {key}={value!r} is not a number", "e.g. min_cosine=0.99") from None
    return result


def plan_build(request: BuildRequest, targets: Mapping[str, Target],
               sources: Mapping[str, SourceKind],
               images: Mapping[str, Mapping[str, Any]] | None = None, host: Host | None = None) -> Plan:
    """``images``: facts per image (``edgekiln.images.image_facts``: ``local``); an image not
    listed can have a local environment. ``host``: this machine's CPU class and emulation
    (``edgekiln.isa.host()``), which decides how an artifact declared for a CPU class is validated;
    None: validated here only (the plan records no route)."""
    images = images or {}

    def local_ok(image: str) -> bool:
        return bool(images.get(image, {}).get("local", True))

    if not request.targets:
        raise UsageError("no target given", "pass --target, e.g. --target onnx (see `edgekiln targets`)")
    chosen = []
    for name in request.targets:
        if name not in targets:
            raise TargetError(f"unknown target {name!r}",
                              f"choose one of: {', '.join(sorted(targets))} (see `edgekiln targets`)")
        chosen.append(targets[name])
    if request.source_format not in sources and not any(request.source_format in t.via for t in chosen):
        raise UsageError(f"no target here reads {request.source_format} models yet",
                         "export the model to ONNX first")
    if request.source_format == "state_dict" and not request.arch:
        raise UsageError("a state dict needs its architecture", "pass --arch module:factory")

    known = {key for t in chosen for key in t.options}
    unknown = sorted(set(request.options) - known)
    if unknown:
        names = ", ".join(t.name for t in chosen)
        raise UsageError(f"target {names} has no option(s) {', '.join(unknown)}",
                         f"its options: {', '.join(sorted(known)) or 'none'}")
    arch = resolve_arch(request.arch) if request.source_format in arch_formats(sources) else None
    base = {
        "source_format": request.source_format,
        "model_name": request.model_name,
        "input": request.input.to_json(),
    }
    source_options = {
        "arch": arch,
        "trust_pickle": request.trust_pickle,
        "opset": request.opset,
        "dynamic_batch": request.input.dynamic_batch,
        "simplify": request.simplify,
    }
    if request.task or request.head or request.task_params:  # absent: detected from the model
        source_options.update(task=request.task, head=request.head,
                              task_params=dict(request.task_params))

    steps: list[Step] = []
    artifacts: list[Artifact] = []
    source_ids: dict[tuple[str, str], str] = {}

    def next_id(label: str) -> str:
        return f"{len(steps) + 1:02d}-{label}"

    def source_step(target: Target) -> str:
        via = target.via.get(request.source_format, {})
        if "source" in via:
            template, image = via["source"], via.get("source_image", target.image)
        elif request.source_format in sources:
            kind = sources[request.source_format]
            template, image = kind.template, kind.image
        else:
            raise UsageError(f"target {target.name} cannot read {request.source_format} models",
                             "export the model to ONNX first")
        if (template, image) not in source_ids:
            step_id = next_id(f"source-{image}")
            # No images at all (an fp32-only build): validate on seeded noise, flagged as
            # "synthetic" in the manifest and the summary, rather than refuse the build.
            params = dict(base, step=step_id, kind="source", target=None, precision=None,
                          options=source_options, reference_limit=request.max_images,
                          calib_limit=request.max_images, calib_min=1, seed=0, synthetic_count=8,
                          allow_synthetic=request.calib is None and request.val is None)
            steps.append(Step(step_id, "source", template, image, None, None, _canon(params),
                              local=local_ok(image)))
            source_ids[(template, image)] = step_id
        return source_ids[(template, image)]

    for target in chosen:
        precisions = request.precisions or target.default_precisions
        for precision in precisions:
            if precision not in target.precisions:
                raise TargetError(f"target {target.name} does not offer precision {precision!r}",
                                  f"it offers: {', '.join(target.precisions)}")
            # A TensorFlow source converted directly (target.via) may be a QAT model that carries its
            # own ranges: its convert step uses them, or fails clearly without --calib.
            if precision in target.calibration and request.calib is None \
                    and request.source_format not in target.via:
                raise DataError(f"{precision} on {target.name} needs calibration images",
                                "pass --calib FOLDER with representative images (a few hundred is best)")
        options = target_options(target, request.options)
        src = source_step(target)
        via = target.via.get(request.source_format, {})
        extra = stage(target, "params")  # what the target declares its steps need (e.g. a chosen stack)
        base_t = dict(base, **extra(target, options, precisions)) if extra else base
        for precision in precisions:
            work_dir = f"{target.name}/{precision}"
            limits = target.thresholds_for(precision)
            limits.update(split_thresholds(request.thresholds, precision))
            # The thresholds travel to the convert step too: a converter that can aim at a
            # gate (NNCF's accuracy control at max_accuracy_drop) reads it there — one place.
            common = dict(base_t, target=target.name, precision=precision, options=options,
                          thresholds=limits, artifacts=list(target.artifacts),
                          out_dir=f"work/{work_dir}", source_step=src)
            where = dict(platform=target.platform, local=local_ok(target.image),
                         gpu="nvidia-gpu" in target.needs)
            conv_id = next_id(f"{target.name}-{precision}-convert")
            steps.append(Step(conv_id, "convert", via.get("convert", target.convert), target.image,
                              target.name, precision,
                              _canon(dict(common, step=conv_id, kind="convert")), (src,), **where))
            val_id = next_id(f"{target.name}-{precision}-validate")
            arm = arm_validation(request, target, options)
            route = cpu_route(target, precision, options, host)
            if route:
                common["cpu"] = route
            extra = [e for e in (arm, route and route["extra"]) if e]
            steps.append(Step(val_id, "validate", via.get("validate", target.validate), target.image,
                              target.name, precision,
                              _canon(dict(common, step=val_id, kind="validate", save_outputs=bool(extra))),
                              (conv_id,), **where))
            elsewhere = []
            for e in extra:  # the same artifact validated again elsewhere, after this machine's
                step_id = next_id(f"{target.name}-{precision}-validate-{e['label']}")
                runs = target.emulation if e["key"] == "arm_validation" else target.cpu
                e_opts = dict(options, latency_runs=int(runs.get("latency_runs", 3)),
                              latency_warmup=int(runs.get("latency_warmup", 0)))
                image = e.get("image", target.image)
                steps.append(Step(step_id, "validate", via.get("validate", target.validate), image,
                                  target.name, precision,
                                  _canon(dict(common, step=step_id, kind="validate", options=e_opts,
                                              elsewhere=e, report_name=f"report-{e['label']}.json",
                                              compare_with="outputs.npz")),
                                  (val_id,), platform=e.get("platform", where["platform"]),
                                  local=local_ok(image), emulate_cpu=e["qemu_cpu"], qemu=e.get("qemu")))
                elsewhere.append(step_id)
            artifacts.append(Artifact(target.name, precision, target.artifacts, work_dir, src, conv_id,
                                      val_id, _canon(limits), tuple(elsewhere)))
    return Plan(tuple(steps), tuple(artifacts))


def target_options(target: Target, given: Mapping[str, Any]) -> dict[str, Any]:
    """The target's options, then the recipe of the declared CPU class (``[cpu.recipes.<class>]``:
    what that class sets, e.g. int8 weights that do not saturate AVX2 kernels), then the options
    given on the command line (they always win)."""
    options = dict(target.options)
    declared = given.get("cpu", options.get("cpu"))
    if target.cpu_classes and declared is not None:
        check_class(str(declared), target.cpu_classes)
        options.update(target.cpu["recipes"][declared])
    options.update({k: v for k, v in given.items() if k in options})
    return options


def cpu_route(target: Target, precision: str, options: Mapping[str, Any], host: Host | None) -> dict | None:
    """How an artifact declared for a CPU class is validated on ``host`` (edgekiln.isa.validation_route)
    plus the step that runs it on that class's kernels elsewhere (``extra``); None when the target
    declares no CPU, the precision does not depend on it, or no host is known (pure plans in tests)."""
    declared = options.get("cpu")
    if not target.cpu_classes or declared is None or host is None \
            or precision not in target.cpu.get("precisions", ()):
        return None
    route = validation_route(str(declared), host)
    if route["extra"]:
        cls = route["extra"]["cpu_class"]
        route["extra"] = {"key": "cpu_validation", "label": cls, "machine": "x86_64", "cpu_class": cls,
                          "qemu_cpu": route["extra"]["qemu_cpu"], "qemu": "x86_64"}
    return route


def arm_validation(request: BuildRequest, target: Target, options: Mapping[str, Any] | None = None) -> dict | None:
    """The Arm validation of ``target`` that ``--platform linux/arm64`` (or ``--option cpu=arm64``)
    asks for: {"key", "label", "platform", "machine", "qemu_cpu", "image"}; None when none is asked
    for. A target without [emulation] cannot have it."""
    wanted = request.validate_on or ("linux/arm64" if (options or {}).get("cpu") == "arm64" else None)
    if not wanted:
        return None
    if wanted != "linux/arm64":
        raise UsageError(f"validation on {wanted} is not offered",
                         "use --platform linux/arm64 (the Arm targets: rpi, onnx)")
    if not target.emulation:
        raise TargetError(f"target {target.name} has no Arm validation (no [emulation] in {target.path})",
                          "drop --platform, or build the Arm targets (rpi, onnx) on their own")
    return {"key": "arm_validation", "label": "aarch64", "platform": wanted, "machine": "aarch64",
            "qemu_cpu": request.emulate_cpu or target.emulation["cpu"], "image": target.emulation["image"]}


# threshold -> (the metric it reads, the comparison, why it cannot be computed when missing)
GATES = {
    "min_cosine": ("cosine", "min", "no comparable output"),
    "min_top1_agreement": ("top1_agreement", "min", "the outputs are not [N, classes] scores"),
    "max_abs": ("max_abs", "max", "no comparable output"),
    "mean_abs": ("mean_abs", "max", "no comparable output"),
    "max_accuracy_drop": ("accuracy_drop", "max", "needs labelled validation images (--val with labels) "
                                                   "and a classifier output"),
    # task metrics of the artifact against the source (converters/ekit_task.py); the validate
    # step says why one cannot be computed (metrics["not_applicable"])
    "min_det_f1": ("det_f1", "min", "not a detector"),
    "min_det_recall": ("det_recall", "min", "not a detector"),
    "min_miou": ("miou", "min", "not a segmentation model"),
    "min_map_iou": ("map_iou", "min", "not a probability-map model"),
    "min_region_f1": ("region_f1", "min", "not a probability-map model"),
    # the gates that can tell (docs/gates.md): against the source's own boxes/maps/classes, with
    # lower bounds (image bootstrap and Wilson, converters/ekit/stats.py)
    "min_det_map50": ("det_map50", "min", "not a detector"),
    "min_det_map50_low": ("det_map50_low", "min", "not a detector"),
    "min_det_map": ("det_map", "min", "not a detector"),
    "min_det_band_f1": ("det_band_f1", "min", "not a detector"),
    "min_det_band_f1_low": ("det_band_f1_low", "min", "not a detector"),
    "min_miou_low": ("miou_low", "min", "not a segmentation model"),
    "min_map_iou_low": ("map_iou_low", "min", "not a probability-map model"),
    "min_region_f1_low": ("region_f1_low", "min", "not a probability-map model"),
    "min_top1_agreement_low": ("top1_agreement_low", "min", "the outputs are not [N, classes] scores"),
    "max_prob_tv": ("prob_tv", "max", "the outputs are not [N, classes] scores"),
    # the raw-tensor cosine only where no task metric can judge (int8 rows: a classifier, detector
    # or map is judged by what its task needs, not by a cosine floor set on one model)
    "min_raw_cosine": ("raw_cosine", "min", "the model has a task: its task gates judge it"),
}


def derived_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics the gates read that the validate step does not write: ``accuracy_drop``
    (percentage points) and ``raw_cosine`` (the cosine of a model whose task is raw/unknown)."""
    metrics = dict(metrics or {})
    acc, src = metrics.get("accuracy"), metrics.get("source_accuracy")
    if acc is not None and src is not None:
        metrics["accuracy_drop"] = (src - acc) * 100.0  # percentage points
    if metrics.get("task") in (None, "raw"):
        metrics["raw_cosine"] = metrics.get("cosine")
    else:
        metrics.setdefault("not_applicable", {})
        metrics["not_applicable"] = dict(metrics["not_applicable"], raw_cosine=(
            # the wording of every gate meant for another task (ekit/task.py): recorded in the
            # manifest, left out of the summary's "not applicable" line
            f"the model's task is {metrics['task']}, not the task this metric is for "
            f"(its task gates judge it, not a raw cosine)"))
    return metrics


def evaluate_thresholds(metrics: Mapping[str, Any], limits: Mapping[str, float]) -> list[dict[str, Any]]:
    """Every threshold with its verdict: ``{"threshold", "limit", "metric", "value", "passed",
    "reason"}``; ``passed`` is None when the metric cannot be computed for this model (then
    ``reason`` says why) — never silently dropped."""
    metrics = derived_metrics(metrics)
    verdicts, why_not = [], metrics.get("not_applicable") or {}
    if metrics.get("nonfinite"):  # always a failure, whatever the thresholds
        where = metrics.get("nonfinite_where") or f"{metrics['nonfinite']} values"
        verdicts.append({"threshold": "finite_outputs", "limit": 0, "metric": "nonfinite",
                         "value": metrics["nonfinite"], "passed": False, "reason": None,
                         "sentence": f"NaN/inf outputs ({where})"})
    for name, limit in limits.items():
        metric, kind, why = GATES.get(name, (name, "min" if name.startswith("min_") else "max", "unknown metric"))
        value = metrics.get(metric)
        why = why_not.get(metric) or why
        slack = 1e-9 * max(1.0, abs(limit))  # (0.95 - 0.90) * 100 is 5.000000000000004, not above 5
        passed = None if value is None else (value >= limit - slack if kind == "min" else value <= limit + slack)
        verdicts.append({"threshold": name, "limit": limit, "metric": metric, "value": value,
                         "passed": passed, "reason": None if value is not None else f"not applicable: {why}"})
    return verdicts


def check_thresholds(metrics: Mapping[str, Any], limits: Mapping[str, float]) -> list[str]:
    """The thresholds an artifact misses, as readable sentences (empty: it passes)."""
    return [v.get("sentence") or f"{v['threshold'].replace('_', ' ')} {v['limit']:g} missed: got {v['value']:.6g}"
            for v in evaluate_thresholds(metrics, limits) if v["passed"] is False]
