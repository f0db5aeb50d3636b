"""Running a library on a real board through TVM's RPC: the parity check on the target itself.

The route is tvmc's: ask the tracker for a board registered under the key, connect to the RPC
server it names, upload ``lib.so``, load it there, build a Relax VM over the remote module, send
the artifact's weights and each batch's parity inputs, run, and download the outputs. Parity is
then compared here, as for a native or emulated run.

TVM's client waits without bound in several places (a tracker that refuses is retried for a
minute, a request for a busy key waits forever, a board that drops off the network leaves a read
waiting for TCP to give up), so the session runs in a child process of its own
(``python -m buildsys.pipeline.remote DIR``, with the files laid out as for
``runtime/oneshot.py``) that the build waits for with a deadline, and the tracker is asked with
sockets that time out: the connection (``CONNECT_TIMEOUT_S``), the wait for a free board
(``verify.rpc.timeout``), the session (``BUILDSYS_RPC_SESSION_TIMEOUT``; the server ends a session
that outlives it too).

A board that cannot be had or a library that fails on it fails the build (nothing is published):
the route was asked for, and a board that is down now must not leave an artifact recorded as
unverified that no later build would verify.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

from buildsys.config.toolchain import package_version
from buildsys.config.verify import ENV_TRACKER, RpcRoute, tracker_address
from buildsys.errors import BuildError, did_you_mean
from buildsys.platforms import describe_elf, elf_header

CONNECT_TIMEOUT_S = 10.0
SESSION_TIMEOUT_S = int(os.environ.get("BUILDSYS_RPC_SESSION_TIMEOUT", 1800))
START_S = 120  # the child's own start-up (importing TVM) on a loaded machine
REQUEST, RESULT, FAILURE = "request.json", "result.json", "failure.json"


class Refused(Exception):
    """The board could not be had, or the library failed on it; the text says which and what to do."""


def run(route: RpcRoute, library: Path, params, inputs: dict[int, list], key: str = "?",
        timeout: int = SESSION_TIMEOUT_S) -> tuple[dict[int, tuple[list, float]], dict]:
    """Run ``library`` on each batch's ``inputs`` on a board: ({batch: (outputs, ms)}, where it ran)."""
    from buildsys.runtime.oneshot import collected, lay_out

    work = Path(tempfile.mkdtemp(prefix="buildsys-rpc-"))
    try:
        lay_out(work, library, params, inputs)
        (work / REQUEST).write_text(json.dumps({
            "host": route.host, "port": route.port, "key": route.key, "wait_s": route.wait_s, "session_s": timeout,
            "arch": describe_elf(*elf_header(library)), "tvm": package_version("apache-tvm")}))
        result = _run_child(route, work, CONNECT_TIMEOUT_S + route.wait_s + timeout + START_S, key)
        return collected(work, result["ms"], inputs), {"server": result["server"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _where(route: RpcRoute) -> str:
    return f"verification over RPC (tracker {route.tracker}, key {route.key!r}, from {route.origin})"


def _run_child(route: RpcRoute, work: Path, deadline: float, key: str) -> dict:
    import buildsys

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(buildsys.__file__).parents[1]),
                                                      env.get("PYTHONPATH")]))
    try:
        done = subprocess.run([sys.executable, "-m", "buildsys.pipeline.remote", str(work)], capture_output=True,
                              text=True, timeout=deadline, env=env)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{_where(route)}: no answer within {deadline:.0f} s (the session's bound is "
                         "BUILDSYS_RPC_SESSION_TIMEOUT; did the board drop off the network?)",
                         key=key, stage="verify") from None
    if (work / FAILURE).is_file():
        raise BuildError(f"{_where(route)}: {json.loads((work / FAILURE).read_text())['message']}",
                         key=key, stage="verify")
    if done.returncode != 0 or not (work / RESULT).is_file():
        tail = "\n".join((done.stdout.strip() + "\n" + done.stderr.strip()).strip().splitlines()[-12:])
        raise BuildError(f"{_where(route)}: the RPC client failed (exit code {done.returncode}):\n{tail}",
                         key=key, stage="verify")
    return json.loads((work / RESULT).read_text())


# ------------------------------------------------------------------ the child: tracker and session

def _tracker(host: str, port: int, connect_s: float = CONNECT_TIMEOUT_S) -> socket.socket:
    """A connection to the tracker, greeted; Refused when there is none."""
    from tvm.rpc import base

    shown = tracker_address(host, port)
    start = (f"start one (`python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {port}`), check the address, "
             f"or set {ENV_TRACKER}=off to verify under qemu-user")
    try:
        sock = socket.create_connection((host, port), timeout=connect_s)
    except socket.timeout:
        raise Refused(f"cannot reach the RPC tracker at {shown}: no answer within {connect_s:g} s; {start}") from None
    except OSError as exc:
        raise Refused(f"cannot reach the RPC tracker at {shown}: {exc.strerror or exc}; {start}") from None
    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
    except socket.timeout:
        sock.close()
        raise Refused(f"{shown} took the connection but sent no tracker greeting within {connect_s:g} s "
                      "(is it a TVM RPC tracker?)") from None
    except OSError:
        magic = None
    if magic != base.RPC_TRACKER_MAGIC:
        sock.close()
        raise Refused(f"{shown} answered, but not as a TVM RPC tracker (another service on that port?)")
    return sock


