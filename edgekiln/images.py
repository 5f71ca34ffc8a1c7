"""Images: one folder per image in ``images/`` (jetson-containers' layout), built on demand.

    images/_bases.toml            the ONE pinned place for default base images (+ platforms, and
                                  ``local = false`` for images that cannot have a local virtualenv)
    images/_base.Dockerfile.jinja the Dockerfile body every image shares (``_*`` in images/ is
                                  never an image)
    images/<name>/Dockerfile.jinja  the recipe: extends the shared body, fills only what differs
                                  (Jinja, StrictUndefined; only ``base`` and label values come in,
                                  each checked)
    images/<name>/requirements.txt  the full pinned lock (the local runner uses the same file)
    images/<name>/smoke.py        runs INSIDE the built image: imports, prints versions

A recipe is rendered into a build context (``<cache>/contexts/<name>-<digest12>/``): every file
of the image folder ending in ``.jinja`` rendered (suffix dropped; shared templates of images/ may
be extended or included), every other file copied byte for byte, plus ``wheelhouse/``
with the local wheels of pinned packages (PIP_FIND_LINKS / EDGEKILN_WHEELHOUSE; this is how the
CPU torch wheel reaches a build that cannot see the host's disk). The image tag is
``edgekiln/<name>:<sha256 of platform + every context file>[:12]``: an unchanged recipe is never
rebuilt, and a changed lock, base, smoke test or wheel gives a new tag.

The base is, in order: the ``base`` argument (``--base-image``), the environment variable
``EDGEKILN_BASE_IMAGE`` (one base for every image; CI here sets the stand-in base), the pin in
``images/_bases.toml``.

Nothing here prints: the CLI (``edgekiln images``) prints what these functions return.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import jinja2

from . import __version__
from .docker import DockerEngine, OnLine, host_platform
from .errors import EnvironmentFailed, UsageError
from .resources import cache_dir, data_dir

DOCKERFILE = "Dockerfile.jinja"
BASES = "_bases.toml"
REPO = "edgekiln"  # images are tagged edgekiln/<name>:<digest12>
SOURCE_URL = "https://github.com/edgekiln/edgekiln"  # org.opencontainers.image.source
_DIGEST_SALT = b"edgekiln-image-context-v1\0"
BASE_ENV = "EDGEKILN_BASE_IMAGE"  # one base for every image (CI here: the stand-in base)
BUILD_NETWORK_ENV = "EDGEKILN_BUILD_NETWORK"  # docker build --network (default host; "default")

# A Docker image reference: [registry[:port]/]path[:tag][@sha256:digest]. Nothing else (no
# spaces, newlines, quotes, `$`, ...) can reach a rendered Dockerfile's FROM line.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
BASE_RE = re.compile(
    r"^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]+)?/)?"
    rf"{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@sha256:[0-9a-f]{64})?$")
PLATFORM_RE = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(?:/v[0-9]+)?$")
_LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9_.:/@+=,-]*$")
_REQ_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)")
# wheel platform tags -> the Docker platforms they can run on
_WHEEL_ARCH = {"x86_64": "linux/amd64", "aarch64": "linux/arm64", "armv7l": "linux/arm/v7"}

_build_locks: dict[str, threading.Lock] = {}
_build_locks_guard = threading.Lock()


def check_base(ref: str) -> str:
    """``ref`` if it is a well-formed image reference, else UsageError (nothing else may reach
    a FROM line)."""
    if not isinstance(ref, str) or not BASE_RE.match(ref):
        raise UsageError(f"{ref!r} is not a Docker image reference",
                         "use registry/name:tag or name@sha256:<digest>, e.g. python:3.11-slim-bookworm")
    return ref


def check_platform(platform: str) -> str:
    if not isinstance(platform, str) or not PLATFORM_RE.match(platform):
        raise UsageError(f"{platform!r} is not a platform", "use os/arch, e.g. linux/amd64 or linux/arm64")
    return platform


def _label(value: str, what: str) -> str:
    if not _LABEL_VALUE_RE.match(value):
        raise UsageError(f"{what} {value!r} has characters an image label cannot take")
    return value


# -- recipes ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """``images/<name>``: its folder, default base, the platforms it can be built for, and
    whether it can have a local virtualenv (``local``)."""

    name: str
    directory: Path
    base: str
    platforms: tuple[str, ...]
    local: bool = True

    @property
    def lock(self) -> Path:
        return lock_file(self.name, self.directory.parent)

    def lock_hash(self) -> str:
        return lock_hash(self.name, self.directory.parent)


def lock_file(name: str, images_root: Path | None = None) -> Path:
    """``images/<name>/requirements.txt``, the full pinned lock of both runners."""
    path = (images_root or data_dir("images")) / name / "requirements.txt"
    if not path.is_file():
        raise EnvironmentFailed(f"image {name!r} has no requirements lock ({path})",
                                "every images/<name>/ folder needs a pinned requirements.txt")
    return path


def lock_hash(name: str, images_root: Path | None = None) -> str:
    """sha256 of ``images/<name>/requirements.txt``'s bytes: the Env.lock_hash of every runner
    and the image's ``edgekiln.lock-hash`` label."""
    return hashlib.sha256(lock_file(name, images_root).read_bytes()).hexdigest()


