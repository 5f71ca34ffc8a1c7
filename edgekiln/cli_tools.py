"""The commands around builds: targets, images, clean, finish."""

from __future__ import annotations

from pathlib import Path

from invoke import task

from .cli_base import console, guarded


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


