"""``buildsys`` command line, a few lines a command over the library (like tvmc's).

``app`` holds the group, the shared options and ``main`` (errors -> exit codes, from the error
classes in ``buildsys.errors``); the commands live by the stage they serve:

- ``build_cmds``: plan, build, tune, log
- ``artifact_cmds``: ls, show, run, verify, gc, diff, alias, db
- ``distribution_cmds``: export, import, push, keygen
- ``measure_cmds``: bench, report, passes

Each command parses its options, calls one library function on a ``Workspace`` and prints.
"""

from buildsys.cli.app import cli, main
from buildsys.cli import artifact_cmds, build_cmds, distribution_cmds, measure_cmds  # noqa: F401 - register commands

__all__ = ["cli", "main"]