KNOWN_CONFLICT = "# pip-check-known: "


def pip_check_known(name: str, images_root: Path | None = None) -> set[str]:
    """The `pip check` lines a lock declares as known (``# pip-check-known: <line>``): a wheel
    whose declared requirements are wider than what it imports (rknn-toolkit2 declares
    torch<=2.4 and numpy<=1.26.4 yet runs on the pinned ones). Any other line still fails."""
    return {line[len(KNOWN_CONFLICT):].strip() for line in lock_file(name, images_root).read_text().splitlines()
            if line.startswith(KNOWN_CONFLICT)}


def pip_check_failures(lines, known: set[str]) -> list[str]:
    """The `pip check` output lines that are problems (not declared known in the lock)."""
    return [line.strip() for line in lines
            if line.strip() and line.strip() not in known and not line.startswith("No broken")]


def load_bases(images_root: Path | None = None) -> dict[str, dict]:
    path = (images_root or data_dir("images")) / BASES
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from None
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise UsageError(f"{path}: {name} is not a table", f"write it as [{name}] base = \"...\"")
        if not isinstance(entry.get("local", True), bool):
            raise UsageError(f"{path}: [{name}] local must be true or false",
                             "local = false marks an image that cannot have a local virtualenv")
    return data


def _platforms(entry: dict) -> tuple[str, ...]:
    return tuple(check_platform(p) for p in entry.get("platforms", ["linux/amd64"]))


def image_facts(images_root: Path | None = None) -> dict[str, dict]:
    """What the plan needs of every image in ``_bases.toml`` (with or without a folder yet):
    ``{name: {"local": bool, "platforms": [...]}}``."""
    return {name: {"local": entry.get("local", True), "platforms": list(_platforms(entry))}
            for name, entry in load_bases(images_root).items()}


def recipes(images_root: Path | None = None) -> dict[str, Recipe]:
    """Every image folder that has a Dockerfile.jinja, by name (``_*`` and ``.*`` are not images)."""
    root = images_root or data_dir("images")
    bases = load_bases(root)
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        if not (folder / DOCKERFILE).is_file():
            continue
        entry = bases.get(folder.name)
        if not entry or "base" not in entry:
            raise UsageError(f"image {folder.name} has no base in {root / BASES}",
                             f"add [{folder.name}] base = \"...\" there")
        found[folder.name] = Recipe(name=folder.name, directory=folder,
                                    base=check_base(entry["base"]), platforms=_platforms(entry),
                                    local=entry.get("local", True))
    return found


def get_recipe(name: str, images_root: Path | None = None) -> Recipe:
    known = recipes(images_root)
    if name not in known:
        raise UsageError(f"unknown image {name!r}", f"images with a recipe: {', '.join(known) or 'none'}")
    return known[name]


# -- local wheels ----------------------------------------------------------------------------------

