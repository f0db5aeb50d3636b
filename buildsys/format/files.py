"""The file primitives every layer shares, written once: an atomic write, a lock, a durable rename.

One rule for writes that must survive a crash (a depfile, a tuning record, a cache entry, a store
object): the bytes go to a temporary file beside the target (same file system, so the rename is
atomic), are flushed and fsynced, renamed over the target, and the folder is fsynced so that the
rename itself is on disk. A failure at any point leaves the old file (or none) and no temporary
file. A lock is ``flock`` on a file of its own: released by the kernel when its holder dies, so
a ``kill -9`` never leaves a stale lock behind.

Standard library only: the thin runtime imports this module too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Iterator


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(staged: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Rename ``staged`` (on ``dest``'s file system) over ``dest``, its bytes and the rename on disk."""
    with open(staged, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(staged, dest)
    fsync_dir(Path(dest).parent)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """``path`` holds ``data`` whole, or keeps what it held: never a torn file (see the module)."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no half-written temporary file stays behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (created when missing) for the ``with`` block. Yields
    whether it was taken: always True when ``blocking``, False at once when another holds it.
    OSError when the lock file cannot be opened (the caller words it for its own folder)."""
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
