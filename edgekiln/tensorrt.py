"""NVIDIA software stacks (targets/_tensorrt.toml) and the device scripts rendered for them.

A *stack* is one row of the table: a JetPack release (L4T, CUDA, TensorRT, Python, l4t-jetpack base
image) or an NGC ``tensorrt:<yy.mm>-py3`` image on x86-64, with the TensorRT *API level* its build
script is written for. ``stack_for(target, version)`` picks one (``--jetpack`` / ``--option stack=``);
``device_scripts(stack, ...)`` renders build_engine.py, check_engine.py and build_engine.sh for it.
Nothing here needs TensorRT: engines are built on the device (see edgekiln/deferred.py).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .errors import UsageError
from .resources import data_dir

TABLE = "_tensorrt.toml"
KINDS = {"jetson": "JetPack", "x86": "NGC TensorRT image"}
API_LEVELS = ("8.5", "8.6", "10", "11")
# The templates rendered into every deferred bundle (converters/trt/<name>.jinja; not "tensorrt/": that folder would shadow `import tensorrt`).
DEVICE_TEMPLATES = ("build_engine.py", "check_engine.py", "build_engine.sh")


@dataclass(frozen=True)
class Stack:
    kind: str  # jetson | x86
    key: str  # "6.1" | "24.12"
    tensorrt: str
    api: str
    cuda: str
    python: str
    base: str
    sm: tuple[str, ...]
    dla: bool
    lock: str
    l4t: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def strongly_typed(self) -> bool:
        """TensorRT 10+ builds typed networks (fp16 from an fp16 ONNX, int8 from Q/DQ)."""
        return self.api in ("10", "11")

    def typed_build(self, dla: bool) -> bool:
        """Does the build script make a strongly typed network? Yes from TensorRT 10 on, except
        TensorRT 10 on DLA (DLA layers are chosen through the precision flags, still present in 10)."""
        return self.strongly_typed and not (self.api == "10" and dla)

    @property
    def label(self) -> str:
        if self.kind == "jetson":
            return f"JetPack {self.extra.get('jetpack', self.key)} (L4T r{self.extra.get('l4t_release')}, " \
                   f"CUDA {self.cuda}, TensorRT {self.tensorrt})"
        return f"NGC tensorrt:{self.key}-py3 (CUDA {self.cuda}, TensorRT {self.tensorrt})"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "tensorrt": self.tensorrt, "api": self.api,
                "cuda": self.cuda, "python": self.python, "base": self.base, "sm": list(self.sm),
                "dla": self.dla, "lock": self.lock, "l4t": list(self.l4t), **dict(self.extra)}


def api_level(tensorrt: str) -> str:
    """The API level of a TensorRT version: "8.5", "8.6", "10" or "11"."""
    major, _, rest = tensorrt.partition(".")
    if major == "8":
        minor = rest.partition(".")[0]
        if minor in ("5", "6"):
            return f"8.{minor}"
    if major in ("10", "11"):
        return major
    raise UsageError(f"TensorRT {tensorrt} is not supported", f"edgekiln writes for {', '.join(API_LEVELS)}")


def load_table(path=None) -> dict[str, Any]:
    path = path or data_dir("targets") / TABLE
    with open(path, "rb") as f:
        return tomllib.load(f)


def stacks(kind: str, table: Mapping[str, Any] | None = None) -> dict[str, Stack]:
    table = table if table is not None else load_table()
    out = {}
    for key, row in table.get(kind, {}).items():
        known = {"cuda", "tensorrt", "api", "python", "base", "sm", "dla", "lock", "l4t"}
        stack = Stack(kind=kind, key=key, tensorrt=row["tensorrt"], api=row["api"], cuda=row["cuda"],
                      python=row["python"], base=row["base"], sm=tuple(row["sm"]), dla=bool(row["dla"]),
                      lock=row["lock"], l4t=tuple(row.get("l4t", ())),
                      extra={k: v for k, v in row.items() if k not in known})
        if api_level(stack.tensorrt) != stack.api:
            raise UsageError(f"{TABLE} [{kind}.{key}]: TensorRT {stack.tensorrt} is API level "
                             f"{api_level(stack.tensorrt)}, not {stack.api}", "fix the row")
        out[key] = stack
    return out


def stack_for(kind: str, version: str | None = None, table: Mapping[str, Any] | None = None) -> Stack:
    """The row ``version`` of ``kind`` (default: the table's default); unknown -> UsageError."""
    table = table if table is not None else load_table()
    rows = stacks(kind, table)
    if kind not in KINDS or not rows:
        raise UsageError(f"no TensorRT stacks of kind {kind!r}", f"kinds: {', '.join(KINDS)}")
    version = str(version or table.get("defaults", {}).get(kind, ""))
    if version not in rows:
        flag = "--jetpack" if kind == "jetson" else "--option stack="
        raise UsageError(f"unknown {KINDS[kind]} {version!r}",
                         f"{flag} takes one of: {', '.join(rows)}")
    return rows[version]


# ---------------------------------------------------------------- device scripts


TRTEXEC = {"jetson": "/usr/src/tensorrt/bin/trtexec",  # JetPack: not on PATH
           "x86": "trtexec"}  # the NGC tensorrt image puts it on PATH


def trtexec_line(stack: Stack, precision: str, *, shapes: Mapping[str, Any] | None, input_name: str,
                 dla_core: int | None, workspace_mib: int, engine: str = "model.engine",
                 onnx: str = "model.onnx", hardware_compatible: bool = False,
                 version_compatible: bool = False) -> list[str]:
    """The trtexec command equivalent to build_engine.py for this stack (recorded, not run here), as
    argv words: write it with ``shlex.join`` (an input name is data, never shell text)."""
    args = [TRTEXEC[stack.kind], f"--onnx={onnx}", f"--saveEngine={engine}",
            f"--memPoolSize=workspace:{workspace_mib}",  # MiB
            "--timingCacheFile=device/timing.cache"]  # the cache build_engine.py reuses
    if stack.typed_build(dla_core is not None):
        args.append("--stronglyTyped")
    elif precision == "fp16":
        args.append("--fp16")
    elif precision == "int8":
        args += ["--int8", "--fp16"]  # Q/DQ int8; fp16 for the layers left in float
    if shapes:
        # trtexec splits name:dims at a colon: a name with one is wrapped in single quotes (its docs)
        name = f"'{input_name}'" if ":" in input_name else input_name
        for flag, which in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            dims = "x".join(str(d) for d in shapes[which])
            args.append(f"{flag}={name}:{dims}")
    if dla_core is not None:
        args += [f"--useDLACore={dla_core}", "--allowGPUFallback"]
    if hardware_compatible:
        args.append("--hardwareCompatibilityLevel=ampere+")
    if version_compatible:
        args.append("--versionCompatible")
    return args


def trtexec_text(stack: Stack, args: list[str], dla: bool) -> str:
    """device/trtexec.txt: comments, then the command as one shell-quoted line."""
    lines = [f"# The trtexec command equivalent to build_engine.py (TensorRT {stack.tensorrt}), run in the "
             "artifact folder on the device:"]
    if dla:
        lines.append("# On a board without DLA cores (Orin Nano) drop --useDLACore/--allowGPUFallback: trtexec "
                     "fails there, build_engine.py builds for the GPU.")
    return "\n".join(lines + [shlex.join(args)]) + "\n"


# sm >= 8.0: HardwareCompatibilityLevel.AMPERE_PLUS builds for Ampere and newer GPUs only
AMPERE = "8.0"


def made_for(stack: Stack, hardware_compatible: bool = False) -> dict[str, Any]:
    """What preflight compares with the device (device/bundle.json ``made_for``)."""
    out = {"kind": stack.kind, "key": stack.key, "label": stack.label, "tensorrt": stack.tensorrt,
           "l4t": list(stack.l4t), "sm": list(stack.sm)}
    if hardware_compatible:
        out["min_sm"] = AMPERE
        out["min_sm_why"] = "hardware_compatible: an Ampere-or-newer (AMPERE_PLUS) engine"
    return out


def device_context(stack: Stack, precision: str, *, dla: bool, dynamic: bool,
                   compatibility: bool = False) -> dict[str, Any]:
    """What a device template may branch on (structure only; values come from bundle.json)."""
    if precision not in ("fp32", "fp16", "int8"):
        raise UsageError(f"TensorRT precision {precision!r} is not supported", "use fp32, fp16 or int8")
    if dla and not stack.dla:
        raise UsageError(f"{stack.label} has no DLA cores", "drop --option dla_core")
    if compatibility and stack.kind != "x86":
        raise UsageError("hardware/version compatibility is an x86 feature", "drop --option compatibility")
    return {"api": stack.api, "precision": precision, "dla": dla, "dynamic": dynamic,
            "compatibility": compatibility, "kind": stack.kind, "typed": stack.typed_build(dla),
            "tensorrt": stack.tensorrt, "label": stack.label}


def device_scripts(stack: Stack, precision: str, *, dla: bool, dynamic: bool,
                   compatibility: bool = False) -> dict[str, str]:
    """{file name: text} of the device scripts for this stack; every .py compiles."""
    from .render import render_text

    ctx = device_context(stack, precision, dla=dla, dynamic=dynamic, compatibility=compatibility)
    out = {}
    for name in DEVICE_TEMPLATES:
        text = render_text(f"trt/{name}.jinja", ctx)
        if name.endswith(".py"):
            compile(text, name, "exec")
        out[name] = text
    return out


# ---------------------------------------------------------------- plan


def kind_of(target) -> str:
    return "jetson" if "jetpack" in target.options else "x86"


def target_params(target, options: Mapping[str, Any], precisions=()) -> dict[str, Any]:
    """The extra step params of a TensorRT target: the chosen stack (``--jetpack`` /
    ``--option stack=``) and what the build script will do with it (typed network or flags, DLA).
    Refuses (one line each) what DLA cannot do: fp32, and a shape range."""
    kind = kind_of(target)
    stack = stack_for(kind, str(options["jetpack"] if kind == "jetson" else options["stack"]))
    try:
        dla_core = int(options.get("dla_core", -1))
    except (TypeError, ValueError):
        raise UsageError(f"--option dla_core={options.get('dla_core')!r} is not an integer",
                         "-1 (GPU only) or the DLA core number") from None
    dla = dla_core >= 0
    if dla and not stack.dla:
        raise UsageError(f"{stack.label} has no DLA cores", "use --option dla_core=-1")
    if dla and "fp32" in precisions:
        raise UsageError("DLA runs fp16 and int8 only: an fp32 engine with --option dla_core would run "
                         "every layer on the GPU", "build --precision fp16 or int8 for DLA, or fp32 with "
                         "--option dla_core=-1")
    if dla and _is_range(options.get("shapes")):
        raise UsageError(f"DLA needs one fixed shape (min = opt = max), --option shapes={options['shapes']} "
                         "is a range", "give the same shape three times, or use --option dla_core=-1")
    return {"tensorrt": dict(stack.to_json(), label=stack.label, typed=stack.typed_build(dla),
                             dla_core=dla_core if dla else None)}


def _is_range(shapes) -> bool:
    """Is ``[name:]MIN:OPT:MAX`` a range (not three equal shapes)? Malformed text is left to the
    convert step, which names what is wrong with it."""
    parts = [p.strip().lower() for p in str(shapes or "").split(":") if p.strip()]
    return len(parts) >= 3 and len(set(parts[-3:])) > 1
