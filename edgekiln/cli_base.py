"""What every command shares: the two consoles, the guard that turns user errors into one line and
an exit code, the long-flags-only task class, the flags' help shared by build/release/worker."""

from __future__ import annotations

import functools
import os
import signal
import sys
import traceback

from invoke import Exit, Task
from rich.console import Console
from rich.markup import escape

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



class _BuildTask(Task):
    """Long flags only (``--input-shape`` …), except ``-j`` for ``--jobs``."""

    def get_arguments(self, ignore_unknown_help=None):
        args = super().get_arguments(ignore_unknown_help)
        for arg in args:
            if arg.name == "jobs":
                arg.names = ("jobs", "j")
        return args



def _jobs(value) -> int:
    from .errors import UsageError

    try:
        jobs = int(value)
    except (TypeError, ValueError):
        jobs = 0
    if jobs < 1:
        raise UsageError(f"--jobs {value!r} is not a whole number >= 1", "e.g. --jobs 2")
    return jobs



def _concurrency(value) -> int:
    from .errors import UsageError

    if not str(value).isdigit() or int(value) < 1:
        raise UsageError(f"--concurrency {value!r} is not a whole number >= 1", "e.g. --concurrency 2")
    return int(value)



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