def wheelhouse_dirs() -> list[Path]:
    """Folders of local wheels: EDGEKILN_WHEELHOUSE (os.pathsep-separated), else pip's
    PIP_FIND_LINKS (space-separated; local folders only)."""
    raw = os.environ.get("EDGEKILN_WHEELHOUSE")
    parts = raw.split(os.pathsep) if raw is not None else os.environ.get("PIP_FIND_LINKS", "").split()
    out = []
    for part in parts:
        part = part.removeprefix("file://")
        if part and "://" not in part and Path(part).is_dir():
            out.append(Path(part))
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(lock: Path) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of a lock."""
    pins = {}
    for line in lock.read_text().splitlines():
        m = _REQ_RE.match(line)
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    return pins


def local_wheels(lock: Path, platform: str, dirs: list[Path] | None = None) -> list[Path]:
    """Local wheels of the lock's pinned versions that can run on ``platform``
    (``torch==2.13.0`` matches ``torch-2.13.0+cpu-…``; a local label must match if pinned)."""
    pins = pinned(lock)
    found: dict[str, Path] = {}
    for folder in dirs if dirs is not None else wheelhouse_dirs():
        for whl in sorted(folder.glob("*.whl")):
            parts = whl.name[:-4].split("-")
            if len(parts) < 5:
                continue
            name, version, plat = _norm(parts[0]), parts[1], parts[-1]
            want = pins.get(name)
            if want is None or not (version == want or ("+" not in want and version.startswith(want + "+"))):
                continue
            if plat != "any":
                arches = {_WHEEL_ARCH.get(a) for a in re.findall(r"(x86_64|aarch64|armv7l)", plat)}
                if not plat.startswith(("manylinux", "musllinux", "linux")) or platform not in arches:
                    continue
            found.setdefault(whl.name, whl)
    return [found[k] for k in sorted(found)]


_hash_cache: dict[tuple, str] = {}


def _file_hash(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _hash_cache:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _hash_cache[key] = h.hexdigest()
    return _hash_cache[key]


# -- rendering -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Context:
    """A rendered build context and the tag its content gives."""

    name: str
    tag: str
    digest: str
    base: str
    platform: str
    directory: Path
    lock_hash: str
    wheels: tuple[str, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)  # relative path -> sha256

    @property
    def build_log(self) -> Path:
        return self.directory.with_name(self.directory.name + ".build.log")

    @property
    def build_script(self) -> Path:
        return self.build_log.with_suffix(".sh")


def render(recipe: Recipe, *, base: str | None = None, platform: str | None = None) -> dict[str, bytes]:
    """The context's files (the image folder's ``*.jinja`` rendered, the rest as they are),
    without wheels. Templates may extend or include the shared ones of images/ (``_*.jinja``)."""
    base = check_base(base or recipe.base)
    platform = check_platform(platform or host_platform())
    loader = jinja2.FileSystemLoader([str(recipe.directory), str(recipe.directory.parent)])
    env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, autoescape=False,
                             keep_trailing_newline=True)
    values = {
        "name": _label(recipe.name, "image name"),
        "base": base,
        "platform": platform,
        "lock_hash": recipe.lock_hash(),
        "version": _label(__version__, "version"),
        "source": _label(SOURCE_URL, "source"),
    }
    files: dict[str, bytes] = {}
    for path in sorted(recipe.directory.rglob("*")):
        rel = path.relative_to(recipe.directory)
        if not path.is_file() or any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
            continue
        if path.name.endswith(".jinja"):
            try:
                text = env.get_template(rel.as_posix()).render(**values)
            except jinja2.TemplateError as exc:
                raise EnvironmentFailed(f"rendering {path} failed: {exc}", "fix the recipe") from None
            files[rel.with_suffix("").as_posix()] = text.encode()
        else:
            files[rel.as_posix()] = path.read_bytes()
    if "Dockerfile" not in files:
        raise EnvironmentFailed(f"{recipe.directory} renders no Dockerfile", f"add {DOCKERFILE}")
    return files


def render_context(name: str, *, base: str | None = None, platform: str | None = None,
                   images_root: Path | None = None, root: Path | None = None,
                   wheel_dirs: list[Path] | None = None, write: bool = True) -> Context:
    """Render ``images/<name>`` for ``platform`` (default: this machine's) into a build context
    under ``<cache>/contexts`` (reused when the same content was rendered before). ``write=False``
    only computes it (tag, digest, where it would be): what a dry run needs, no file written."""
    recipe = get_recipe(name, images_root)
    platform = check_platform(platform or host_platform())
    if platform not in recipe.platforms:
        raise UsageError(f"image {name} is not made for {platform}",
                         f"its platforms ({BASES}): {', '.join(recipe.platforms)}")
    base = check_base(base or os.environ.get(BASE_ENV) or recipe.base)
    files = render(recipe, base=base, platform=platform)
    wheels = local_wheels(recipe.lock, platform, wheel_dirs)
    hashes = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    hashes.update({f"wheelhouse/{w.name}": _file_hash(w) for w in wheels})
    h = hashlib.sha256(_DIGEST_SALT + platform.encode() + b"\0")
    for rel in sorted(hashes):
        h.update(f"{rel}\0{hashes[rel]}\n".encode())
    digest = h.hexdigest()
    directory = (root or cache_dir()) / "contexts" / f"{name}-{digest[:12]}"
    if write and not directory.is_dir():
        _write_context(directory, files, wheels)
    return Context(name=name, tag=f"{REPO}/{name}:{digest[:12]}", digest=digest, base=base,
                   platform=platform, directory=directory, lock_hash=recipe.lock_hash(),
                   wheels=tuple(w.name for w in wheels), files=hashes)


def _write_context(directory: Path, files: Mapping[str, bytes], wheels: list[Path]) -> None:
    """Write the context atomically (a temporary folder renamed into place)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        house = tmp / "wheelhouse"
        house.mkdir(exist_ok=True)
        (house / "README").write_text("Local wheels of pinned packages (may be empty).\n")
        for whl in wheels:
            try:
                os.link(whl, house / whl.name)
            except OSError:
                shutil.copy2(whl, house / whl.name)
        (tmp / ".dockerignore").write_text("*.build.log\n*.build.sh\n")
        os.replace(tmp, directory)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not directory.is_dir():  # another process may have won the rename
            raise


# -- engine side -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageStatus:
    """One row of ``edgekiln images``: an image for one of its platforms."""

    name: str
    platform: str  # the platform this tag is for (one of the image's platforms)
    tag: str
    built: bool | None  # None: no engine answered
    size: int | None  # bytes
    base: str
    local: bool  # can it have a local virtualenv too?
    built_platform: str | None = None  # os/arch[/variant] of the built image, as the engine says
    created: str | None = None


def _lock_for(tag: str) -> threading.Lock:
    with _build_locks_guard:
        return _build_locks.setdefault(tag, threading.Lock())


def ensure_image(engine: DockerEngine, name: str, *, base: str | None = None,
                 platform: str | None = None, on_line: OnLine | None = None, rebuild: bool = False,
                 timeout: float | None = None, images_root: Path | None = None,
                 root: Path | None = None) -> tuple[Context, bool]:
    """Make sure ``edgekiln/<name>:<digest>`` exists on ``engine``: (context, built_now).
    ``platform`` defaults to the engine's own. The build log and build.sh sit beside the context."""
    info = engine.check()
    ctx = render_context(name, base=base, platform=platform or info.platform,
                         images_root=images_root, root=root)
    with _lock_for(f"{engine.where}|{ctx.tag}"):
        if not rebuild and engine.has_image(ctx.tag):
            return ctx, False
        ok, why = engine.can_build_for(ctx.platform)
        if not ok:
            raise EnvironmentFailed(f"cannot build {ctx.tag} for {ctx.platform}: {why}",
                                    "or build it for this engine's platform: --platform "
                                    f"{info.platform}")
        if on_line:
            on_line(f"building {ctx.tag} ({ctx.platform}, base {ctx.base}) at {engine.where}")
        network = os.environ.get(BUILD_NETWORK_ENV, "host")  # no bridge here: host, or "default"
        engine.build(ctx.directory, ctx.tag, platform=ctx.platform, log_path=ctx.build_log,
                     on_line=on_line, timeout=timeout,
                     network=None if network in ("", "default") else network)
        if not engine.has_image(ctx.tag):
            raise EnvironmentFailed(f"docker build reported success but {ctx.tag} is missing",
                                    f"see {ctx.build_log}")
        return ctx, True


def smoke_test(engine: DockerEngine, ctx: Context, *, log_path: Path | None = None,
               timeout: float = 300) -> dict:
    """Run the image's smoke.py inside it (no network, the invoking user); its JSON line."""
    from .docker import RunSpec
    from .errors import StepFailed

    log_path = log_path or ctx.directory.with_name(ctx.directory.name + ".smoke.log")
    spec = RunSpec(image=ctx.tag, command=("/opt/venv/bin/python", "/opt/edgekiln/smoke.py"),
                   step=f"smoke-{ctx.name}", platform=ctx.platform, workdir="/tmp")
    result = engine.run(spec, log_path=log_path, timeout=timeout)
    if result.returncode != 0:
        raise StepFailed(f"smoke test of {ctx.tag} failed (exit {result.returncode}): "
                         f"{(result.tail or ('',))[-1][:300]}", f"see {log_path}")
    for line in reversed(result.tail):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    raise StepFailed(f"smoke test of {ctx.tag} printed no JSON line", f"see {log_path}")


def list_images(engine: DockerEngine | None = None, *, base: str | Mapping[str, str] | None = None,
                 images_root: Path | None = None) -> list[ImageStatus]:
    """Every image for every platform it can be built for: the tag this checkout gives it,
    whether the engine has it (and the platform the built image really is), size, base.
    ``base``: one override for all or a map image -> base. With no engine (None, or one that
    does not answer) ``built`` is None. Nothing is written or built."""
    if engine is not None:
        try:
            engine.check()
        except EnvironmentFailed:
            engine = None
    rows = []
    for name, recipe in recipes(images_root).items():
        b = base.get(name) if isinstance(base, Mapping) else base
        for plat in recipe.platforms:
            ctx = render_context(name, base=b, platform=plat, images_root=images_root, write=False)
            data = engine.image_inspect(ctx.tag) if engine is not None else None
            built_platform = None
            if data:
                built_platform = "/".join(x for x in (data.get("Os"), data.get("Architecture"),
                                                      data.get("Variant")) if x)
            rows.append(ImageStatus(
                name=name, platform=plat, tag=ctx.tag, built=None if engine is None else data is not None,
                size=(data or {}).get("Size"), base=ctx.base, local=recipe.local,
                built_platform=built_platform, created=(data or {}).get("Created")))
    return rows


def resolve_build_names(names: str, targets: Mapping[str, tuple[str, str | None]], *,
                        images_root: Path | None = None) -> list[tuple[str, str | None]]:
    """``--build`` values (comma-separated target or image names, or ``all``) as (image, platform)
    pairs. ``targets``: target name -> (image, platform) (a target brings its own platform; an
    image name the engine's: None)."""
    known = recipes(images_root)
    wanted: list[tuple[str, str | None]] = []
    for raw in [n.strip() for n in names.split(",") if n.strip()]:
        if raw == "all":
            wanted += [(name, None) for name in known]
        elif raw in targets:
            wanted.append(tuple(targets[raw]))
        elif raw in known:
            wanted.append((raw, None))
        else:
            raise UsageError(f"{raw!r} is neither a target nor an image",
                             f"targets: {', '.join(targets)}; images: {', '.join(known)}")
    return list(dict.fromkeys(wanted))


def build_images(engine: DockerEngine, names: str, targets: Mapping[str, tuple[str, str | None]], *,
                 base: str | None = None, platform: str | None = None, rebuild: bool = False,
                 smoke: bool = False, on_line: OnLine | None = None,
                 images_root: Path | None = None) -> list[dict]:
    """``edgekiln images --build``: build (or find built) what ``names`` need; one dict per image
    (name, tag, built_now, platform, base, build_log, smoke when asked)."""
    engine.check()
    done = []
    for image, plat in resolve_build_names(names, targets, images_root=images_root):
        ctx, built = ensure_image(engine, image, base=base, platform=platform or plat,
                                  rebuild=rebuild, on_line=on_line, images_root=images_root)
        row = {"name": image, "tag": ctx.tag, "built_now": built, "platform": ctx.platform,
               "base": ctx.base, "build_log": str(ctx.build_log)}
        if smoke:
            row["smoke"] = smoke_test(engine, ctx)
        done.append(row)
    return done
