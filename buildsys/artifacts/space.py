"""Why a write failed, in words: a full disk or a read-only file system, with the path.

Every writer of the store, the registry, the run logs and the depfiles words an ``OSError``
through ``describe_os_error``, so a full disk reads "no space left on device: <path> (N bytes
needed, M free)" instead of "disk I/O error" or a traceback.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Below this many free bytes a folder counts as full: SQLite's -shm file alone takes 32 KiB.
NEARLY_FULL = 64 * 1024


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes an unprivileged writer may still use on the file system holding ``path``."""
    try:
        st = os.statvfs(_existing(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def storage_problem(path: str | os.PathLike) -> str | None:
    """'no space left on device' or 'read-only file system' when the file system holding ``path``
    cannot take writes now; None when it looks writable (the failure was something else)."""
    try:
        st = os.statvfs(_existing(path))
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return "read-only file system"
    if st.f_bavail * st.f_frsize < NEARLY_FULL:
        return "no space left on device"
    return None


def describe_os_error(exc: OSError, path: str | os.PathLike | None = None, *, needed: int | None = None) -> str:
    """``exc`` in words with the path it concerns; a full disk says how much was needed and is free."""
    where = str(path if path is not None else (exc.filename or "?"))
    if exc.errno in FULL_ERRNOS:
        free = free_bytes(where)
        sizes = []
        if needed is not None:
            sizes.append(f"{needed} bytes needed")
        if free is not None:
            sizes.append(f"{free} free")
        return (f"no space left on device: {where}" + (f" ({', '.join(sizes)})" if sizes else "")
                + "; free space on that disk (or point --store / BUILDSYS_STORE elsewhere) and run again")
    if exc.errno == errno.EROFS:
        return f"read-only file system: {where}; this command writes there: make it writable or use another --store"
    return f"{exc.strerror or exc}: {where}"


def storage_errno_in(text: str) -> int | None:
    """The errno of a full disk or a read-only file system that a tool's own words name ("ld: final
    link failed: No space left on device"), else None. Checking free space after the failure is
    not enough: by then the tool has removed its partial output, and the room it needed is back."""
    for code in (*FULL_ERRNOS, errno.EROFS):
        if os.strerror(code) in text:
            return code
    return None


def storage_words(code: int) -> str:
    """How ``storage_problem`` and ``describe_os_error`` name a storage errno."""
    return "read-only file system" if code == errno.EROFS else "no space left on device"


def is_storage_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (*FULL_ERRNOS, errno.EROFS)
