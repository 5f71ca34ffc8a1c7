"""``edgekiln build`` and ``edgekiln demo``: a request from the flags, one call into edgekiln.build."""

from __future__ import annotations

import json as _json
from pathlib import Path

from invoke import task
from rich.markup import escape

from .cli_base import BUILD_HELP, _BuildTask, _jobs, console, err, guarded

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


