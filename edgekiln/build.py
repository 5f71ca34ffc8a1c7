"""One build: plan → render → run (local or Docker) → validate → publish.

This module only orchestrates; each stage lives in its own module. The UI is an object with
``stage/step_start/step_line/step_done/warn`` methods (edgekiln.ui), so the same code serves the
rich terminal display, ``--json`` and tests.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .cmd import quote
from .errors import EdgekilnError, StepFailed, ValidationFailed
from .outputs import copy_file
from .plan import Artifact, Plan, Step, evaluate_thresholds, plan_build
from .render import copy_support, render_job
from .request import BuildRequest
from .resources import data_dir
from .runners.base import Env, Job, Runner
from .store import (Location, cache_state, file_entries, location, mark_job, new_job_dir, publish,
                    sha256_file, sha256_json, sha256_tree)
from .targets import Target, all_targets, arch_formats, source_kinds, stage


@dataclass
class ArtifactResult:
    target: str
    precision: str
    status: str  # built | cached | failed
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


@dataclass
class BuildResult:
    model: str
    version: str
    artifacts: list[ArtifactResult]
    seconds: float
    runner: str
    job_dir: Path | None = None
    error: EdgekilnError | None = None  # some artifacts failed (the others were published)


# ---------------------------------------------------------------- keys


def support_files() -> list[Path]:
    root = data_dir("converters")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".jinja"
                  and p.name != "README.md" and "__pycache__" not in p.parts)


def recipe_hash(paths: list[Path]) -> str:
    return sha256_json([[p.name, sha256_file(p)] for p in sorted(set(paths))])


def input_hashes(request: BuildRequest, arch_file: Path | None) -> dict[str, str | None]:
    return {
        "model": sha256_tree(request.model, "--model"),
        "calib": sha256_tree(request.calib, "--calib") if request.calib else None,
        "val": sha256_tree(request.val, "--val") if request.val else None,
        "arch": sha256_file(arch_file) if arch_file else None,
    }


def derive_version(request: BuildRequest, hashes: dict, plan: Plan) -> str:
    """Stable for the same inputs: everything that shapes the source step and the options."""
    conv = data_dir("converters")
    sources = [conv / s.template for s in plan.steps if s.kind == "source"]
    key = {
        "edgekiln": __version__, "inputs": hashes, "format": request.source_format,
        "input": request.input.to_json(), "arch": request.arch, "opset": request.opset,
        "simplify": request.simplify, "max_images": request.max_images,
        "options": dict(request.options), "thresholds": dict(request.thresholds),
        "recipes": recipe_hash(sources + support_files()),
    }
    if request.validate_on:  # only when asked for: versions without it stay what they were
        key["validate_on"] = [request.validate_on, request.emulate_cpu]
    return sha256_json(key)[:12]


def build_key(version_key: str, target: Target, artifact: Artifact, plan: Plan) -> str:
    conv, images = data_dir("converters"), data_dir("images")
    steps = plan.steps_for(artifact)
    files = [Path(target.path)] + [conv / s.template for s in steps] + support_files()
    files += [images / s.image / "requirements.txt" for s in steps]
    return sha256_json({"version": version_key, "artifact": artifact.key,
                        "thresholds": artifact.thresholds,
                        "params": [s.params for s in steps if s.kind != "source"],
                        "recipes": recipe_hash([f for f in files if f.exists()])})


def arch_file_of(request: BuildRequest, sources) -> Path | None:
    if request.source_format not in arch_formats(sources) or not request.arch:
        return None
    module = request.arch.rpartition(":")[0]
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            from .errors import UsageError
            raise UsageError(f"--arch file {path} does not exist", "give the path of the .py file that defines the model")
        return path
    return None


# ---------------------------------------------------------------- the build


@dataclass(frozen=True)
class Prepared:
    """A planned and keyed request: everything a build or a dry run needs, nothing run yet.
    The target registry is read once per build, here."""

    plan: Plan
    arch_file: Path | None
    hashes: dict
    loc: Location
    keys: dict  # artifact key -> build key
    targets: dict  # name -> Target


def prepare(request: BuildRequest) -> Prepared:
    """Plan and key a request (no environments, no conversions)."""
    from .images import image_facts
    from .isa import host

    targets, sources = all_targets(), source_kinds()
    plan = plan_build(request, targets, sources, image_facts(), host())
    arch_file = arch_file_of(request, sources)
    hashes = input_hashes(request, arch_file)
    version = request.version or derive_version(request, hashes, plan)
    loc = location(request.out, request.model_name, version)
    keys = {a.key: build_key(sha256_json([hashes, version]), targets[a.target], a, plan)
            for a in plan.artifacts}
    return Prepared(plan, arch_file, hashes, loc, keys, targets)


def dry_run(request: BuildRequest, runner_for: Callable[[Step | None], Runner]) -> dict[str, Any]:
    """What a build of ``request`` would run, exactly: the plan, each step's command as the
    runner will run it (the line ``commands.sh`` gets), the rendered scripts' names and where each
    artifact would be published. Renders into a temporary job folder that is removed again; no
    environment is made, no image built, nothing published."""
    import tempfile

    from .docker import host_platform

    prep = prepare(request)
    job_root = Path(tempfile.mkdtemp(prefix="edgekiln-dry-run-"))
    try:
        job = Job(job_root, {"model": request.model, "calib": request.calib, "val": request.val})
        render_job(prep.plan, job_root, prep.arch_file)
        steps = []
        for s in prep.plan.steps:
            runner = runner_for(s)
            env = runner.planned_env(s.image, getattr(runner, "platform", None), local_ok=s.local)
            steps.append({"id": s.id, "kind": s.kind, "image": s.image, "template": s.template,
                          # where it runs: the environment's platform (an Arm target's convert steps
                          # run on this engine's own), a local virtualenv this machine's
                          "runner": env.runner, "platform": env.platform or host_platform(), "environment": env.ref,
                          # local: byte for byte the line commands.sh gets; Docker: the same but for
                          # the job folder (made at build time), shown as <job>
                          "command": quote(runner.command(env, job, s.script)).replace(str(job_root.resolve()), "<job>")})
    finally:
        shutil.rmtree(job_root, ignore_errors=True)
    return {"model": request.model_name, "format": request.source_format, "version": prep.loc.version,
            "input": request.input.to_json(), "steps": steps,
            "artifacts": [{"target": a.target, "precision": a.precision, "files": list(a.files),
                           "publish_to": str(prep.loc.artifact_dir(a.target, a.precision)),
                           "thresholds": a.thresholds, "build_key": prep.keys[a.key]}
                          for a in prep.plan.artifacts]}


def run_build(request: BuildRequest, ui, runner_for: Callable[[Step | None], Runner],
              jobs: int = 1, keep_job: bool = False, all_or_nothing: bool = False,
              only: set[str] | None = None) -> BuildResult:
    """Build every artifact of ``request`` that is not published yet. An artifact whose steps fail
    or that misses a threshold is not published; the ones that passed are, and ``result.error``
    says what failed (its exit code is the build's). ``all_or_nothing``: any failure publishes
    nothing (raised). Nothing passed: raised, nothing published. ``only``: just these artifacts
    ("target/precision"; a worker's chain, edgekiln.dist), with the steps and ids of the whole plan."""
    start = time.monotonic()
    prep = prepare(request)
    plan, arch_file, hashes, loc, keys = prep.plan, prep.arch_file, prep.hashes, prep.loc, prep.keys
    if only is not None:
        plan = Plan(plan.steps, tuple(a for a in plan.artifacts if a.key in only))
    results: dict[str, ArtifactResult] = {}
    todo: list[Artifact] = []
    for artifact in plan.artifacts:
        state = cache_state(loc, artifact.target, artifact.precision, keys[artifact.key])
        path = loc.artifact_dir(artifact.target, artifact.precision)
        if state == "hit":
            manifest = json.loads((path / "manifest.json").read_text())
            results[artifact.key] = ArtifactResult(artifact.target, artifact.precision, "cached", path, manifest)
        else:
            todo.append(artifact)
    if not todo:
        ui.stage(f"cache hit: {request.model_name} {loc.version} is already published")
        return BuildResult(request.model_name, loc.version, [results[a.key] for a in plan.artifacts],
                           time.monotonic() - start, "none (cache hit)")

    order = [a.key for a in plan.artifacts]
    for sentence in dict.fromkeys((plan.step(a.validate_step).params.get("cpu") or {}).get("nearest") for a in todo):
        if sentence:  # a declared CPU class this machine can neither run nor emulate: said, never silent
            ui.warn(sentence)
    needed = {s for a in todo for s in (a.source_step, a.convert_step, a.validate_step, *a.elsewhere)}
    plan = Plan(tuple(s for s in plan.steps if s.id in needed), tuple(todo))
    job = Job(new_job_dir(request.out),
              {"model": request.model, "calib": request.calib, "val": request.val})
    envs: dict[tuple[str, str], Env] = {}
    fell_back: dict[str, str] = {}  # image -> why it runs in a local virtualenv instead of Docker
    timings: dict[str, float] = {}
    commands: dict[str, str] = {}

    def env_for(step: Step) -> tuple[Runner, Env]:
        runner = runner_for(step)
        key = env_key(runner, step.image)
        if key not in envs:
            label = f"env:{step.image}"
            ui.step_start(label, f"environment {step.image}")
            t0 = time.monotonic()
            said: list[str] = []  # the engine's/pip's lines go to the log; the reason of a fallback is kept

            def on_line(line: str) -> None:
                said.append(line)
                ui.step_line(label, line)

            envs[key] = runner.prepare(step.image, on_line, local_ok=step.local)
            env = envs[key]
            where = (f"local virtualenv {Path(env.ref).parent.parent}" if env.runner == "local"
                     else f"Docker image {env.ref}" + (f" on {env.host}" if env.host else ""))
            ui.step_done(label, time.monotonic() - t0, f"environment {step.image}: {where}")
            if env.runner != runner.name:  # said once per build, after every environment (fallback_warning)
                why = next((l for l in reversed(said) if "instead" in l), "the image cannot be had here")
                fell_back[step.image] = why.split("; using")[0]
        return runner, envs[key]

    def run_step(step: Step) -> None:
        runner, env = env_for(step)
        commands[step.id] = quote(runner.command(env, job, step.script))
        e = step.params.get("elsewhere") or {}
        ui.step_start(step.id, f"{step.kind} {step.target or request.source_format}"
                               f"{'/' + step.precision if step.precision else ''}"
                               + (f" on {e['label']}" + (f" (QEMU {e['qemu_cpu']})" if step.qemu else "") if e else ""))
        t0 = time.monotonic()
        runner.run(env, job, step.script, job.log_path(step.id), lambda line: ui.step_line(step.id, line))
        timings[step.id] = round(time.monotonic() - t0, 2)
        ui.step_done(step.id, timings[step.id])

    crashed: dict[str, EdgekilnError] = {}  # artifact key -> why its convert/validate step failed

    def chain(artifact: Artifact) -> None:
        try:
            run_step(plan.step(artifact.convert_step))
            run_step(plan.step(artifact.validate_step))
            for step_id in artifact.elsewhere:  # the same artifact on Arm / another CPU class, after this machine's
                run_step(plan.step(step_id))
        except EdgekilnError as exc:  # this artifact only; Ctrl-C and bugs still stop the build
            if all_or_nothing:
                raise
            crashed[artifact.key] = exc
            ui.warn(f"{artifact.key} failed: {exc.message}")

    try:
        ui.stage(f"job {job.root}")
        render_job(plan, job.root, arch_file)
        for step in plan.steps:  # environments first, one at a time (parallel steps only read them)
            env_for(step)
        if fell_back:
            ui.warn(fallback_warning(fell_back))
        for step in plan.steps:
            if step.kind == "source":
                run_step(step)
        if jobs > 1 and len(todo) > 1:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                for future in [pool.submit(chain, a) for a in todo]:
                    future.result()
        else:
            for artifact in todo:
                chain(artifact)

        failures, verdicts = {}, {}
        for artifact in todo:
            if artifact.key in crashed:
                continue
            report = read_json(job.work / artifact.work_dir / "report.json", artifact.validate_step)
            verdicts[artifact.key] = evaluate_thresholds(report.get("metrics", {}), artifact.thresholds)
            missed = [threshold_sentence(v, request) for v in verdicts[artifact.key]
                      if v["passed"] is False or (v["passed"] is None and asked_for(v, artifact, request))]
            for step_id in artifact.elsewhere:  # the same gates wherever else it was validated
                from .emulation import where_text
                _, other = elsewhere_report(job, plan, step_id, artifact)
                label = plan.step(step_id).params["elsewhere"]["label"]
                verdicts[f"{artifact.key}@{label}"] = evaluate_thresholds(other.get("metrics", {}), artifact.thresholds)
                missed += [f"on {where_text(other.get('where'))}: " + threshold_sentence(v, request)
                           for v in verdicts[f"{artifact.key}@{label}"] if v["passed"] is False]
            if missed:
                failures[artifact.key] = missed + recovery_sentence(job, artifact)
        failed = {k: [e.message] for k, e in crashed.items()}
        failed.update(failures)
        passing = [a for a in todo if a.key not in failed]
        error = None
        if failed:
            error = build_error(crashed, failures, passing, job, all_or_nothing)
            if all_or_nothing or not (passing or results):  # results: artifacts already published (cached)
                raise error

        staged = {}
        record = Record(plan, job, request, hashes, loc, envs, timings, commands, runner_for, verdicts)
        for artifact in todo:
            if artifact.key in failed:
                results[artifact.key] = ArtifactResult(artifact.target, artifact.precision, "failed",
                                                       loc.artifact_dir(artifact.target, artifact.precision),
                                                       {}, failed[artifact.key])
                continue
            folder = loc.model_dir / f".stage-{job.root.name}-{artifact.target}-{artifact.precision}"
            manifest = stage_artifact(folder, artifact, record, keys[artifact.key])
            status = "built"
            after = stage(prep.targets[artifact.target], "after_validation")  # declared by the target
            if after is not None:
                manifest, status = after(folder, artifact, prep.targets[artifact.target],
                                         plan.step(artifact.convert_step).params, job, manifest)
            staged[(artifact.target, artifact.precision)] = folder
            results[artifact.key] = ArtifactResult(artifact.target, artifact.precision, status,
                                                   loc.artifact_dir(artifact.target, artifact.precision),
                                                   manifest)
        if staged:
            publish(loc, staged)
    except BaseException:
        mark_job(job.root, "failed")
        if loc.model_dir.exists():
            for folder in loc.model_dir.glob(f".stage-{job.root.name}-*"):
                shutil.rmtree(folder, ignore_errors=True)
        ui.stage(f"nothing published; the job is kept for inspection: {job.root}")
        raise
    if error is not None:
        from .report import record_refused  # `edgekiln report` shows them beside the published ones

        record_refused(loc.version_dir, request.model_name, failed)
        mark_job(job.root, "failed")  # kept for inspection of the artifacts that failed
        ui.stage(f"published what passed; the job is kept for inspection: {job.root}")
    elif keep_job:
        mark_job(job.root, "kept")
    else:
        shutil.rmtree(job.root, ignore_errors=True)
    used = ", ".join(sorted({env.runner for env in envs.values()}))
    return BuildResult(request.model_name, loc.version, [results[k] for k in order],
                       time.monotonic() - start, used, job.root if keep_job or error else None, error)


def elsewhere_report(job: Job, plan: Plan, step_id: str, artifact: Artifact) -> tuple[str, dict]:
    """The file name and content of a validation elsewhere (``report-aarch64.json``,
    ``report-x86-64-v3.json``)."""
    name = plan.step(step_id).params["report_name"]
    return name, read_json(job.work / artifact.work_dir / name, step_id)


def recovery_sentence(job: Job, artifact: Artifact) -> list[str]:
    """A refused int8 that --recover worked on: what it reached (the best try), in one sentence."""
    path = job.work / "results" / f"{artifact.convert_step}.json"
    try:
        rec = (json.loads(path.read_text()).get("quantization") or {}).get("recovery") or {}
    except (OSError, ValueError, AttributeError):
        return []
    if not rec.get("attempted"):
        return []
    tries = len(rec.get("tries") or [])
    budget = ("time budget spent: the options recover_max_seconds / recover_time_factor" if rec.get("budget_spent")
              else "budget: the options recover_max_float_layers / recover_max_seconds")
    return [f"--recover did not reach the thresholds in {tries} tries ({budget}); best: "
            f"{len(rec.get('float_layers') or [])} {rec.get('unit') or 'layer'}(s) float, "
            f"{(rec.get('after') or {}).get('summary')}"]


def build_error(crashed: dict, failures: dict, passing: list, job: Job, all_or_nothing: bool) -> EdgekilnError:
    """One error for the artifacts that failed: the kind (and exit code) of the first step that
    failed, else ValidationFailed; the message names every failed artifact and what was published."""
    parts = [f"{k}: {e.message}" for k, e in crashed.items()]
    parts += [f"{k}: {', '.join(v)}" for k, v in failures.items()]
    done = (f"published: {', '.join(a.key for a in passing)}" if passing and not all_or_nothing
            else "nothing published")
    first = next(iter(crashed.values()), None)
    if first is not None:
        return type(first)(f"{'; '.join(parts)} ({done})", first.hint)
    return ValidationFailed(f"validation below thresholds, {done} ({'; '.join(parts)})",
                            f"inspect {job.root / 'work'}; loosen with --threshold only if the numbers are acceptable")


def fallback_warning(fell_back: dict[str, str]) -> str:
    """One line for every image of the build that runs in a local virtualenv, its reason said once
    ("image onnx: its base B is neither on the engine … nor reachable …" for onnx and torch:
    "images onnx, torch: their base B is neither …")."""
    by_why: dict[str, list[str]] = {}
    for image, why in fell_back.items():
        prefix = f"image {image}: "
        by_why.setdefault(why[len(prefix):] if why.startswith(prefix) else why, []).append(image)
    parts = []
    for why, images in by_why.items():
        many = len(images) > 1
        parts.append(f"image{'s' if many else ''} {', '.join(images)}: "
                     + (why.replace("its base", "their base", 1) if many else why))
    return (f"{'; '.join(parts)}: {'these steps run' if len(fell_back) > 1 else 'its steps run'} in a local "
            f"virtualenv. To run them in Docker, make that base available, then: "
            f"edgekiln images --build {','.join(fell_back)}")


def env_key(runner: Runner, image: str) -> tuple[str, str]:
    return (f"{runner.name}:{getattr(runner, 'host', None) or ''}", image)


@dataclass
class Record:
    """What a build ran, for the manifests."""

    plan: Plan
    job: Job
    request: BuildRequest
    hashes: dict
    loc: Location
    envs: dict
    timings: dict
    commands: dict
    runner_for: Callable
    verdicts: dict  # artifact key -> evaluate_thresholds(...)


def asked_for(verdict: dict, artifact: Artifact, request: BuildRequest) -> bool:
    """Did the user set this threshold on the command line? A gate they asked for that cannot be
    computed fails the build; a target default that cannot be computed is reported as not applicable."""
    name = verdict["threshold"]
    return name in request.thresholds or f"{artifact.precision}.{name}" in request.thresholds


def threshold_sentence(verdict: dict, request: BuildRequest) -> str:
    if verdict.get("sentence"):
        return verdict["sentence"]
    name = verdict["threshold"].replace("_", " ")
    if verdict["passed"] is None:
        return f"{name} {verdict['limit']:g} was asked for but is {verdict['reason']}"
    return f"{name} {verdict['limit']:g} missed: got {verdict['value']:.6g}"


SYNTHETIC = ("validated on seeded noise images: no --val or --calib was given, so parity is checked "
             "but top-1 agreement says little; pass --val with real images")


def read_json(path: Path, step_id: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise StepFailed(f"step {step_id} did not write {path.name}", f"see its log in {path.parent}") from None


def stage_artifact(folder: Path, artifact: Artifact, rec: Record, key: str) -> dict:
    """Copy an artifact and its build record into ``folder`` and write its manifest."""
    plan, job, request, hashes, loc = rec.plan, rec.job, rec.request, rec.hashes, rec.loc
    envs, timings, commands = rec.envs, rec.timings, rec.commands
    src = job.work / artifact.work_dir
    folder.mkdir(parents=True)
    for name in artifact.files:
        if not (src / name).exists():
            raise StepFailed(f"step {artifact.convert_step} did not write {name}", f"see {job.log_path(artifact.convert_step)}")
        copy_file(src / name, folder / name)  # never through a link a step planted (edgekiln.outputs)
    copy_file(src / "report.json", folder / "report.json")
    build = folder / "build"
    (build / "steps").mkdir(parents=True)
    (build / "logs").mkdir()
    steps = plan.steps_for(artifact)
    copy_support(data_dir("converters"), build,  # only the helpers this artifact's steps imported
                 [(job.root / s.script).read_text() for s in steps], [s.params for s in steps])
    results = {}
    for step in steps:
        for suffix in (".py", ".json"):
            copy_file(job.root / "steps" / f"{step.id}{suffix}", build / "steps" / f"{step.id}{suffix}")
        if job.log_path(step.id).exists():
            copy_file(job.log_path(step.id), build / "logs" / f"{step.id}.log")
        result_file = job.work / "results" / f"{step.id}.json"
        results[step.id] = json.loads(result_file.read_text()) if result_file.exists() else {}
    (build / "commands.sh").write_text(
        "#!/bin/sh\n# The exact commands of this build, run from the job directory (build/ here).\n"
        + "".join(f"{commands[s.id]}\n" for s in steps if s.id in commands))
    report = json.loads((src / "report.json").read_text())
    source_result = results.get(artifact.source_step, {})
    env_of = {}
    for step in steps:
        env = envs.get(env_key(rec.runner_for(step), step.image))
        if env:
            env_of[step.id] = {"runner": env.runner, "image": env.image, "lock_sha256": env.lock_hash,
                               "ref": env.ref, "host": env.host, "platform": env.platform}
    manifest = {
        "schema": 1,
        "edgekiln": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": request.model_name, "file": str(request.model), "format": request.source_format,
                  "sha256": hashes["model"]},
        "version": loc.version,
        "target": artifact.target,
        "precision": artifact.precision,
        "build_key": key,
        "files": file_entries(folder, artifact.files),
        "input_spec": source_result.get("input_spec", request.input.to_json()),
        "feed": report.get("feed"),
        "task": source_result.get("task"),  # what the outputs are and how they were decoded
        # int8 recovery (converters/ekit/recover.py): the layers kept float, their sensitivity, MAC share
        "recovery": (results.get(artifact.convert_step, {}).get("quantization") or {}).get("recovery"),
        "io": report.get("io"),
        "validation": {
            "passed": True,
            "inputs": source_result.get("inputs"),
            "images": source_result.get("n"),
            "skipped": source_result.get("skipped", []),
            "metrics": report.get("metrics"),
            "thresholds": artifact.thresholds,
            "gates": rec.verdicts.get(artifact.key, []),
            "latency_ms": report.get("latency_ms"),
            "size_bytes": report.get("size_bytes"),
            "runtime": report.get("runtime"),
        },
        "data": {"calibration": {"path": str(request.calib), "sha256": hashes["calib"]} if request.calib else None,
                 "validation": {"path": str(request.val), "sha256": hashes["val"]} if request.val else None,
                 "arch": {"ref": request.arch, "sha256": hashes["arch"]} if request.arch else None},
        "steps": [{"id": s.id, "kind": s.kind, "template": s.template, "image": s.image,
                   "script": f"build/steps/{s.id}.py", "params": f"build/steps/{s.id}.json",
                   "command": commands.get(s.id), "seconds": timings.get(s.id),
                   "environment": env_of.get(s.id),
                   "tool_versions": results.get(s.id, {}).get("versions", {})}
                  for s in steps],
        "notes": list(dict.fromkeys(  # each note once, in order
            ([SYNTHETIC] if source_result.get("inputs") == "synthetic" else [])
            + [n for s in steps for n in results.get(s.id, {}).get("notes", [])] + report.get("notes", [])
            + [f"{v['threshold']}: {v['reason']}" for v in rec.verdicts.get(artifact.key, [])
               if v["passed"] is None and "not the task this metric is for" not in v["reason"]])),
        "not_executed": report.get("not_executed", []),
    }
    manifest["validation"]["where"] = report.get("where")
    for step_id in artifact.elsewhere:  # the same artifact validated on Arm / on another CPU class
        from .emulation import arm_validation_record
        name, other = elsewhere_report(job, plan, step_id, artifact)
        copy_file(src / name, folder / name)
        e = plan.step(step_id).params["elsewhere"]
        manifest[e["key"]] = arm_validation_record(other, rec.verdicts.get(f"{artifact.key}@{e['label']}", []),
                                                   report.get("latency_ms"))
        if e.get("cpu_class"):
            manifest[e["key"]]["where"]["cpu_class"] = e["cpu_class"]
    route = plan.step(artifact.validate_step).params.get("cpu")
    if route:  # the CPU class the artifact is declared for, and where its kernels were validated
        from .isa import cpu_record, cpu_sentence
        manifest["cpu"] = cpu_record(route, report.get("where"))
        manifest["notes"].append(cpu_sentence(manifest["cpu"]))
        manifest["validation"]["where"] = dict(report.get("where") or {}, cpu_class=route["native"])
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest
