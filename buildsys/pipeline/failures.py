"""A failed entry in words: what the runner records and prints for it.

A full disk comes first, whatever TVM or the compiler made of it; a build process that ended
while its model's own code ran names the model's field and line in builds.yaml.
"""

from __future__ import annotations

import traceback

from buildsys.artifacts.space import (describe_os_error, free_bytes, is_storage_error, storage_errno_in,
                                      storage_problem, storage_words)
from buildsys.artifacts.store import Store
from buildsys.errors import BuildError, BuildsysError
from buildsys.pipeline.build import model_origin
from buildsys.pipeline.jobs import Job


def error_text(exc: BaseException) -> str:
    if isinstance(exc, BuildsysError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    return f"unexpected {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"


def failure_text(exc: BaseException, store: Store) -> tuple[str, bool]:
    """(the error text, whether the store's disk is to blame): a build that failed while the
    disk is full says so first, whatever TVM or the compiler made of it ("Compilation error")."""
    text = error_text(exc)
    if isinstance(exc, BuildsysError) and any(f"{why}: " in text for why in ("no space left on device",
                                                                             "read-only file system")):
        return text, True  # a store or registry write said so itself
    if isinstance(exc, KeyboardInterrupt):
        return text, False
    if is_storage_error(exc):  # the file it concerns, not "unexpected OSError" and a traceback
        return describe_os_error(exc), True
    why = storage_problem(store.tmp)
    if why is None:  # the room may be back (a tool removed its partial output): its own words count
        code = storage_errno_in(text)
        why = None if code is None else storage_words(code)
    if why is None:
        return text, False
    if text.startswith(why) or f": {why}: " in text or f" {why}: " in text:
        return text, True
    return (f"{why}: {store.tmp} ({free_bytes(store.tmp)} bytes free); free space on that disk and build again "
            f"(the build failed with: {text.splitlines()[0] if text else type(exc).__name__})"), True


def in_model_code(exc: BaseException, entry: Job, stage: str | None) -> BaseException:
    """A build process that crashed, exited or ran out of time while its model was being made or
    exported (the export stage: the model's own code runs there) is reported as a Python exception
    of that model is, with the config field and line that name it."""
    if type(exc) is not BuildError or exc.stage not in ("worker", "timeout") or stage != "export":
        return exc
    return BuildError(f"{model_origin(entry.spec)}: {exc.detail} (while the model was made or exported)",
                      key=exc.key, stage=exc.stage)


def log_text(exc: BaseException) -> str:
    """For the log: always the whole traceback."""
    return "".join(traceback.format_exception(exc)).rstrip()
