"""Imported by the build fork server only (``isolation.PRELOAD``): the server dies with the builder.

Build processes already die with the fork server (``PR_SET_PDEATHSIG``); without this, a fork
server whose builder was killed with ``kill -9`` lived on, with its builds, until one of them
next wrote to its dead parent.
"""

import ctypes
import signal

try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    # PR_SET_CHILD_SUBREAPER: what a build process that ended abruptly left running becomes the
    # server's child, where the builder finds and kills it (``isolation._kill_orphans``)
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
except (OSError, AttributeError):  # not Linux
    pass
