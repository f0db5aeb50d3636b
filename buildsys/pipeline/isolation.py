"""Each build in a process of its own, so that one entry cannot take the others down.

Model code is the user's: it may segfault (a bad extension), call ``os._exit``
or ``sys.exit``, hang, or leak memory until the kernel kills it. The builder
therefore runs every entry's export, compile and verify in a fresh child
process and waits for it with a deadline. Build processes are forked from a
multiprocessing fork server that has imported torch and TVM once (a fresh
interpreter per entry would spend seconds importing them again); each starts
with the builder's current environment, working directory and import path,
and nothing of any model (``BUILDSYS_BUILD_START=spawn`` starts each from a
fresh interpreter instead). What the child ends with is recorded as that
entry's failure, with its cause: the signal (``SIGSEGV``), the exit code, or
the timeout; the rest of the matrix goes on. A fresh process per entry also
makes the recorded model sources exact (``sources``: nothing was imported
before the model).

The child asks the kernel to kill it when its parent dies (``PR_SET_PDEATHSIG``;
the fork server exits with the builder), so a builder killed with ``kill -9``
leaves no compiler running into its staging directory; one that finds the builder's end of its
pipe closed first (the kernel closes it before it signals) ends without a word
(``ORPHANED_EXIT``): nobody is left to read a traceback. multiprocessing's resource tracker,
which the builder's build processes share, removes the semaphores a killed build left without
warning about them on the user's terminal. ``BUILDSYS_BUILD_IN_PROCESS=1`` builds in the builder's own process
instead (for a debugger, or tests that patch the build).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any, Callable

from buildsys.errors import BuildError, BuildsysError

_LIVE: set = set()  # build processes running now, for kill_all
DEFAULT_TIMEOUT_S = 2 * 3600  # a full-size detector builds in minutes; an untuned hang never ends
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
ORPHANED_EXIT = 1  # a build process whose builder is gone: no one reads it, the fork server reaps it
_GONE = (BrokenPipeError, ConnectionResetError)  # writing into the pipe of a builder that is gone


def in_process() -> bool:
    return os.environ.get("BUILDSYS_BUILD_IN_PROCESS", "").strip().lower() in ("1", "true", "yes")


def _die_with_parent() -> None:
    """The build's parent is the fork server, which exits with the builder."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's cleanup is all there is
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


# An argument whose ``queue`` attribute is this marker gets a queue, in the child, whose items
# reach the parent's ``on_message`` through the result pipe, in order, before the result.
PARENT_QUEUE = "buildsys:parent-queue"


def _orphaned():
    """The builder is gone (``kill -9``: its end of the pipe is closed): nobody is left to tell,
    and a traceback would land on the user's terminal. End quietly, with what the model started."""
    kill_tree(os.getpid(), include_root=False)
    os._exit(ORPHANED_EXIT)


class _PipeQueue:
    def __init__(self, connection):
        self.connection = connection

    def put(self, item) -> None:
        try:
            self.connection.send(("message", item))
        except _GONE:
            _orphaned()


def subreaper() -> None:
    """Orphans below the calling process become its children, not init's (``PR_SET_CHILD_SUBREAPER``):
    a model's child in a session of its own (``os.setsid``, ``start_new_session=True``) leaves the
    build's process group, but not the build's tree, so it can still be found and killed."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the process group is all there is
        pass


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(p) for p in handle.read().split()]
    except (OSError, ValueError):
        pass
    return found


def kill_tree(pid: int, *, include_root: bool = True) -> None:
    """SIGKILL ``pid``'s descendants (stopped first, so none forks meanwhile), then ``pid``."""
    for _ in range(5):  # a process forked between the walk and the kill: walk again
        seen, todo = [], _children(pid)
        while todo:
            child = todo.pop()
            if child in seen:
                continue
            seen.append(child)
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGSTOP)
            todo += _children(child)
        for child in seen:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
        if not seen:
            break
    if include_root:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _child(connection, environment: dict, cwd: str, path: list, function: Callable, args: tuple) -> None:
    _die_with_parent()
    subreaper()
    # Forked from the fork server, which started earlier: take the builder's state as it is now.
    os.environ.clear()
    os.environ.update(environment)
    os.chdir(cwd)
    sys.path[:] = path
    for arg in args:
        if getattr(arg, "queue", None) == PARENT_QUEUE:
            arg.queue = _PipeQueue(connection)
    os.setpgrp()  # a group of its own: the model's os.kill(0, ...) or stray children stay in it
    try:
        result = ("ok", function(*args))
    except BuildsysError as exc:
        result = ("error", exc)
    except BaseException as exc:  # noqa: BLE001 - every way out is reported to the parent
        # As text: the parent must not import the model's module to unpickle its exception class,
        # and a KeyboardInterrupt or SystemExit raised by model code ends this entry, not the builder.
        result = ("error", BuildError(f"unexpected {type(exc).__name__}: {exc}\n"
                                      + "".join(traceback.format_exception(exc, limit=8))))
    kill_tree(os.getpid(), include_root=False)  # nothing the model started outlives its build
    try:
        try:
            connection.send(result)
        except _GONE:
            _orphaned()
        except Exception as exc:  # noqa: BLE001 - an exception that does not pickle (pickled before sending)
            connection.send(("error", BuildError(f"{type(result[1]).__name__}: {result[1]}"
                                                 if result[0] == "error" else f"cannot return the result: {exc}")))
    except _GONE:
        _orphaned()
    finally:
        connection.close()


