"""The commands of releases and workers: release, verify, report, worker."""

from __future__ import annotations

import os
from pathlib import Path

from invoke import task

from .cli_base import BUILD_HELP, _BuildTask, _concurrency, _jobs, console, err, guarded


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


