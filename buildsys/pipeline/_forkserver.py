"""Imported by the build fork server only (``isolation.PRELOAD``): the server dies with the builder.

Build processes already die with the fork server (``PR_SET_PDEATHSIG``); without this, a fork
server whose builder was killed with ``kill -9`` lived on, with its builds, until one of them
next wrote to its dead parent.
"""

import ctypes
import signal

try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):  # not Linux
    pass
