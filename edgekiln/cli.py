"""The command line: thin Invoke tasks (their docstrings are the help), one call into the library.

The commands live in cli_build, cli_tools and cli_release (cli_base: what they share). The same
collection serves ``invoke <task>`` in a checkout (tasks.py imports ``ns``) and the
installed ``edgekiln <task>`` program. User errors print one line and exit with the error kind's
code (edgekiln.errors); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys

from invoke import Collection, Exit, Program

from . import __version__
from .cli_base import err
from .cli_build import build, demo
from .cli_release import RELEASE_HELP, release, report, verify, worker
from .cli_tools import clean, finish, images, targets

__all__ = ["RELEASE_HELP", "build", "main", "ns", "program", "release"]

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
