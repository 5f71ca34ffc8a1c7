"""The command line: thin Invoke tasks (their docstrings are the help), one call into the library.

The same collection serves ``invoke <task>`` in a checkout (tasks.py imports ``ns``) and the
installed ``edgekiln <task>`` program. User errors print one line and exit with the error kind's
code (edgekiln.errors); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import functools
import json as _json
import os
import signal
import sys
import traceback
from pathlib import Path

from invoke import Collection, Exit, Program, Task, task
from rich.console import Console
from rich.markup import escape

from . import __version__
from .errors import EdgekilnError, Interrupted

err = Console(stderr=True, highlight=False, soft_wrap=True)
# a pipe gets 120 columns unless COLUMNS says otherwise (a terminal: its own width)
console = Console(highlight=False, soft_wrap=True,
                  width=None if sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit() else 120)


def _sigterm(signum, frame):  # a kill mid-build cleans up like Ctrl-C does
    raise KeyboardInterrupt


def guarded(fn):
    """User errors → one line + exit code; Ctrl-C/kill → 'nothing published' + 130."""

    @functools.wraps(fn)
    def wrapper(c, *args, **kwargs):
        debug = kwargs.get("debug", False)
        previous = signal.signal(signal.SIGTERM, _sigterm)
        try:
            return fn(c, *args, **kwargs)
        except EdgekilnError as exc:
            if debug:
                traceback.print_exc()
            # control characters (an ESC in a file or tensor name) never reach the terminal
            line = "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in exc.line())
            err.print(f"[bold red]error:[/] {escape(line)}", markup=True)
            if kwargs.get("json") and not exc.json_done:  # a script asked for JSON: it gets JSON on failure too
                console.print_json(data={"error": exc.to_json()})
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            if debug:
                traceback.print_exc()
            err.print("[bold red]interrupted:[/] nothing was published; the next run starts clean", markup=True)
            raise Exit(code=Interrupted.exit_code) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


BUILD_HELP = {
    "model": "model file (.onnx, TorchScript .pt, torch.export .pt2, state dict .pth with --arch) or SavedModel folder",
    "target": "target name(s), comma-separated (see `edgekiln targets`)",
    "precision": "precision(s), comma-separated, e.g. fp32,int8 (default: the target's default)",
    "jobs": "build this many artifacts in parallel",
    "calib": "folder of calibration images (needed for int8)",
    "val": "folder of validation images (labelled: a folder per class or labels.csv); default: --calib",
    "input_shape": "input shape, e.g. 1,3,224,224 (default: what the model says)",
    "layout": "nchw or nhwc (default nchw; nhwc for TensorFlow models)",
    "mean": "per-channel mean subtracted after scaling, e.g. 0.485,0.456,0.406",
    "std": "per-channel std divided after the mean, e.g. 0.229,0.224,0.225",
    "bgr": "the model takes BGR channel order",
    "pixel_scale": "pixels are divided by this first (255: 0..1 input, default; 1: 0..255 input)",
    "resize": "crop (shorter side to size/0.875, centre crop), stretch, or letterbox (YOLO: fit, centre, pad); "
              "default: letterbox when the model is a detector, else crop",
    "pad": "letterbox fill value 0-255 (default 114)",
    "task": "what the outputs are: classify, detect, segment, map or raw (default: from the model's metadata/shapes)",
    "head": "detector head: yolov5, yolov8, yolox, ssd or e2e (implies --task detect)",
    "task_param": "decoding parameter key=value (repeatable): score_threshold, nms_iou, match_iou, max_det, "
                  "threshold (maps), min_region_pixels, first_class (ssd); the gate's band, map_score_threshold, "
                  "augment_min_boxes, augment_max_images, augment_mosaic",
    "input_name": "name of the image input (default: the model's first input)",
    "dynamic_batch": "export with a dynamic batch dimension",
    "spec": "TOML file with the input spec (default: <model>.edgekiln.toml beside the model)",
    "arch": "architecture of a state dict: built-in name (mobilenet_v2), file.py:factory or module:factory",
    "trust_model": "the model file may run code: a whole pickled nn.Module, a Keras Lambda layer, a SavedModel "
                   "that uses file/process ops (only for files you trust; docs/trust.md); "
                   "--arch FILE.py:fn makes a pickled module's class importable",
    "trust_pickle": "the same as --trust-model (its older name)",
    "opset": "ONNX opset of the PyTorch export (default 17)",
    "simplify": "onnxslim (default), onnxsim or none",
    "max_images": "use at most this many calibration/validation images (default 200)",
    "option": "target option key=value (repeatable; see the target's file), e.g. quant_activation=int8, "
              "device=NPU, bake_preprocessing=true",
    "threshold": "threshold override [precision.]metric=value (repeatable), e.g. int8.min_top1_agreement=0.9",
    "max_drop": "shorthand for --threshold int8.max_accuracy_drop=X: allowed top-1 accuracy drop in points "
                "(needs labelled --val; intel aims at it with NNCF's accuracy control)",
    "jetpack": "jetson: the JetPack the engine is for (a row of targets/_tensorrt.toml; default 6.1); "
               "shorthand for --option jetpack=X",
    "recover": "int8 that misses its thresholds: keep its most sensitive layers float until it passes (budget: "
               "option recover_max_float_layers); shorthand for --option recover=true",
    "version": "version folder name (default: derived from the inputs' content)",
    "name": "model name in the output tree (default: the model file's name)",
    "out": "output root (default ./dist)",
    "runner": "auto (Docker when an engine answers, else local), docker or local",
    "base_image": "base image of the Docker images built for this build (default: images/_bases.toml); or "
                  "image=ref pairs, comma-separated (e.g. tflite=X,arm-validate=Y)",
    "platform": "linux/arm64: also validate each Arm target's artifacts on arm64 (on x86 under QEMU user mode, "
                ".ci/arm64-up.sh; conversion stays here); another platform: run the Docker steps there",
    "emulate_cpu": "the Arm core QEMU emulates for --platform linux/arm64 (default: the target's board, "
                   "rpi: cortex-a72; e.g. cortex-a76 for a Pi 5)",
    "docker_host": "Docker host for the conversion, e.g. ssh://user@jetson or tcp://gpu-box:2376",
    "device": "jetson/x86-gpu: then finish the engine on this device: ssh://user@host[:port] (its python3; "
              "?python=PATH, or ?docker for the device image), or its Docker engine docker+ssh://user@host "
              "(docker+tcp://, docker+unix://); see docs/tensorrt.md",
    "broker": "build on edgekiln workers through this broker, e.g. redis://:PASSWORD@box:6379/0 (default: "
              "EDGEKILN_BROKER; none: here); see docs/workers.md",
    "store": "with --broker: the shared store, a folder every worker reaches or s3://bucket/prefix (default: EDGEKILN_STORE)",
    "queue_wait": "with --broker: seconds to wait for a worker on a queue before failing (default: EDGEKILN_QUEUE_WAIT or 60)",
    "config": "removed (it read a per-target [docker.hosts] map): --docker-host for one remote engine, "
              "edgekiln worker and --broker for several machines (docs/workers.md)",
    "dry_run": "print the plan and the exact commands (as commands.sh will hold them); run nothing",
    "json": "print the result as JSON on stdout",
    "keep_job": "keep the job folder after a successful build",
    "all_or_nothing": "publish nothing when any artifact fails (default: publish the ones that passed; the exit "
                      "code still says a failure)",
    "debug": "show tracebacks",
}
REQUEST_KEYS = ("model", "target", "precision", "calib", "val", "input_shape", "layout", "mean", "std", "bgr",
                "pixel_scale", "resize", "input_name", "dynamic_batch", "spec", "arch", "trust_pickle", "trust_model",
                "opset", "simplify", "max_images", "option", "threshold", "max_drop", "jetpack", "version", "name", "out",
                "task", "head", "task_param", "pad", "recover")


def _arm_validation(request, platform, emulate_cpu, runner):
    """``--platform linux/arm64``: the Arm validation of the request (convert steps stay on this
    machine); returns the request and the platform left for the Docker steps (None then)."""
    import dataclasses

    from .emulation import check_cpu
    from .errors import UsageError

    if emulate_cpu and platform != "linux/arm64":
        raise UsageError("--emulate-cpu needs --platform linux/arm64", "add --platform linux/arm64")
    if platform != "linux/arm64":
        return request, platform
    if runner == "local":
        raise UsageError("validation on linux/arm64 needs the Docker runner", "drop --runner local")
    return dataclasses.replace(request, validate_on=platform,
                               emulate_cpu=check_cpu(emulate_cpu) if emulate_cpu else None), None


class _BuildTask(Task):
    """Long flags only (``--input-shape`` …), except ``-j`` for ``--jobs``."""

    def get_arguments(self, ignore_unknown_help=None):
        args = super().get_arguments(ignore_unknown_help)
        for arg in args:
            if arg.name == "jobs":
                arg.names = ("jobs", "j")
        return args


@task(klass=_BuildTask, auto_shortflags=False, iterable=["option", "threshold", "task_param"], help=BUILD_HELP)
@guarded
def build(c, model=None, target="onnx", precision="", jobs=1, calib=None, val=None, input_shape=None,
          layout=None, mean=None, std=None, bgr=False, pixel_scale=None, resize=None, input_name=None,
          dynamic_batch=False, spec=None, arch=None, trust_pickle=False, trust_model=False, opset=17,
          simplify="onnxslim", max_images=200, option=None, threshold=None, max_drop=None, jetpack=None,
          version=None, name=None, out="dist",
          runner="auto", docker_host=None, base_image=None, platform=None, config=None, dry_run=False,
          json=False, keep_job=False, debug=False, task=None, head=None, task_param=None, pad=None,
          all_or_nothing=False, recover=False, emulate_cpu=None, device=None, broker=None, store=None,
          queue_wait=None):
    """Convert a model for one or more targets, validate every artifact, publish it under --out."""
    from .build import dry_run as plan_only, run_build
    from .request import make_request
    from .runners import LazyRunners, runner_factory
    from .ui import feed_lines, make_ui, result_json, summary_notes, summary_table, task_lines, where_lines

    values = dict(locals())
    if config is not None:
        from .errors import UsageError

        raise UsageError("--config (a per-target [docker.hosts] map) is gone: edgekiln has no scheduler of its own",
                         "--docker-host for one remote engine; edgekiln worker and --broker for several (docs/workers.md)")
    request = make_request(**{k: values[k] for k in REQUEST_KEYS})
    if device:
        from .device import device_for

        device_for(device)  # a bad --device is one line before the build, not after it
    request, platform = _arm_validation(request, platform, emulate_cpu, runner)
    jobs = _jobs(jobs)
    ui = make_ui(json or dry_run)
    runner_for = LazyRunners(lambda: runner_factory(runner, docker_host, base_image=base_image, platform=platform,
                                                    on_note=ui.warn), ui.stage)
    if dry_run:
        return _print_dry_run(plan_only(request, runner_for), json)
    from .dist_driver import remote_for

    remote = remote_for(broker, store, queue_wait)
    ui.stage(f"{request.model_name} ({request.source_format}) → {', '.join(request.targets)}")
    try:
        if remote is not None:  # the workers build; planning and publishing stay here
            result = remote.build_many([request], ui)[0]
            if isinstance(result, Exception) or (all_or_nothing and result.error is not None):
                raise result if isinstance(result, Exception) else result.error
        else:
            result = run_build(request, ui, runner_for, jobs=jobs, keep_job=keep_job,
                               all_or_nothing=all_or_nothing)
    finally:
        ui.close()
    if device:  # the deferred TensorRT bundles, finished on the device (edgekiln.device)
        from .device import finish_results

        finish_results(result, device, lambda line: err.print(line, markup=False))
    if json:
        data = result_json(result)
        if result.error is not None:  # the artifacts that passed were published; the exit code says the rest
            data["error"] = result.error.to_json()
            result.error.json_done = True
        console.print_json(data=data)
        if result.error is not None:
            raise result.error
        return
    console.print(summary_table(result))
    if result.artifacts:
        console.print(f"published under {result.artifacts[0].path.parent.parent}", markup=False)
    for line in summary_notes(result) + feed_lines(result) + task_lines(result) + where_lines(result):
        console.print(line, markup=False)
    if any(a.manifest.get("validation", {}).get("inputs") == "synthetic" for a in result.artifacts):
        from .build import SYNTHETIC

        console.print(f"[yellow]warning:[/] {SYNTHETIC}")
    for art in result.artifacts:
        if art.manifest.get("status") == "pending-device":
            console.print(f"[yellow]deferred: bundle ready[/] {art.target}/{art.precision}: "
                          f"{escape(art.manifest['deferred']['reason'])}; on the device: edgekiln finish {art.path}")
        for note in art.manifest.get("not_executed", []):
            console.print(f"[yellow]not executed[/] {art.target}/{art.precision}: {escape(str(note))}")
    if result.error is not None:
        raise result.error  # after the summary: one line and the failed kind's exit code
    return result


def _jobs(value) -> int:
    from .errors import UsageError

    try:
        jobs = int(value)
    except (TypeError, ValueError):
        jobs = 0
    if jobs < 1:
        raise UsageError(f"--jobs {value!r} is not a whole number >= 1", "e.g. --jobs 2")
    return jobs


def _print_dry_run(info: dict, as_json: bool) -> None:
    if as_json:
        console.print_json(data=info)
        return
    console.print(f"[bold]plan[/] {info['model']} ({info['format']}) version {info['version']}; nothing runs")
    console.print(f"input spec: {_json.dumps(info['input'])}", markup=False)
    console.print("commands (from the job folder; the same lines as build/commands.sh):", markup=False)
    for s in info["steps"]:
        console.print(f"  {s['id']:<28} {s['kind']:<9} {s['runner']}:{s['image']:<9} {s['platform']:<12} "
                      f"{s['template']}", markup=False)
        console.print(f"      {s['command']}", markup=False)
    for a in info["artifacts"]:
        console.print(f"  → {a['publish_to']}  thresholds {_json.dumps(a['thresholds'])}", markup=False)


@task(help={"json": "print as JSON"})
@guarded
def targets(c, json=False):
    """List the targets: image, precisions, and whether they can build on this host (and why not)."""
    from .emulation import arm_validation_here
    from .targets import all_targets, host_support

    rows = []
    for t in all_targets().values():
        ok, why = host_support(t)
        arm_ok, arm_why = arm_validation_here(t)
        rows.append({"name": t.name, "runtime": t.runtime, "image": t.image, "platform": t.platform,
                     "precisions": list(t.precisions), "default": list(t.default_precisions),
                     "runs_here": ok, "why": why, "description": t.description,
                     "arm_validation": arm_ok, "arm_validation_why": arm_why,
                     "arm_target": bool(getattr(t, "emulation", None))})
    if json:
        console.print_json(data=rows)
        return
    for line in targets_text(rows):  # the reasons word-wrapped to the terminal
        console.print(line, markup=False, soft_wrap=False) if isinstance(line, str) else console.print(line)


def targets_text(rows: list[dict]) -> list:
    """The targets table (short cells: fits 80 columns), then what each target is and the reasons
    behind every "no", one line per distinct reason."""
    from rich.table import Table

    from .ui import compact_table

    table = compact_table("edgekiln targets")
    for col in ("target", "runtime", "image", "precisions", "here", "Arm check"):
        table.add_column(col, no_wrap=col != "precisions")
    for r in rows:
        arm = "–" if not r["arm_target"] else (r["arm_validation_why"].split()[0].strip(":") if r["arm_validation"]
                                                else "no")
        table.add_row(r["name"], r["runtime"], r["image"],
                      " ".join(p + ("*" if p in r["default"] else "") for p in r["precisions"]),
                      "yes" if r["runs_here"] else "no", arm)
    described = Table.grid(padding=(0, 2))  # a description wraps within its own column
    described.add_column(no_wrap=True)
    described.add_column()
    for r in rows:
        described.add_row(r["name"], r["description"])
    lines: list = [table, "* the default precision(s)", "", described, ""]
    reasons: dict[str, list[str]] = {}
    for r in rows:
        if not r["runs_here"]:
            reasons.setdefault(f"not here: {r['why']}", []).append(r["name"])
        if r["arm_target"]:
            reasons.setdefault(f"Arm check (--platform linux/arm64): {r['arm_validation_why']}", []).append(r["name"])
    lines += [f"{', '.join(names)}: {why}" for why, names in reasons.items()]
    if any(not r["arm_target"] for r in rows):
        lines.append("Arm check –: not an Arm target (its target file has no emulation table)")
    return lines


@task(help={"target": "target(s), comma-separated (default onnx)",
            "precision": "precision(s), comma-separated (default fp32,int8)",
            "data_dir": "copy the demo's model and photos into this folder first, and build from there",
            "out": "output root (default ./dist)", "runner": "auto, docker or local",
            "json": "print the result as JSON", "debug": "show tracebacks"})
@guarded
def demo(c, target="onnx", precision="fp32,int8", data_dir=None, out="dist", runner="auto", json=False,
         debug=False):
    """Build the real ImageNet MobileNetV2, calibrated and validated on real photos, for any target."""
    from .demo import as_command, demo_build_args, demo_data

    data = demo_data(Path(data_dir) if data_dir else None)
    args = demo_build_args(data, target, precision, out)
    if not json:
        err.print(f"demo data: model {data['model']}, photos {data['calib']} (labelled), "
                  f"held-out {data['val']} (their mirror images)", markup=False, highlight=False)
        err.print(f"the same build by hand: {as_command(args)}", markup=False, highlight=False)
    return build.body(c, runner=runner, json=json, debug=debug, **args)


@task(help={"out": "output root whose job folders to clean (default ./dist)",
            "older_than": "remove job folders older than this many days",
            "failed": "remove every failed build's job folder",
            "dry_run": "list what would be removed; remove nothing",
            "json": "print as JSON", "debug": "show tracebacks"})
@guarded
def clean(c, out="dist", older_than=None, failed=False, dry_run=False, json=False, debug=False):
    """Remove job folders under <out>/.edgekiln/jobs (all but running builds', unless narrowed)."""
    from .errors import UsageError
    from .store import prune_jobs

    try:
        days = None if older_than is None else float(older_than)
    except ValueError:
        raise UsageError(f"--older-than {older_than!r} is not a number of days", "e.g. --older-than 7") from None
    removed = prune_jobs(Path(out), older_than_days=days, failed=failed, dry_run=dry_run)
    if json:
        console.print_json(data=[{"path": str(j.path), "state": j.state, "age_days": j.age_days,
                                  "size_bytes": j.size_bytes} for j in removed])
        return
    verb = "would remove" if dry_run else "removed"
    for j in removed:
        console.print(f"{verb} {j.path} ({j.state}, {j.age_days:g} days, {j.size_bytes / 1e6:.1f} MB)", markup=False)
    total = sum(j.size_bytes for j in removed) / 1e6
    console.print(f"{verb} {len(removed)} job folder(s), {total:.1f} MB", markup=False)


@task(help={
    "build": "build the images of these targets or images (comma-separated, or 'all')",
    "base_image": "base image for every image built or listed (default: images/_bases.toml)",
    "platform": "platform to build for (default: the target's; for an image: the engine's)",
    "docker_host": "Docker engine (unix://, ssh://, tcp:// or a context); default DOCKER_HOST",
    "rebuild": "build even when the image's tag exists",
    "smoke": "run each built image's smoke test inside it",
    "json": "print as JSON", "debug": "show tracebacks"})
@guarded
def images(c, build="", base_image=None, platform=None, docker_host=None, rebuild=False, smoke=False,
           json=False, debug=False):
    """List every image for each platform it can be built for (the targets that use it, tag, built?
    and the built image's own platform, size, base), or build those a target needs."""
    from json import dumps  # `json` is the flag here

    from rich.table import Table

    from .docker import DockerEngine
    from .images import build_images, list_images
    from .targets import all_targets
    from .ui import fmt_size

    uses = {t.name: (t.image, t.platform) for t in all_targets().values()}
    engine = DockerEngine(docker_host)
    if build:
        done = build_images(engine, build, uses, base=base_image, platform=platform,
                            rebuild=rebuild, smoke=smoke,
                            on_line=None if json else (lambda line: console.print(line, markup=False)))
        for row in [] if json else done:
            smoke_line = f" smoke ok: {dumps(row['smoke'])}" if smoke else ""
            console.print(f"{'built' if row['built_now'] else 'up to date'}: {row['tag']} "
                          f"({row['platform']}){smoke_line}", markup=False)
        if json:
            console.print_json(data=done)
        return
    rows = [r for r in list_images(engine, base=base_image) if not platform or r.platform == platform]
    if json:
        console.print_json(data=[r.__dict__ for r in rows])
        return
    used_by: dict[tuple, list[str]] = {}
    for name, key in uses.items():
        used_by.setdefault(key, []).append(name)
    where = engine.where if rows and rows[0].built is not None else "no Docker engine answers"
    bases = sorted({r.base for r in rows})  # one base for all: said once, in the title
    table = Table(title=f"edgekiln images ({where}" + (f"; base {bases[0]})" if len(bases) == 1 else ")"))
    cols = ("image", "platform", "targets", "tag", "built (as)", "size", "local venv") + (
        ("base",) if len(bases) > 1 else ())
    for col in cols:
        table.add_column(col, no_wrap=col != "base", overflow="fold")
    for r in rows:
        built = "-" if r.built is None else (f"yes ({r.built_platform})" if r.built else "no")
        cells = [r.name, r.platform, ", ".join(used_by.get((r.name, r.platform), [])) or "-", r.tag,
                 built, fmt_size(r.size), "yes" if r.local else "no"]
        table.add_row(*cells, *([r.base] if len(bases) > 1 else []))
    console.print(table)


@task(positional=["folder"], help={"folder": "a pending-device artifact folder, e.g. dist/<model>/<version>/jetson/fp16",
            "python": "the Python that runs the device scripts (it must import tensorrt, e.g. /usr/bin/python3 "
                      "on a Jetson; default: the one running edgekiln); or use device/build_engine.sh (Docker)",
            "device": "run the steps on this device instead of here: ssh://user@host[:port] (?python=PATH, "
                      "?docker), or its Docker engine docker+ssh://user@host; see docs/tensorrt.md",
            "json": "print the completed manifest as JSON", "debug": "show tracebacks"})
@guarded
def finish(c, folder=None, python=None, json=False, debug=False, device=None):
    """On the device (or --device ssh://...): build and check the TensorRT engine of a deferred bundle, completing it in place."""
    from .deferred import finish as finish_bundle
    from .errors import UsageError

    if not folder:
        raise UsageError("no artifact folder given", "e.g. edgekiln finish dist/<model>/<version>/jetson/fp16")
    from .device import device_for

    manifest = finish_bundle(Path(folder), python=python, device=device_for(device))
    if json:
        console.print_json(data=manifest)
        return
    done = manifest["finished"]
    console.print(f"finished {folder}: TensorRT {done['tensorrt']}, cosine(min) "
                  f"{done['check']['metrics']['cosine']:.5f}, median {done['check']['latency_ms']['median']:.2f} ms "
                  f"(by {done['by']})", markup=False)


RELEASE_HELP = {
    "file": "the release matrix file (see examples/release.toml)",
    "out": "release root: the release goes to <out>/<name>-<version> (default ./releases)",
    "dist": "build store the entries are built into and cached in (default ./dist)",
    "check": "then rebuild everything from scratch in a temporary root and compare every file",
    "jobs": "build this many precisions of a model × target in parallel",
    "runner": "auto (Docker when an engine answers, else local), docker or local",
    "docker_host": "Docker host for the conversions, e.g. ssh://user@jetson",
    "broker": BUILD_HELP["broker"],
    "store": BUILD_HELP["store"],
    "queue_wait": BUILD_HELP["queue_wait"],
    "shard": "I/N: build only every N-th entry (from the I-th, in the file's order) into --store; no release "
             "(a CI matrix job; then --assemble)",
    "assemble": "package the release from the entries in --store (after every --shard ran); builds nothing",
    "json": "print the result as JSON on stdout",
    "debug": "show tracebacks",
}


@task(klass=_BuildTask, auto_shortflags=False, help=RELEASE_HELP)
@guarded
def release(c, file, out="releases", dist="dist", check=False, jobs=1, runner="auto", docker_host=None,
            json=False, debug=False, broker=None, store=None, queue_wait=None, shard=None, assemble=False):
    """Build every entry of a release file (cached), package it reproducibly into <out>/<name>-<version>."""
    from .matrix import load_matrix
    from .release import release as make_release
    from .release_check import check as check_release
    from .runners import LazyRunners, runner_factory
    from .request import check_out
    from .ui import make_ui

    matrix = load_matrix(file)
    out, dist, jobs = check_out(out), check_out(dist, "--dist"), _jobs(jobs)
    from .dist_driver import Remote, remote_for
    from .dist_shard import build_shard, parse_shard, print_shard

    if shard or assemble:  # a CI matrix: shards build into the shared store, --assemble packages
        from .errors import UsageError

        store = store or os.environ.get("EDGEKILN_STORE")
        if (shard and assemble) or broker or check or not store:
            raise UsageError("--shard I/N or --assemble, each with --store (and without --broker or --check)",
                             "e.g. release R --shard 1/4 --store /shared/ek in each CI job, then --assemble")
    part = parse_shard(shard) if shard else None
    remote = None if shard else Remote(None, store, None) if assemble else remote_for(broker, store, queue_wait)
    ui = make_ui(json)
    runner_for = LazyRunners(lambda: runner_factory(runner, docker_host, on_note=ui.warn), ui.stage)
    if part:
        try:
            done = build_shard(matrix, Path(dist), store, part, ui, runner_for, jobs)
        finally:
            ui.close()
        return print_shard(console, done, json)
    try:
        if check:  # with --broker: released through the workers, rebuilt here
            result, rows = check_release(matrix, Path(out), Path(dist), ui, runner_for, jobs, remote)
        else:
            result, rows = make_release(matrix, Path(out), Path(dist), ui, runner_for, jobs, remote), None
    finally:
        ui.close()
    from .release_view import print_release

    print_release(console, result, rows, json)


@task(help={"path": "a release folder <out>/<name>-<version>", "json": "print as JSON", "debug": "show tracebacks"})
@guarded
def verify(c, path, json=False, debug=False):
    """Re-hash a release and re-check every manifest and archive; non-zero exit on any change."""
    from .release_view import print_verify

    print_verify(console, Path(path), json)


@task(help={"path": "a published build: dist/<model>/<version>",
            "out": "folder for report.html and report.md (default reports/<model>-<version>)",
            "debug": "show tracebacks"})
@guarded
def report(c, path, out=None, debug=False):
    """Write report.html (self-contained, offline) and report.md for one published build."""
    from .report import report_build

    version_dir = Path(path).resolve()
    html_path, md_path = report_build(version_dir, Path(out or f"reports/{version_dir.parent.name}-{version_dir.name}"))
    console.print(f"wrote {html_path} and {md_path}", markup=False)


@task(help={
    "broker": "the broker to serve, e.g. redis://:PASSWORD@box:6379/0 (default: EDGEKILN_BROKER)",
    "store": "the shared store: a folder the driver and every worker reach, or s3://bucket/prefix "
             "(default: EDGEKILN_STORE)",
    "queues": "queues to serve, comma-separated: amd64, arm64, gpu, ... (default: this machine's architecture, "
              "and arm64 where the Docker runner can emulate it)",
    "concurrency": "chains built at once on this machine (default 1)",
    "name": "this worker's name (default edgekiln-<pid>@<hostname>)",
    "work": "folder for the worker's input cache and build store (default ~/.cache/edgekiln/worker/<name>)",
    "runner": "auto (Docker when an engine answers, else local), docker or local",
    "docker_host": "the Docker engine this worker drives (default DOCKER_HOST)",
    "base_image": BUILD_HELP["base_image"], "debug": "show tracebacks"})
@guarded
def worker(c, broker=None, store=None, queues=None, concurrency=1, name=None, work=None, runner="auto",
           docker_host=None, base_image=None, debug=False):
    """Serve build chains sent through a broker (`build`/`release --broker`); see docs/workers.md."""
    from .dist import broker_url, serve
    from .errors import UsageError

    url = broker_url(broker)
    if not url:
        raise UsageError("edgekiln worker needs a broker", "pass --broker redis://HOST:6379/0 or set EDGEKILN_BROKER")
    serve(url, store or os.environ.get("EDGEKILN_STORE"), queues=queues, runner=runner, docker_host=docker_host,
          base_image=base_image, concurrency=_concurrency(concurrency), name=name, work=work,
          on_line=lambda line: err.print(line, markup=False))


def _concurrency(value) -> int:
    from .errors import UsageError

    if not str(value).isdigit() or int(value) < 1:
        raise UsageError(f"--concurrency {value!r} is not a whole number >= 1", "e.g. --concurrency 2")
    return int(value)


ns = Collection()
for _t in (build, targets, images, demo, clean, finish, release, verify, report, worker):
    ns.add_task(_t)


class EdgekilnProgram(Program):
    """Invoke's Program with edgekiln's help: ``edgekiln build --help``/``-h`` and ``edgekiln help
    build`` print the task's help; ``edgekiln --help`` lists the commands and edgekiln's own flags
    only (Invoke's shell-runner flags mean nothing here)."""

    def run(self, argv=None, exit=True):
        argv = list(sys.argv if argv is None else (argv.split() if isinstance(argv, str) else argv))
        words = argv[1:]
        names = set(self.namespace.task_names) if self.namespace else set()
        if words[:1] == ["help"]:
            argv = [argv[0], "--help"] + words[1:2]
        elif words and words[0] in names and any(w in ("-h", "--help") for w in words[1:]):
            argv = [argv[0], "--help", words[0]]
        return super().run(argv, exit)

    def parse_tasks(self):
        """A flag whose value Invoke cannot cast (``--jobs abc``, ``--opset x``): one line, exit 2."""
        try:
            return super().parse_tasks()
        except ValueError as exc:
            import re

            value = (re.search(r"'(.*)'$", str(exc)) or [None, None])[1]
            words = self.core.unparsed if self.core else []
            flag = next((words[i - 1] for i in range(1, len(words)) if words[i] == value
                         and words[i - 1].startswith("-")), "a flag")
            err.print(f"error: {flag} {value!r} is not a whole number — e.g. {flag} 2", markup=False)
            raise Exit(code=2) from None

    def print_help(self) -> None:
        print(f"Usage: {self.binary} <command> [--options]   ({self.binary} help <command> for its options)")
        print()
        print("Commands:")
        for name in self.namespace.task_names:
            doc = (self.namespace[name].__doc__ or "").strip().splitlines()[0]
            print(f"  {name:<10} {doc}")
        print()
        print("Options:")
        print("  -h, --help [COMMAND]   show this help, or a command's")
        print("  -V, --version          show the version")


program = EdgekilnProgram(namespace=ns, version=__version__, name="edgekiln", binary="edgekiln")


def main() -> None:  # the installed `edgekiln` command
    try:
        program.run()
    except BrokenPipeError:  # `edgekiln build --help | head`
        sys.stderr.close()


if __name__ == "__main__":  # pragma: no cover
    main()