def tracker_summary(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> dict:
    """The tracker's ``server_info`` (boards and their keys) and ``queue_info`` (free, pending per key)."""
    from tvm.rpc import base

    with closing(_tracker(host, port, timeout)) as sock:
        sock.settimeout(timeout)
        try:
            base.sendjson(sock, [base.TrackerCode.SUMMARY])
            code, summary = base.recvjson(sock)
        except (OSError, ValueError, TypeError) as exc:
            raise Refused(f"the tracker at {tracker_address(host, port)} gave no summary within {timeout:g} s "
                          f"({exc or type(exc).__name__})") from None
    if code != base.TrackerCode.SUCCESS:
        raise Refused(f"the tracker at {tracker_address(host, port)} refused a summary ({code})")
    return summary


def registered_keys(summary: dict) -> list[str]:
    """The keys boards registered under, one per board (``server:rasp4`` is reported as ``rasp4``)."""
    return [info["key"].split(":", 1)[1] for info in summary.get("server_info", [])
            if str(info.get("key", "")).startswith("server:")]


def request_board(host: str, port: int, key: str, wait_s: float) -> tuple[str, int, str]:
    """(address, port, match key) of a free board under ``key``; Refused when none is registered or
    none comes free within ``wait_s``."""
    from tvm.rpc import base

    keys = registered_keys(tracker_summary(host, port))
    if key not in keys:
        known = sorted(set(keys))
        typo = did_you_mean(key, known)
        raise Refused(f"no board is registered under key {key!r} (registered: {', '.join(known) or 'none'}); "
                      + (f"{typo} " if typo else "") + "start `python -m tvm.exec.rpc_server --tracker "
                      f"{tracker_address(host, port)} --key {key}` on the board")
    with closing(_tracker(host, port)) as sock:
        sock.settimeout(wait_s)
        try:
            base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", 1])
            code, (url, board_port, matchkey) = base.recvjson(sock)
        except socket.timeout:
            raise Refused(f"none of the {keys.count(key)} board(s) under key {key!r} came free within {wait_s:g} s; "
                          "try again, or wait longer (verify.rpc.timeout, BUILDSYS_RPC_TIMEOUT)") from None
        except (OSError, ValueError, TypeError) as exc:
            raise Refused(f"the tracker dropped the request for {key!r}: {exc}") from None
    if code != base.TrackerCode.SUCCESS:
        raise Refused(f"the tracker refused the request for {key!r} ({code})")
    return url, int(board_port), matchkey


def _fetch(value, session) -> list:
    """A remote VM result (tensor, or nested arrays of tensors) downloaded as a flat numpy list, in
    the order ``runtime.ffi.outputs_to_numpy`` flattens a local one. A remote array is a handle
    here: its items are asked of the board."""
    import tvm

    if isinstance(value, tvm.runtime.Tensor):
        return [value.numpy()]
    size, item = session.get_function("ffi.ArraySize"), session.get_function("ffi.ArrayGetItem")
    return [array for i in range(size(value)) for array in _fetch(item(value, i), session)]


def _last_line(exc: Exception) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def run_on_board(url: str, port: int, matchkey: str, directory: Path, request: dict) -> dict:
    """Upload, load and run the directory's library on the board; outputs-<batch>.npz land beside it."""
    import numpy as np
    import tvm
    from tvm import relax, rpc

    from buildsys.artifacts.manifest import LIBRARY_NAME, PARAMS_NAME
    from buildsys.runtime.oneshot import load_arrays, save_arrays
    from buildsys.runtime.params import read_params

    try:
        session = rpc.connect(url, port, matchkey, session_timeout=request["session_s"])
    except Exception as exc:  # TVM raises its own errors for a refused or unreachable server
        raise Refused(f"the tracker handed out the board at {url}:{port}, which this host cannot reach "
                      f"({_last_line(exc)}); start the board's server with --custom-addr set to an address "
                      "this host reaches") from None
    try:
        session.upload(str(directory / LIBRARY_NAME))
        library = session.load_module(LIBRARY_NAME)
    except Exception as exc:  # dlopen of another architecture's library says "No such file or directory"
        raise Refused(f"the board at {url}:{port} could not load the library ({_last_line(exc)}); the library "
                      f"needs {request['arch']} and apache-tvm {request['tvm']}: check what the boards under key "
                      f"{request['key']!r} are") from None
    try:
        device = session.cpu()
        vm = relax.VirtualMachine(library, device)
        main = vm["main"]
        weights = [tvm.runtime.tensor(np.ascontiguousarray(p), device)
                   for p in read_params((directory / PARAMS_NAME).read_bytes(), "rpc")]
        ms = {}
        for path in sorted(directory.glob("inputs-*.npz")):
            batch = path.stem.split("-", 1)[1]
            args = [tvm.runtime.tensor(a, device) for a in load_arrays(path)]
            start = time.perf_counter()
            outputs = main(*args, *weights)
            ms[batch] = (time.perf_counter() - start) * 1e3
            save_arrays(directory / f"outputs-{batch}.npz", _fetch(outputs, session))
    except Exception as exc:  # whatever the board said: the remote error's text is the message
        raise Refused(f"the library failed on the board at {url}:{port}: {_last_line(exc)}") from None
    return {"server": f"{url}:{port}", "ms": ms}


def main(directory: Path) -> int:
    request = json.loads((directory / REQUEST).read_text())
    try:
        url, port, matchkey = request_board(request["host"], request["port"], request["key"], request["wait_s"])
        result = run_on_board(url, port, matchkey, directory, request)
    except Refused as exc:
        (directory / FAILURE).write_text(json.dumps({"message": str(exc)}))
        return 1
    (directory / RESULT).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
