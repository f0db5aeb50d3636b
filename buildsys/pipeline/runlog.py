"""One log file per build run: what each stage did and when, and everything the
libraries printed meanwhile (torch, onnxsim and TVM write to the process's file
descriptors, not to Python's ``sys.stderr``), so the console can show progress
and nothing is lost. The path is recorded on the run's registry row.
"""

from __future__ import annotations

import collections
import faulthandler
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

LOGS_DIR = "logs"

# What a build goes through, in order (the tune stage only when an entry is tuned now).
STAGES = ("export", "import", "tune", "build", "verify", "publish")

def new_log_path(store_root: Path, key: str) -> Path:
    """Unique per run: a key is built by one process at a time (its lock). Creates the logs folder."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    folder = Path(store_root) / LOGS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{stamp}-{key[:12]}-{os.getpid()}.log"


# A model printing in a loop must not fill the disk: past this size a log keeps only buildsys' own
# lines ("[buildsys] ..."; stages, the outcome, a failure's traceback), up to OWN_LINES_ROOM more.
LOG_MAX_BYTES = 32 << 20
OWN_LINES_ROOM = 1 << 20


def log_limit() -> int:
    try:
        return max(4096, int(os.environ.get("BUILDSYS_LOG_MAX_BYTES", LOG_MAX_BYTES)))
    except ValueError:
        return LOG_MAX_BYTES


def _capped(data: bytes, size: int, own: bool, stamp: str) -> bytes:
    """What of ``data`` a log of ``size`` bytes still takes: all of it; the part that fits and the
    note that the log was truncated (once: the note takes the log to its cap); or nothing."""
    limit = log_limit()
    if own:
        return data if size + len(data) <= limit + OWN_LINES_ROOM else b""
    if size + len(data) <= limit:
        return data
    if size >= limit:
        return b""
    note = (f"\n{stamp} [buildsys] log truncated at {limit} bytes (BUILDSYS_LOG_MAX_BYTES): what the build printed "
            "after this is dropped; buildsys' own lines still follow\n").encode()
    cut = max(0, limit - size - len(note))
    return data[:cut] + note[:limit - size - cut]


def append_line(path: str | Path, text: str) -> None:
    """One timestamped line, appended whole (O_APPEND), so writers in other processes interleave by line."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    data = "".join(f"{stamp} {line}\n" for line in (text.rstrip("\n").splitlines() or [""])).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except FileNotFoundError:  # its folder was removed (by a model, by hand): make it again
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            return  # a log line is never worth a build
    except OSError:
        return
    try:
        data = _capped(data, os.fstat(fd).st_size, text.startswith("[buildsys]"), stamp)
        if data:
            os.write(fd, data)
    except OSError:
        pass
    finally:
        os.close(fd)


class StageReporter:
    """Called with a stage name as a build enters it: writes the log line and tells the
    parent (directly, or through a multiprocessing queue from a worker). Picklable."""

    def __init__(self, key: str, log_path: str | None, queue=None):
        self.key, self.log_path, self.queue = key, log_path, queue
        self.local: Callable[[str, str, float], None] | None = None  # set in the parent only

    def __getstate__(self):
        return {"key": self.key, "log_path": self.log_path, "queue": self.queue, "local": None}

    def __call__(self, stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        now = time.time()
        if self.log_path:
            append_line(self.log_path, f"[buildsys] stage {stage}")
        if self.local is not None:
            self.local(self.key, stage, now)
        elif self.queue is not None:
            self.queue.put((self.key, stage, now))


class _Tee(logging.Handler):
    def __init__(self, path: str):
        super().__init__(logging.DEBUG)
        self.path = path
        self.setFormatter(logging.Formatter("[%(name)s] %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            append_line(self.path, self.format(record))
        except Exception:  # noqa: BLE001 - logging must never fail a build
            self.handleError(record)


@contextmanager
def captured(log_path: str | Path | None, *, join_timeout_s: float = 5.0) -> Iterator[None]:
    """Send file descriptors 1 and 2 (and Python's logging and warnings, and a fatal
    signal's traceback) into ``log_path`` while the block runs; restore them after.

    Output written while the block runs appears in the log in the order it was
    written, prefixed with the time it arrived. A child process that outlives the
    block keeps writing into a pipe nobody reads after ``join_timeout_s``.
    """
    if log_path is None:
        yield
        return
    path = str(log_path)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
    read_fd, write_fd = os.pipe()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump() -> None:
        pending = b""
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            while True:
                try:
                    chunk = pipe.read(65536)
                except OSError:
                    break
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if lines:
                    append_line(path, b"\n".join(lines).decode("utf-8", "replace"))
        if pending:
            append_line(path, pending.decode("utf-8", "replace"))

    reader = threading.Thread(target=pump, name="buildsys-log", daemon=True)
    reader.start()
    # Python's streams too: they may not be backed by descriptors 1 and 2 (a test runner's capture)
    python_streams = sys.stdout, sys.stderr
    into_log = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    sys.stdout = sys.stderr = into_log
    handler = _Tee(path)
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(min(previous_level or logging.WARNING, logging.INFO))
    logging.captureWarnings(True)
    crash_file = open(path, "a")  # noqa: SIM115 - faulthandler needs a file that stays open
    faulthandler_was = faulthandler.is_enabled()
    faulthandler.enable(file=crash_file)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = python_streams
        into_log.close()
        if faulthandler_was:
            faulthandler.enable(file=sys.__stderr__)
        else:
            faulthandler.disable()
        crash_file.close()
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(previous_level)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        reader.join(join_timeout_s)


def remove_old_logs(store_root: str | Path, older_than_s: float, *, dry_run: bool = False) -> list[Path]:
    """Log files not written to for ``older_than_s`` (their runs' rows stay; `buildsys log` says the log is gone)."""
    cutoff = time.time() - older_than_s
    old = sorted(p for p in (Path(store_root) / LOGS_DIR).glob("*.log") if p.stat().st_mtime < cutoff)
    if not dry_run:
        for path in old:
            path.unlink(missing_ok=True)
    return old


def tail(path: str | Path, lines: int = 40) -> list[str]:
    """The last ``lines`` lines of a log."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n") for line in collections.deque(f, maxlen=lines)]


def read_run_log(run, *, lines: int | None = None, path_only: bool = False):
    """``buildsys log``: a build run's log, whole or its last ``lines`` lines (each with its newline),
    or only its path. A run without a log, or a log that is gone, is a ``UsageError``."""
    import socket

    from buildsys.errors import UsageError

    where = f"run {run.id} of {run.key[:12]} ({run.label}, {run.status}, started {run.started_at:%Y-%m-%d %H:%M:%S})"
    if not run.log_path:
        raise UsageError(f"{where} has no log file (built before build logs were kept)")
    if path_only:
        return run.log_path
    try:
        if lines is not None:
            return [line + "\n" for line in tail(run.log_path, lines)]
        return open(run.log_path, encoding="utf-8", errors="replace")  # noqa: SIM115 - streamed by the caller
    except FileNotFoundError:
        elsewhere = f" (it was written on {run.host})" if run.host != socket.gethostname() else ""
        raise UsageError(f"{where}: its log {run.log_path} is gone{elsewhere}") from None