@contextmanager
def _main_module_hidden():
    """``spawn`` re-runs the parent's main script in the child unless told otherwise; the child
    needs buildsys only (and a script without a ``__main__`` guard would build again, forever)."""
    main = sys.modules.get("__main__")
    saved = {name: getattr(main, name) for name in ("__file__", "__spec__") if hasattr(main, name)}
    try:
        for name in saved:
            setattr(main, name, None) if name == "__spec__" else delattr(main, name)
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = {"SIGSEGV": "a crash in native code (the model, torch or TVM)",
                "SIGKILL": "killed, often by the kernel when memory runs out",
                "SIGABRT": "an abort in native code", "SIGBUS": "a crash in native code",
                "SIGILL": "an instruction this CPU lacks"}.get(name, "")
        return f"was killed by {name}" + (f": {hint}" if hint else "")
    return f"exited with code {code} before returning a result (the model called os._exit or sys.exit?)"


# What every build imports first (seconds): the fork server imports it once, and each build
# process is forked from it, starting with torch and TVM loaded but nothing of the model.
PRELOAD = ["buildsys.pipeline._forkserver", "buildsys.pipeline.runner", "torch", "torchvision", "tvm", "tvm.relax", "onnx"]


def _quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (the builder's; its build processes share it)
    without its "leaked semaphore objects" warning: a build killed for a crash, a timeout or the
    builder's own ``kill -9`` cannot release what the model allocated, and the tracker removes it
    when the builder exits, as it should, but said so on the user's terminal."""
    from multiprocessing import resource_tracker

    saved = list(sys.warnoptions)
    sys.warnoptions.append("ignore::UserWarning:multiprocessing.resource_tracker")  # its command line's -W
    try:
        resource_tracker.ensure_running()
    finally:
        sys.warnoptions[:] = saved


@functools.lru_cache(maxsize=1)
def _context():
    _quiet_resource_tracker()
    if os.environ.get("BUILDSYS_BUILD_START", "").strip().lower() == "spawn":
        return get_context("spawn")  # a fresh interpreter per build: slower, shares nothing
    context = get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_server() -> None:
    """Start the fork server now, from the calling thread (it dies with the thread that started it)."""
    if _context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        with _main_module_hidden():
            forkserver.ensure_running()


def run_isolated(function: Callable, args: tuple, *, key: str, timeout_s: float | None = None,
                 on_message: Callable[[Any], None] | None = None, poll_s: float = 0.2) -> Any:
    """``function(*args)`` in a fresh process; its result, or its exception re-raised here.
    A crash, an exit without a result or the deadline raise BuildError naming the cause."""
    if _stopping:
        raise BuildError("not started: the build was interrupted", key=key, stage="worker")
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, dict(os.environ), os.getcwd(), list(sys.path),
                                                   function, args),
                              name=f"buildsys-build-{key[:12]}", daemon=True)
    with _main_module_hidden():
        process.start()
    _LIVE.add(process)
    server = _parent_of(process.pid)  # the fork server (or this process, when builds are spawned)
    sender.close()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            if receiver.poll(poll_s):
                try:
                    status, value = receiver.recv()
                except (EOFError, OSError):
                    process.join(5)
                    raise BuildError(f"the build process {_describe_exit(process.exitcode)}", key=key,
                                     stage="worker") from None
                if status == "message":
                    if on_message is not None:
                        on_message(value)
                    continue
                process.join(30)
                if status == "ok":
                    return value
                raise value
            if not process.is_alive():
                if receiver.poll(0):  # the result arrived just as it ended
                    continue
                process.join()
                raise BuildError(f"the build process {_describe_exit(process.exitcode)}", key=key, stage="worker")
            if deadline is not None and time.monotonic() > deadline:
                raise BuildError(f"the build took longer than {timeout_s:g} s and was stopped "
                                 "(buildsys build --timeout SECONDS sets the limit)", key=key, stage="timeout")
    finally:
        _kill_group(process)
        if process.pid is not None:
            kill_tree(process.pid, include_root=False)
        if process.is_alive():
            process.kill()
            process.join(10)
        _LIVE.discard(process)
        _kill_orphans(server)
        receiver.close()


def _parent_of(pid: int | None) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError, TypeError):
        return None


def _kill_orphans(server: int | None) -> None:
    """A build process that ended abruptly (``os._exit``, a crash) leaves its escaped children to
    the fork server, a subreaper too (``_forkserver``): whatever it holds that is no running
    build process was left by a build that ended, and goes."""
    if server is None or server == os.getpid():
        return
    running = {p.pid for p in _LIVE}
    for child in _children(server):
        if child not in running:
            kill_tree(child)


def _kill_group(process) -> None:
    """The build's process group: whatever its model forked and left running goes with it."""
    if process.pid is None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all() -> None:
    """Stop every build process this builder started, and their groups (Ctrl-C, an error)."""
    global _stopping
    _stopping = True
    for process in list(_LIVE):
        _kill_group(process)
        if process.is_alive():
            process.kill()


_stopping = False


def reset() -> None:
    global _stopping
    _stopping = False
