"""The release matrix file (``release.toml``): schema, validation, entries, build requests.

    [release]
    name = "mobilenet-demo"           # the release folder is <name>-<version>
    version = "1.0.0"
    date = 2026-11-28                 # fixes every archive mtime (SOURCE_DATE_EPOCH wins when set)

    [targets]                         # every model: target = [precisions]
    onnx = ["fp32", "int8"]

    [models.mobilenet_v2]             # the table name is the model's name in the release
    path = "data/mobilenet_v2-b0353104.pth"   # paths are relative to this file
    arch = "mobilenet_v2"
    input = { shape = [1, 3, 224, 224], mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] }
    calib = "data/photos"
    val = "data/photos-mirrored"
    labels = "data/photos-mirrored/labels.csv"   # optional: the val folder's labels file, checked
    targets = { rpi = ["int8"] }      # optional: this model's own matrix instead of [targets]
    options = { onnx = { calibration_method = "minmax" } }      # target options, per target
    thresholds = { "onnx.int8.min_top1_agreement" = 0.9 }       # [target.][precision.]metric
    trust_model = false               # true: the model file may run code (docs/trust.md); a TOML boolean

Every error names the file, the line and the key, in one line, with the exit code of its kind
(edgekiln.errors): unknown keys and duplicate entries are usage errors (2), a missing model file
is 3, an unknown target or a precision a target does not offer is 5, a missing data folder is 6.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

from .errors import DataError, EdgekilnError, ModelNotFound, TargetError, UsageError
from .request import SIMPLIFIERS, BuildRequest, InputSpec, detect_format, input_spec, safe_name
from .store import check_version
from .targets import METRICS, Target, all_targets

TOP_KEYS = ("release", "targets", "models", "options", "thresholds")
RELEASE_KEYS = ("name", "version", "date")
MODEL_KEYS = ("path", "arch", "input", "calib", "val", "labels", "targets", "options", "thresholds",
              "opset", "simplify", "max_images", "trust_model", "trust_pickle")
INPUT_KEYS = ("name", "shape", "layout", "color", "scale", "mean", "std", "resize", "dynamic_batch")
LABEL_FILES = ("labels.csv", "labels.txt")  # what validation reads in the val folder (converters/ekit.py)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# what a release folder holds beside its models' folders (edgekiln/release.py): no model may be named so
RESERVED = ("archives", "release.json", "measured.json", "SHA256SUMS", "report.html", "report.md")


@dataclass(frozen=True)
class Entry:
    model: str
    target: str
    precision: str

    @property
    def key(self) -> str:
        return f"{self.model}/{self.target}/{self.precision}"


@dataclass(frozen=True)
class Model:
    name: str
    path: Path
    source_format: str
    input: InputSpec
    arch: str | None = None
    calib: Path | None = None
    val: Path | None = None
    labels: Path | None = None
    opset: int = 17
    simplify: str = "onnxslim"
    max_images: int = 200
    trust_pickle: bool = False
    targets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per target
    thresholds: Mapping[tuple[str, str], Mapping[str, float]] = field(default_factory=dict)  # (t, p) -> limits


@dataclass(frozen=True)
class Matrix:
    path: Path
    name: str
    version: str
    date: dt.date
    models: tuple[Model, ...]

    @property
    def folder(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def entries(self) -> list[Entry]:
        return [Entry(m.name, t, p) for m in self.models for t, precs in m.targets.items() for p in precs]

    @property
    def targets(self) -> list[str]:
        return list(dict.fromkeys(e.target for e in self.entries))

    def source_date_epoch(self) -> int:
        """SOURCE_DATE_EPOCH when set (the reproducible-builds convention), else the release date."""
        raw = os.environ.get("SOURCE_DATE_EPOCH")
        if raw:
            try:
                return int(raw)
            except ValueError:
                raise UsageError(f"SOURCE_DATE_EPOCH={raw!r} is not an integer", "seconds since 1970, e.g. 1764288000") from None
        return int(dt.datetime.combine(self.date, dt.time(), dt.timezone.utc).timestamp())

    def requests(self, dist: Path) -> list[tuple[BuildRequest, tuple[Entry, ...]]]:
        """One build request per model and target, with the entries it builds. (One request per
        target costs a source step each, but a target that fails does not take the others down:
        a build publishes all its artifacts or none.)"""
        found = []
        for m in self.models:
            for target, precs in m.targets.items():
                request = BuildRequest(
                    model=m.path, model_name=m.name, source_format=m.source_format, targets=(target,),
                    precisions=precs, input=m.input, calib=m.calib, val=m.val, arch=m.arch,
                    trust_pickle=m.trust_pickle, opset=m.opset, simplify=m.simplify, max_images=m.max_images,
                    options=dict(m.options.get(target, {})),
                    thresholds={f"{p}.{k}": v for p in precs for k, v in m.thresholds.get((target, p), {}).items()},
                    out=dist)
                found.append((request, tuple(Entry(m.name, target, p) for p in precs)))
        return found


# ---------------------------------------------------------------- where a key is in the file

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_PART = r"(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)"
_KEY = re.compile(rf"^\s*({_PART}(?:\s*\.\s*{_PART})*)\s*=")
_PARTS = re.compile(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)")


def _parts(text: str) -> tuple[str, ...]:
    return tuple(next(g for g in m.groups() if g is not None) for m in _PARTS.finditer(text))


def line_of(text: str, path: tuple[str, ...]) -> int | None:
    """The line that defines ``path`` (or its nearest enclosing key/table), 1-based."""
    best, best_len, table = None, -1, ()
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            table = full = _parts(header.group(1))
        else:
            key = _KEY.match(line)
            if not key:
                continue
            full = table + _parts(key.group(1))
        if path[:len(full)] == full and len(full) > best_len:
            best, best_len = number, len(full)
    return best


# ---------------------------------------------------------------- loading


class _Loader:
    def __init__(self, path: Path, text: str, targets: Mapping[str, Target]):
        self.path, self.text, self.known_targets = path, text, targets

    def fail(self, cls, where: tuple[str, ...], message: str, hint: str):
        line = line_of(self.text, where)
        raise cls(f"{self.path}{f':{line}' if line else ''}: {message}", hint)

    def table(self, raw: Any, where: tuple[str, ...], allowed: tuple[str, ...]) -> dict:
        if not isinstance(raw, dict):
            self.fail(UsageError, where, f"{'.'.join(where)} must be a table", "see examples/release.toml")
        for key in raw:
            if key not in allowed:
                self.fail(UsageError, where + (key,), f"unknown key {'.'.join(where + (key,))!r}",
                          f"use one of: {', '.join(allowed)}")
        return raw

    def file(self, raw: Any, where: tuple[str, ...]) -> Path:
        if not isinstance(raw, str) or not raw:
            self.fail(UsageError, where, f"{'.'.join(where)} must be a path (a string)", "e.g. \"data/photos\"")
        path = Path(raw).expanduser()
        return (path if path.is_absolute() else self.path.parent / path).resolve()

    def load(self) -> Matrix:
        try:
            raw = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{self.path}: not valid TOML: {exc}", "fix the file (see examples/release.toml)") from None
        return self.from_raw(raw)

    def from_raw(self, raw: Any) -> Matrix:
        """The checked Matrix of a parsed file (tests feed it random structures)."""
        self.table(raw, (), TOP_KEYS)
        if "release" not in raw:
            self.fail(UsageError, (), "no [release] table", "add [release] with name, version and date")
        rel = self.table(raw["release"], ("release",), RELEASE_KEYS)
        for key in RELEASE_KEYS:
            if key not in rel:
                self.fail(UsageError, ("release",), f"release.{key} is missing",
                          "a release has a name, a version and a date (the date fixes archive mtimes)")
        name, version = rel["name"], rel["version"]
        if not isinstance(name, str) or not NAME.match(name):
            self.fail(UsageError, ("release", "name"), f"release.name {name!r} cannot name a folder",
                      "letters, digits, '.', '_', '+', '-'")
        try:
            version = check_version(str(version))
        except UsageError:
            self.fail(UsageError, ("release", "version"), f"release.version {version!r} cannot name a folder",
                      "e.g. \"1.0.0\"")
        date = rel["date"]
        if isinstance(date, str):
            try:
                date = dt.date.fromisoformat(date)
            except ValueError:
                pass
        if not isinstance(date, dt.date) or isinstance(date, dt.datetime):
            self.fail(UsageError, ("release", "date"), f"release.date {date!r} is not a date", "e.g. date = 2026-11-28")
        models_raw = raw.get("models")
        if not models_raw:
            self.fail(ModelNotFound, ("models",), "no model: the file has no [models.<name>] table",
                      "add one, e.g. [models.mobilenet_v2] with path = \"model.pth\"")
        self.table(models_raw, ("models",), tuple(models_raw))
        defaults = {k: raw.get(k, {}) for k in ("targets", "options", "thresholds")}
        models, names = [], {}
        for key, body in models_raw.items():
            model = self.model(key, body, defaults)
            if model.name in names:
                self.fail(UsageError, ("models", key), f"duplicate entry: models.{key} and models.{names[model.name]} "
                          f"are both named {model.name!r}", "give each model its own table name")
            names[model.name] = key
            models.append(model)
        return Matrix(self.path, name, version, date, tuple(models))

    def model(self, key: str, body: Any, defaults: dict) -> Model:
        where = ("models", key)
        body = self.table(body, where, MODEL_KEYS)
        name = safe_name(key)
        if name in RESERVED:
            self.fail(UsageError, where, f"a model cannot be named {name!r}: the release folder has its own {name}",
                      f"rename the table, e.g. [models.{name}-model]")
        if "path" not in body:
            self.fail(ModelNotFound, where, f"models.{key} has no path", "add path = \"<model file>\"")
        path = self.file(body["path"], where + ("path",))
        if not path.exists():
            self.fail(ModelNotFound, where + ("path",), f"model file {path} does not exist (models.{key}.path)",
                      "fix the path (relative to the release file) or fetch the model")
        trust = self.trust(key, body)
        if "arch" in body and not isinstance(body["arch"], str):
            self.fail(UsageError, where + ("arch",), f"models.{key}.arch must be a string", "e.g. arch = \"mobilenet_v2\"")
        try:
            fmt = detect_format(path, arch=body.get("arch"), trust_pickle=trust)
            spec = input_spec(sidecar=self.table(body.get("input", {}), where + ("input",), INPUT_KEYS),
                              default_layout="nhwc" if fmt in ("saved_model", "keras") else "nchw")
        except EdgekilnError as exc:
            self.fail(type(exc), where, f"models.{key}: {exc.message}", exc.hint or "")
        folders = {}
        for k in ("calib", "val", "labels"):
            if k in body:
                folders[k] = self.file(body[k], where + (k,))
                if not folders[k].exists():
                    self.fail(DataError, where + (k,), f"models.{key}.{k}: {folders[k]} does not exist",
                              "fix the path (relative to the release file)")
        labels = folders.get("labels")
        if labels is not None and (labels.name not in LABEL_FILES or labels.parent != folders.get("val")):
            self.fail(UsageError, where + ("labels",), f"models.{key}.labels must be the labels file of the val "
                      "folder", f"validation reads labels from <val>/{' or <val>/'.join(LABEL_FILES)}")
        targets = self.targets(body.get("targets", defaults["targets"]),
                               where + ("targets",) if "targets" in body else ("targets",), name)
        options = self.options(key, body, defaults, targets)
        thresholds = self.thresholds(key, body, defaults, targets)
        opset, max_images = (self.whole(key, body, k, default) for k, default in (("opset", 17), ("max_images", 200)))
        simplify = body.get("simplify", "onnxslim")
        if simplify not in SIMPLIFIERS:
            self.fail(UsageError, where + ("simplify",), f"models.{key}.simplify {simplify!r} is unknown",
                      f"use one of: {', '.join(SIMPLIFIERS)}")
        arch = body.get("arch")
        module = (arch or "").rpartition(":")[0]
        if module.endswith(".py") and not Path(module).expanduser().is_absolute():
            # the build reads an --arch file from the current folder (and the string is part of the
            # version): it must be the file beside this release file, not another one with its name
            mine, cwd = self.file(module, where + ("arch",)), Path(module).resolve()
            if mine != cwd:
                self.fail(UsageError, where + ("arch",), f"models.{key}.arch {module} would be read from the "
                          f"current folder ({cwd}), not beside the release file ({mine})",
                          f"run edgekiln release from {self.path.parent}, or give the file's absolute path")
        return Model(name, path, fmt, spec, arch, folders.get("calib"), folders.get("val"), labels,
                     opset, simplify, max_images, trust, targets, options, thresholds)

    def trust(self, key: str, body: dict) -> bool:
        """``trust_model`` (or its older name ``trust_pickle``): a TOML boolean, never a string
        (``"no"`` must not switch it on)."""
        value = False
        for k in ("trust_model", "trust_pickle"):
            if k in body:
                if not isinstance(body[k], bool):
                    self.fail(UsageError, ("models", key, k), f"models.{key}.{k} must be true or false, "
                              f"not {body[k]!r}", f"write {k} = true (a TOML boolean, no quotes)")
                value = value or body[k]
        return value

    def whole(self, key: str, body: dict, k: str, default: int) -> int:
        value = body.get(k, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            self.fail(UsageError, ("models", key, k), f"models.{key}.{k} must be a whole number >= 1, not {value!r}",
                      f"e.g. {k} = {default}")
        return value

    def targets(self, raw: Any, where: tuple[str, ...], model: str) -> dict[str, tuple[str, ...]]:
        if not raw:
            self.fail(UsageError, where, f"model {model} has no targets",
                      "add [targets] (e.g. onnx = [\"fp32\", \"int8\"]) or targets = {...} in the model")
        self.table(raw, where, tuple(raw))
        found = {}
        for name, precs in raw.items():
            if name not in self.known_targets:
                self.fail(TargetError, where + (name,), f"unknown target {name!r}",
                          f"choose one of: {', '.join(sorted(self.known_targets))} (see `edgekiln targets`)")
            if isinstance(precs, str):
                precs = [precs]
            if not isinstance(precs, list) or not precs or not all(isinstance(p, str) for p in precs):
                self.fail(UsageError, where + (name,), f"{name} must list precisions", f"e.g. {name} = [\"fp32\"]")
            offered = self.known_targets[name].precisions
            for i, p in enumerate(precs):
                if p not in offered:
                    self.fail(TargetError, where + (name,), f"target {name} does not offer precision {p!r}",
                              f"it offers: {', '.join(offered)}")
                if p in precs[:i]:
                    self.fail(UsageError, where + (name,), f"duplicate entry {model}/{name}/{p}",
                              "list each precision once")
            found[name] = tuple(precs)
        return found

    def options(self, key, body, defaults, targets) -> dict[str, dict]:
        merged: dict[str, dict] = {}
        for scope, raw in (((), defaults["options"]), (("models", key), body.get("options", {}))):
            where = scope + ("options",)
            # the file's [options] may name any target (models without it ignore it); a model's, its own
            allowed = tuple(self.known_targets) if not scope else tuple(targets)
            for target, values in self.table(raw, where, allowed).items():
                if target not in targets:
                    continue
                known = self.known_targets[target].options
                for opt in self.table(values, where + (target,), tuple(known)):
                    merged.setdefault(target, {})[opt] = values[opt]
        return merged

    def thresholds(self, key, body, defaults, targets) -> dict[tuple[str, str], dict[str, float]]:
        """(target, precision) -> {metric: value}; more specific keys win, the model over the file."""
        ranked: dict[tuple[str, str], dict[str, tuple[int, float]]] = {}
        for level, (scope, raw) in enumerate((((), defaults["thresholds"]), (("models", key), body.get("thresholds", {})))):
            for dotted, value in _flatten(raw):
                where = scope + ("thresholds",) + tuple(dotted.split("."))
                *head, metric = dotted.split(".")
                if metric not in METRICS:
                    self.fail(UsageError, where, f"threshold {dotted!r}: unknown metric {metric!r}",
                              f"use one of: {', '.join(METRICS)}")
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    self.fail(UsageError, where, f"threshold {dotted!r} must be a number", "e.g. 0.9")
                matches = [(t, p) for t, precs in targets.items() for p in precs if _scope_matches(head, t, p, targets)]
                if not matches and level == 1:
                    self.fail(UsageError, where, f"threshold {dotted!r} names no entry of model {key}",
                              "use [target.][precision.]metric with a target and precision this model builds")
                for entry in matches:
                    rank = level * 10 + len(head) + (1 if len(head) == 1 and head[0] in targets else 0)
                    current = ranked.setdefault(entry, {})
                    if metric not in current or current[metric][0] <= rank:
                        current[metric] = (rank, float(value))
        return {entry: {m: v for m, (_, v) in limits.items()} for entry, limits in ranked.items()}


def _scope_matches(head: list[str], target: str, precision: str, targets) -> bool:
    if not head:
        return True
    if len(head) == 1:
        return head[0] == target if head[0] in targets else head[0] == precision
    return len(head) == 2 and head == [target, precision]


def _flatten(raw: Any, prefix: str = ""):
    if not isinstance(raw, dict):
        raise UsageError(f"thresholds must be a table, got {raw!r}", "e.g. thresholds = { \"int8.min_cosine\" = 0.9 }")
    for k, v in raw.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def load_matrix(path: Path | str, targets: Mapping[str, Target] | None = None) -> Matrix:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"release file {path} does not exist", "give the path of a release.toml (see examples/release.toml)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"release file {path} cannot be read as UTF-8 text: {exc}",
                         "save it as UTF-8 TOML (see examples/release.toml)") from None
    return _Loader(path.resolve(), text, targets or all_targets()).load()
