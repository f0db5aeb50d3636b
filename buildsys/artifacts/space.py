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
    """'no space left on device', 'read-only file system', 'immutable folder' (``chattr +i``) or
    'permission denied' (this user may not write there) when ``path``, or the folder that holds it,
    cannot take writes now; None when it looks writable (the failure was something else)."""
    existing = _existing(path)
    try:
        st = os.statvfs(existing)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return "read-only file system"
    if st.f_blocks and st.f_bavail * st.f_frsize < NEARLY_FULL:  # (no blocks: /proc and its kind)
        return "no space left on device"
    # SQLite writes its -wal and -shm files beside the database, the store its objects into folders
    for where in dict.fromkeys((existing, existing if existing.is_dir() else existing.parent)):
        if not os.access(where, os.W_OK):
            return "immutable folder" if _immutable(where) else "permission denied"
    return None


def remedy(why: str) -> str:
    """What to do about a ``storage_problem``."""
    return {"no space left on device": "free space on that disk",
            "read-only file system": "remount it read-write",
            "immutable folder": "clear its immutable flag (chattr -i)"}.get(
        why, "give this user write permission there, or run as its owner")


def unwritable_place(path: str | os.PathLike, why: str) -> Path:
    """The place a ``storage_problem`` concerns: for a permission or immutable flag, the folder
    when the file itself (``registry.db``) could be written but not what goes beside it."""
    path = Path(path)
    if why in ("immutable folder", "permission denied") and path.is_file() and os.access(path, os.W_OK):
        return path.parent
    return path


_FS_IOC_GETFLAGS, _FS_IMMUTABLE_FL = 0x80086601, 0x10


def _immutable(path: Path) -> bool:
    """``chattr +i``: not even root may write there."""
    import array
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags)
        return bool(flags[0] & _FS_IMMUTABLE_FL)
    except OSError:  # a file system without these flags
        return False
    finally:
        os.close(fd)


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
