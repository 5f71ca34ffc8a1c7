"""Invoke tasks of edgekiln (`invoke --list`). The library's tasks are the installed `edgekiln`
program too; `bench` lives here because bench/ exists only in a checkout."""

import shlex
import sys

from invoke import Exit, task

from edgekiln.cli import RELEASE_HELP, ns
from edgekiln.cli import release as _release


QUICK = {"orchestration_overhead": "--repeats {repeats}", "intel_vs_bare": "", "rpi_vs_onnx2tf": "",
         "demo_matrix": ""}  # demo_matrix last: it rewrites docs/measurements.md's table


@task(help={"only": "run this study: bench/<name>.py (see --list)",
            "args": "the study's own arguments, e.g. --args '--only mobilenet'",
            "list": "list the studies, the environment each runs in and the results files they wrote",
            "repeats": "repeats of the timed builds (the quick set's orchestration_overhead)"})
def bench(c, only="", args="", list=False, repeats=3):  # noqa: A002  (the flag is --list)
    """Run a study of bench/ (default: the quick set); its results files in bench/results/ are then
    stamped with the command that regenerates them."""
    sys.path.insert(0, "bench")
    from _common import RESULTS, env_python, stamp, studies, study_env

    found = studies()
    if list:
        for name, script in found.items():
            doc = (ast_doc(script) or "").strip().splitlines()[0:1]
            env = study_env(script)
            print(f"{name:<28} {'[' + env + '] ' if env else ''}{doc[0] if doc else ''}")
        return
    if only and only not in found:
        raise Exit(f"no study {only!r} in bench/ (invoke bench --list)", code=2)
    todo = {only: args} if only else {k: v.format(repeats=repeats) for k, v in QUICK.items()}
    for name, extra in todo.items():
        env = study_env(found[name])
        python = env_python(env) if env else sys.executable
        before = {p: p.stat().st_mtime for p in RESULTS.glob("*")}
        c.run(f"{python} bench/{name}.py {extra}".strip(), pty=False)
        command = f"invoke bench --only {name}" + (f" --args {shlex.quote(extra)}" if extra else "")
        for path in RESULTS.glob("*"):
            if path.suffix in (".md", ".json") and before.get(path) != path.stat().st_mtime:
                stamp(path, command)


def ast_doc(script):
    import ast

    return ast.get_docstring(ast.parse(script.read_text()))


@task(help=dict(RELEASE_HELP, file="the release matrix file (default examples/release.toml)"))
def release(c, file="examples/release.toml", out="releases", dist="dist", check=False, jobs=1, runner="auto",
            docker_host=None, json=False, debug=False, broker=None, store=None, queue_wait=None, shard=None,
            assemble=False):
    """`edgekiln release` with the example as its default file: `invoke release [--check]`."""
    return _release.body(c, file, out=out, dist=dist, check=check, jobs=jobs, runner=runner,
                         docker_host=docker_host, json=json, debug=debug, broker=broker, store=store,
                         queue_wait=queue_wait, shard=shard, assemble=assemble)


ns.add_task(bench)
ns.add_task(release)  # replaces the installed program's `release`, whose file is positional
