"""Where a build for another architecture checks parity: a board reached through TVM's RPC.

A tracker (``python -m tvm.exec.rpc_tracker``) hands out the boards that registered with it under
a key (``python -m tvm.exec.rpc_server --tracker HOST:PORT --key rasp4`` on each board): the route
tvmc's ``--rpc-tracker`` and ``--rpc-key`` take. builds.yaml names one for the whole matrix::

    verify:
      rpc: {tracker: "192.168.1.10:9190", key: rasp4, timeout: 120}

or the environment does (``BUILDSYS_RPC_TRACKER``, ``BUILDSYS_RPC_KEY``, ``BUILDSYS_RPC_TIMEOUT``)
and wins over the file: a CI runner beside the board sets it without editing the matrix, and
``BUILDSYS_RPC_TRACKER=off`` turns the file's route off (parity then runs under qemu-user).
``timeout`` bounds the wait for a free board; the session itself has its own bound
(``pipeline/remote.py``).

Where parity runs does not change the artifact, so the route is no part of the build key:
``BuildSpec`` carries it outside comparison and ``to_dict`` leaves it out.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from buildsys.errors import ConfigError

ENV_TRACKER, ENV_KEY, ENV_TIMEOUT = "BUILDSYS_RPC_TRACKER", "BUILDSYS_RPC_KEY", "BUILDSYS_RPC_TIMEOUT"
VERIFY_FIELDS = ("rpc",)
RPC_FIELDS = ("tracker", "key", "timeout")
DEFAULT_WAIT_S = 120.0  # a board busy with another build's parity run frees up in seconds to minutes
MAX_WAIT_S = 24 * 3600.0
OFF = ("off", "none", "no")
# The tracker splits what a server reports on ':' and the session header on whitespace.
_KEY_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_TRACKER_HINT = "write HOST:PORT, e.g. 192.168.1.10:9190 or [fe80::1]:9190"


@dataclass(frozen=True)
class RpcRoute:
    """A tracker and the key its boards registered under; ``wait_s`` bounds the wait for a free one."""

    host: str
    port: int
    key: str
    wait_s: float = DEFAULT_WAIT_S
    origin: str = field(default="", compare=False)  # "builds.yaml:3 (verify.rpc)" or the variables, for messages

    @property
    def tracker(self) -> str:
        return tracker_address(self.host, self.port)

    def to_dict(self) -> dict:
        """What the manifest records: where parity ran (TVM's RPC protocol has no credentials)."""
        return {"tracker": self.tracker, "key": self.key}


def tracker_address(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets: what parse_tracker reads back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_tracker(text: Any, where: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for an IPv6 address) -> (host, port)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"the tracker is HOST:PORT, got {text!r}", field=where, hint=_TRACKER_HINT)
    host, colon, port = text.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if (not colon or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host or " " in host
            or (":" in host and not bracketed)):  # fe80::1 alone: which colon starts the port?
        raise ConfigError(f"the tracker is HOST:PORT with a port 1..65535, got {text.strip()!r}", field=where,
                          hint=_TRACKER_HINT)
    return host, int(port)


def parse_key(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _KEY_RE.fullmatch(value):
        raise ConfigError(f"the RPC key is the name the boards registered under (letters, digits, '_', '-', "
                          f"'.'), got {value!r}", field=where,
                          hint="the --key of `python -m tvm.exec.rpc_server` on the board, e.g. rasp4")
    return value


def parse_wait(value: Any, where: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_WAIT_S:
        raise ConfigError(f"the timeout is the seconds to wait for a free board, more than 0 and at most "
                          f"{MAX_WAIT_S:.0f}, got {value!r}", field=where, hint="e.g. timeout: 120")
    return float(value)


def rpc_from_config(raw: Mapping[str, Any], origin: str) -> RpcRoute:
    """builds.yaml's ``verify.rpc`` mapping (plain values; unknown fields already refused)."""
    for name in ("tracker", "key"):
        if name not in raw:
            raise ConfigError(f"verify.rpc needs {name}", field=f"verify.rpc.{name}",
                              hint='e.g. verify: {rpc: {tracker: "192.168.1.10:9190", key: rasp4}}')
    host, port = parse_tracker(raw["tracker"], "verify.rpc.tracker")
    wait = parse_wait(raw["timeout"], "verify.rpc.timeout") if "timeout" in raw else DEFAULT_WAIT_S
    return RpcRoute(host, port, parse_key(raw["key"], "verify.rpc.key"), wait, origin=origin)


def rpc_off(environ: Mapping[str, str] = os.environ) -> bool:
    """``BUILDSYS_RPC_TRACKER=off``: no board for this run, whatever builds.yaml says."""
    return environ.get(ENV_TRACKER, "").strip().lower() in OFF


def rpc_from_env(environ: Mapping[str, str] = os.environ) -> RpcRoute | None:
    """The environment's route; None when it names none (or turns RPC off)."""
    tracker, key = environ.get(ENV_TRACKER, "").strip(), environ.get(ENV_KEY, "").strip()
    if rpc_off(environ):
        return None
    if not tracker:
        if key:
            raise ConfigError(f"{ENV_KEY} is set but {ENV_TRACKER} is not", field=ENV_TRACKER,
                              hint=f"set {ENV_TRACKER}=HOST:PORT too, or unset {ENV_KEY}")
        return None
    if not key:
        raise ConfigError(f"{ENV_TRACKER} is set but {ENV_KEY} is not: the tracker hands out boards by key",
                          field=ENV_KEY, hint=f"set {ENV_KEY} to the --key the board's rpc_server registered")
    host, port = parse_tracker(tracker, ENV_TRACKER)
    raw_wait = environ.get(ENV_TIMEOUT, "").strip()
    wait = parse_wait(raw_wait, ENV_TIMEOUT) if raw_wait else DEFAULT_WAIT_S
    return RpcRoute(host, port, parse_key(key, ENV_KEY), wait, origin=f"{ENV_TRACKER}/{ENV_KEY}")


def rpc_route(configured: RpcRoute | None, environ: Mapping[str, str] = os.environ) -> RpcRoute | None:
    """The route a build takes: the environment's, else builds.yaml's, else none."""
    if rpc_off(environ):
        return None
    return rpc_from_env(environ) or configured
