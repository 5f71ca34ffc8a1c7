"""The command line: thin Invoke tasks (their docstrings are the help), one call into the library.

The same collection serves ``invoke <task>`` in a checkout (tasks.py imports ``ns``) and the
installed ``edgekiln <task>`` program. User errors print one line and exit with the error kind's
code (edgekiln.errors); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from invoke import Collection, Exit, Program, Task, task
from rich.console import Console
from rich.markup import escape

from . import __version__
from .errors import EdgekilnError, Interrupted

err = Console(stderr=True, highlight=False, soft_wrap=True)
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)


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
            err.print(f"[bold red]error:[/] {escape(exc.line())}", markup=True)
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
    "target": "target name(s), comma-separated (see `targets`)",
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
    "resize": "crop (shorter side to size/0.875, centre crop; default) or stretch",
    "input_name": "name of the image input (default: the model's first input)",
    "dynamic_batch": "export with a dynamic batch dimension",
    "spec": "TOML file with the input spec (default: <model>.edgekiln.toml beside the model)",
    "arch": "architecture of a state dict: built-in name (mobilenet_v2), file.py:factory or module:factory",
    "trust_pickle": "allow loading a whole pickled nn.Module (runs code from the file: only for files you trust); "
                    "--arch FILE.py:fn makes the class importable",
    "opset": "ONNX opset of the PyTorch export (default 17)",
    "simplify": "onnxslim (default), onnxsim or none",
    "max_images": "use at most this many calibration/validation images (default 200)",
    "option": "target option override key=value (repeatable), e.g. quant_activation=int8",
    "threshold": "threshold override [precision.]metric=value (repeatable), e.g. int8.min_top1_agreement=0.9",
    "version": "version folder name (default: derived from the inputs' content)",
    "name": "model name in the output tree (default: the model file's name)",
    "out": "output root (default ./dist)",
    "runner": "auto (Docker when an engine answers, else local), docker or local",
    "base_image": "base image of the Docker images built for this build (default: images/_bases.toml)",
    "platform": "run the Docker steps on this platform, e.g. linux/arm64 (buildx + qemu on x86)",
    "config": "project config with a [docker.hosts] map target -> host (default: edgekiln.toml, pyproject.toml)",
    "device": "intel: deployment device CPU|GPU|NPU (recorded; validation runs on CPU here)",
    "max_drop": "allowed top-1 accuracy drop in points for int8 (needs labelled --val); intel uses NNCF accuracy control",
    "allow_drop": "publish even when --max-drop cannot be met (the manifest says so)",
    "bake_preprocessing": "intel: put layout/colour/mean/std into the IR (it then takes uint8 NHWC pixels)",
    "docker_host": "Docker host for the conversion, e.g. ssh://user@jetson or tcp://gpu-box:2376",
    "dry_run": "print the plan and the exact commands, render the scripts, run nothing",
    "json": "print the result as JSON on stdout",
    "keep_job": "keep the job folder after a successful build",
    "debug": "show tracebacks",
}


def _make_request(model, target, precision, calib, val, input_shape, layout, mean, std, bgr, pixel_scale,
                  resize, input_name, dynamic_batch, spec, arch, trust_pickle, opset, simplify, max_images,
                  option, threshold, version, name, out, flags=None):
    from .request import (BuildRequest, detect_format, input_spec, load_sidecar, parse_assignments,
                          parse_list, safe_name)
    from .errors import DataError, UsageError

    model_path = Path(model).expanduser()
    fmt = detect_format(model_path, arch=arch, trust_pickle=trust_pickle)
    sidecar_path = Path(spec) if spec else model_path.with_name(model_path.name + ".edgekiln.toml")
    if spec and not sidecar_path.is_file():
        raise UsageError(f"input spec file {spec} does not exist", "check --spec")
    sidecar = load_sidecar(sidecar_path) if sidecar_path.is_file() else None
    default_layout = "nhwc" if fmt in ("saved_model", "keras") else "nchw"
    ispec = input_spec(shape=input_shape, layout=layout, mean=mean, std=std, bgr=bgr or None,
                       scale=pixel_scale, resize=resize, name=input_name,
                       dynamic_batch=dynamic_batch or None, sidecar=sidecar, default_layout=default_layout)
    for label, folder in (("--calib", calib), ("--val", val)):
        if folder is not None:
            check_image_folder(Path(folder), label)
    if simplify not in ("onnxslim", "onnxsim", "none"):
        raise UsageError(f"--simplify {simplify!r} is unknown", "use onnxslim, onnxsim or none")
    if int(max_images) < 1:
        raise UsageError("--max-images must be at least 1", "e.g. --max-images 200")
    targets_asked = parse_list(target, "target")
    options = parse_assignments(option, "option")
    if flags:
        from .targets import all_targets

        known = {k for name, t in all_targets().items() if name in targets_asked for k in t.options}
        for key, value in flags.items():
            if key in known:
                options.setdefault(key, value)
            elif key in ("device", "bake_preprocessing"):
                raise UsageError(f"--{key.replace('_', '-')} is an option of targets that declare it "
                                 f"(intel), not of {', '.join(targets_asked)}", "drop it or add --target intel")
    return BuildRequest(
        model=model_path.resolve(),
        model_name=safe_name(name or (model_path.name if model_path.is_dir() else model_path.stem)),
        source_format=fmt,
        targets=targets_asked,
        precisions=parse_list(precision, "precision") or None,
        input=ispec,
        calib=Path(calib).resolve() if calib else None,
        val=Path(val).resolve() if val else None,
        arch=arch,
        trust_pickle=bool(trust_pickle),
        opset=int(opset),
        simplify=simplify,
        max_images=int(max_images),
        options=options,
        thresholds=parse_assignments(threshold, "threshold"),
        out=Path(out).expanduser(),
        version=version,
    )


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"}


def check_image_folder(folder: Path, label: str) -> None:
    """Fail early (before any environment) on a missing, unreadable or image-less folder."""
    from .errors import DataError

    if not folder.is_dir():
        raise DataError(f"{label} {folder} is not a folder", "give a folder of images")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise DataError(f"{label} {folder} cannot be read (permission denied)", "check its permissions")
    try:
        found = any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file())
    except OSError as exc:
        raise DataError(f"{label} {folder} cannot be read: {exc.strerror}", "check its permissions") from None
    if not found:
        raise DataError(f"{label} {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
                        "point it at a folder of real images")


def runner_factory(kind: str, docker_host: str | None, ui=None, base_image: str | None = None,
                   platform: str | None = None, config: str | None = None):
    """(runner_for(target) -> Runner, reason): local, or Docker per target (``--docker-host``,
    else the project's ``[docker.hosts]`` map in edgekiln.toml / pyproject.toml, else default)."""
    from .docker import load_host_map
    from .runners import runners_for_targets

    host_map = {}
    for path in ([Path(config)] if config else [Path("edgekiln.toml"), Path("pyproject.toml")]):
        host_map = load_host_map(path)
        if host_map:
            break
    docker_options = {}
    if base_image:
        docker_options["base_image"] = base_image
    if platform:
        docker_options["platform"] = platform
    return runners_for_targets(kind, docker_host, host_map=host_map, docker_options=docker_options,
                               strict_platform=bool(platform),
                               on_note=(ui.warn if ui is not None else None))


class LazyRunners:
    """runner_for(target), made on first use: a cache hit never probes Docker or environments."""

    def __init__(self, make, ui):
        self._make, self._ui, self._runner_for = make, ui, None
        self._lock = threading.Lock()

    def __call__(self, target):
        with self._lock:
            if self._runner_for is None:
                self._runner_for, reason = self._make()
                self._ui.stage(reason)
        return self._runner_for(target)


class _BuildTask(Task):
    """Long flags only (``--input-shape`` …), except ``-j`` for ``--jobs``."""

    def get_arguments(self, ignore_unknown_help=None):
        args = super().get_arguments(ignore_unknown_help)
        for arg in args:
            if arg.name == "jobs":
                arg.names = ("jobs", "j")
        return args


@task(klass=_BuildTask, auto_shortflags=False, iterable=["option", "threshold"], help=BUILD_HELP)
@guarded
def build(c, model, target="onnx", precision="", jobs=1, calib=None, val=None, input_shape=None,
          layout=None, mean=None, std=None, bgr=False, pixel_scale=None, resize=None, input_name=None,
          dynamic_batch=False, spec=None, arch=None, trust_pickle=False, opset=17, simplify="onnxslim",
          max_images=200, option=None, threshold=None, version=None, name=None, out="dist",
          runner="auto", docker_host=None, base_image=None, platform=None, config=None, device=None,
          max_drop=None, allow_drop=False, bake_preprocessing=False, dry_run=False, json=False,
          keep_job=False, debug=False):
    """Convert a model for one or more targets, validate every artifact, publish it under --out."""
    threshold = list(threshold or [])
    flags = {}  # flags that are target options: given to the targets that declare them
    if device:
        flags["device"] = device
    if bake_preprocessing:
        flags["bake_preprocessing"] = True
    if max_drop is not None:
        flags["max_drop"] = float(max_drop)
        if not allow_drop:
            threshold.append(f"max_accuracy_drop={float(max_drop)}")
    if allow_drop:
        flags["allow_drop"] = True
    from .build import run_build
    from .ui import feed_lines, make_ui, result_json, summary_table

    request = _make_request(model, target, precision, calib, val, input_shape, layout, mean, std, bgr,
                            pixel_scale, resize, input_name, dynamic_batch, spec, arch, trust_pickle,
                            opset, simplify, max_images, option, threshold, version, name, out, flags)
    if dry_run:
        return _dry_run(request, runner, docker_host, json)
    ui = make_ui(json)
    ui.stage(f"{request.model_name} ({request.source_format}) → {', '.join(request.targets)}")
    runner_for = LazyRunners(lambda: runner_factory(runner, docker_host, ui, base_image, platform, config), ui)
    try:
        result = run_build(request, ui, runner_for, jobs=int(jobs), keep_job=keep_job)
    finally:
        ui.close()
    if json:
        console.print_json(data=result_json(result))
        return
    console.print(summary_table(result))
    if result.artifacts:
        console.print(f"published under {result.artifacts[0].path.parent.parent}", markup=False)
    for line in feed_lines(result):
        console.print(line, markup=False)
    if any(a.manifest.get("validation", {}).get("inputs") == "synthetic" for a in result.artifacts):
        from .build import SYNTHETIC

        console.print(f"[yellow]warning:[/] {SYNTHETIC}")
    for art in result.artifacts:
        for note in art.manifest.get("not_executed", []):
            console.print(f"[yellow]not executed[/] {art.target}/{art.precision}: {note}")


def _dry_run(request, runner_kind, docker_host, as_json):
    from .build import prepare
    from .cmd import quote
    from .render import render_job
    from .store import new_job_dir

    plan, arch_file, _hashes, loc, keys = prepare(request)
    job_root = new_job_dir(request.out)
    render_job(plan, job_root, arch_file)
    steps = [{"id": s.id, "kind": s.kind, "image": s.image, "template": s.template,
              "script": str(job_root / s.script), "params": str(job_root / "steps" / f"{s.id}.json"),
              "command": f"cd {quote([str(job_root)])} && PYTHONPATH=. <env:{s.image}>/bin/python {s.script}"}
             for s in plan.steps]
    info = {"model": request.model_name, "format": request.source_format, "version": loc.version,
            "input": request.input.to_json(), "job": str(job_root), "steps": steps,
            "artifacts": [{"target": a.target, "precision": a.precision, "files": list(a.files),
                           "publish_to": str(loc.artifact_dir(a.target, a.precision)),
                           "thresholds": a.thresholds, "build_key": keys[a.key]} for a in plan.artifacts]}
    if as_json:
        console.print_json(data=info)
        return
    console.print(f"[bold]plan[/] {request.model_name} ({request.source_format}) version {loc.version}; nothing runs")
    console.print(f"input spec: {json.dumps(info['input'])}", markup=False)
    for s in steps:
        console.print(f"  {s['id']:<28} {s['kind']:<9} image={s['image']:<9} {s['template']}", markup=False)
        console.print(f"      $ {s['command']}", markup=False)
    for a in info["artifacts"]:
        console.print(f"  → {a['publish_to']}  thresholds {json.dumps(a['thresholds'])}", markup=False)
    console.print(f"rendered scripts and params: {job_root}/steps", markup=False)


@task(help={"json": "print as JSON"})
@guarded
def targets(c, json=False):
    """List the targets: image, precisions, and whether they can build on this host (and why not)."""
    from rich.table import Table

    from .targets import all_targets, host_support

    rows = []
    for t in all_targets().values():
        ok, why = host_support(t)
        rows.append({"name": t.name, "runtime": t.runtime, "image": t.image, "platform": t.platform,
                     "precisions": list(t.precisions), "default": list(t.default_precisions),
                     "runs_here": ok, "why": why, "description": t.description})
    if json:
        console.print_json(data=rows)
        return
    table = Table(title="edgekiln targets")
    for col in ("target", "runtime", "image", "precisions (default)", "runs here", "description"):
        table.add_column(col)
    for r in rows:
        precs = ", ".join(f"[bold]{p}[/]" if p in r["default"] else p for p in r["precisions"])
        table.add_row(r["name"], r["runtime"], f"{r['image']} ({r['platform']})", precs,
                      "yes" if r["runs_here"] else f"no: {r['why']}", r["description"])
    console.print(table)


@task(help={"out": "output root (default ./dist)", "runner": "auto, docker or local",
            "json": "print the result as JSON", "debug": "show tracebacks"})
@guarded
def demo(c, out="dist", runner="auto", json=False, debug=False):
    """Build the real ImageNet MobileNetV2 (fp32 + int8), calibrated and validated on real photos."""
    from .demo import demo_request

    request = demo_request(Path(out))
    return build.body(c, model=str(request["model"]), target="onnx", precision="fp32,int8",
                      calib=str(request["calib"]), val=str(request["val"]), arch="mobilenet_v2",
                      input_shape="1,3,224,224", mean="0.485,0.456,0.406", std="0.229,0.224,0.225",
                      name="mobilenet_v2", out=out, runner=runner, json=json, debug=debug)


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
    """List the images (name, tag, built?, size, base, platform), or build those a target needs."""
    from .images import images_command

    images_command(build=build, base_image=base_image, platform=platform, docker_host=docker_host,
                   rebuild=rebuild, smoke=smoke, json=json)


ns = Collection()
for _t in (build, targets, images, demo):
    ns.add_task(_t)

program = Program(namespace=ns, version=__version__, name="edgekiln", binary="edgekiln")


def main() -> None:  # the installed `edgekiln` command
    program.run()


if __name__ == "__main__":  # pragma: no cover
    main()
