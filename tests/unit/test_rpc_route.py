"""Verification over TVM's RPC, without a board: where builds.yaml and the environment name the
tracker, that the route is no part of the key, and what an unusable tracker says, in bounded time."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from contextlib import closing

import numpy as np
import pytest

from buildsys.config.spec import parse_specs
from buildsys.config.verify import RpcRoute, rpc_from_env, rpc_route
from buildsys.errors import BuildError, ConfigError
from buildsys.pipeline import remote
from buildsys.pipeline.verification import board_for

from tests.fixtures.guards import time_bound

MATRIX = """
models:
  m: {source: "tests.fixtures.models:tiny_cnn"}
matrix:
  model: [m]
  input_size: [32]
  target: [llvm, "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72"]
"""
RPC = 'verify:\n  rpc:\n    tracker: "10.0.0.5:9190"\n    key: rasp4\n'
ENV = {"BUILDSYS_RPC_TRACKER": "192.168.1.10:9190", "BUILDSYS_RPC_KEY": "rasp4b", "BUILDSYS_RPC_TIMEOUT": "30"}


def test_builds_yaml_names_a_tracker_and_the_keys_stay_what_they_were():
    plain, routed = parse_specs(MATRIX), parse_specs(MATRIX + RPC)
    assert [s.to_dict() for s in routed] == [s.to_dict() for s in plain] and routed == plain
    route = routed[1].rpc
    assert route == RpcRoute("10.0.0.5", 9190, "rasp4", 120.0)
    assert route.origin == "builds.yaml:9 (verify.rpc)" and route.to_dict() == {"tracker": "10.0.0.5:9190",
                                                                                 "key": "rasp4"}
    assert parse_specs(MATRIX + "verify:\n  rpc: {tracker: \"[fe80::1]:9190\", key: a, timeout: 5}\n")[0].rpc \
        == RpcRoute("fe80::1", 9190, "a", 5.0)
    assert parse_specs(MATRIX + "verify: {rpc: null}\n")[0].rpc is None


@pytest.mark.parametrize("rpc, where, message", [
    ('{tracker: "10.0.0.5", key: rasp4}', "verify.rpc.tracker", "HOST:PORT with a port 1..65535, got '10.0.0.5'"),
    ('{tracker: "10.0.0.5:70000", key: rasp4}', "verify.rpc.tracker", "got '10.0.0.5:70000'"),
    ('{tracker: "fe80::1:9190", key: rasp4}', "verify.rpc.tracker", "got 'fe80::1:9190'"),
    ('{tracker: 9190, key: rasp4}', "verify.rpc.tracker", "the tracker is HOST:PORT, got 9190"),
    ('{tracker: "h:9190"}', "verify.rpc.key", "verify.rpc needs key"),
    ('{tracker: "h:9190", key: "ras p4"}', "verify.rpc.key", "registered under (letters, digits"),
    ('{tracker: "h:9190", key: rasp4, timeout: 0}', "verify.rpc.timeout", "seconds to wait for a free board"),
    ('{tracker: "h:9190", key: rasp4, timeout: true}', "verify.rpc.timeout", "got True"),
    ('{tracker: "h:9190", key: rasp4, timout: 5}', "verify.rpc.timout", "unknown field 'timout'"),
    ('"h:9190"', "verify.rpc", "expected a mapping"),
])
def test_a_malformed_route_names_its_line_and_field(rpc, where, message):
    with pytest.raises(ConfigError, match=rf"builds.yaml:\d+: {re.escape(where)}: .*{re.escape(message)}") as info:
        parse_specs(MATRIX + f"verify:\n  rpc: {rpc}\n")
    assert info.value.line >= 8
    with pytest.raises(ConfigError, match="unknown field 'qemu'"):
        parse_specs(MATRIX + "verify: {qemu: true}\n")


def test_the_environment_wins_and_can_turn_the_route_off():
    configured = parse_specs(MATRIX + RPC)[1].rpc
    assert rpc_route(configured, {}) == configured
    assert rpc_route(configured, ENV) == RpcRoute("192.168.1.10", 9190, "rasp4b", 30.0)
    assert rpc_route(configured, ENV).origin == "BUILDSYS_RPC_TRACKER/BUILDSYS_RPC_KEY"
    assert rpc_route(configured, {"BUILDSYS_RPC_TRACKER": "off"}) is None
    assert rpc_route(None, {}) is None and rpc_from_env({"BUILDSYS_RPC_TRACKER": " "}) is None


@pytest.mark.parametrize("environ, message", [
    ({"BUILDSYS_RPC_TRACKER": "h:9190"}, "BUILDSYS_RPC_TRACKER is set but BUILDSYS_RPC_KEY is not"),
    ({"BUILDSYS_RPC_KEY": "rasp4"}, "BUILDSYS_RPC_KEY is set but BUILDSYS_RPC_TRACKER is not"),
    ({"BUILDSYS_RPC_TRACKER": "h", "BUILDSYS_RPC_KEY": "k"}, "BUILDSYS_RPC_TRACKER: the tracker is HOST:PORT"),
    ({**ENV, "BUILDSYS_RPC_TIMEOUT": "soon"}, "BUILDSYS_RPC_TIMEOUT: the timeout is the seconds"),
])
def test_a_malformed_environment_names_the_variable(environ, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        rpc_route(None, environ)


def test_only_a_build_for_another_architecture_goes_to_the_board(monkeypatch):
    monkeypatch.delenv("BUILDSYS_RPC_TRACKER", raising=False)
    monkeypatch.delenv("BUILDSYS_RPC_KEY", raising=False)
    host, arm = parse_specs(MATRIX + RPC)
    assert board_for(host) is None and board_for(arm) == arm.rpc
    monkeypatch.setenv("BUILDSYS_RPC_TRACKER", "h:9190")  # read before minutes of work
    with pytest.raises(ConfigError, match="BUILDSYS_RPC_KEY is not"):
        board_for(arm)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_tracker_is_refused_at_once_naming_the_next_step():
    port = _closed_port()
    # TVM's own client retries a refused tracker for 60 s, then each request 5 times
    with time_bound(30, "a request to a closed port"), \
            pytest.raises(remote.Refused, match=rf"cannot reach the RPC tracker at 127.0.0.1:{port}: Connection "
                                                rf"refused; start one \(`python -m tvm.exec.rpc_tracker .*"
                                                rf"BUILDSYS_RPC_TRACKER=off"):
        remote.request_board("127.0.0.1", port, "rasp4", wait_s=60)


def _listener(answer: bytes | None):
    """A loopback service that accepts and then sends ``answer`` (None: says nothing)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        with closing(server):
            conn, _ = server.accept()
            with conn:
                if answer is not None:
                    conn.sendall(answer)
                time.sleep(3)

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def test_a_service_that_is_no_tracker_is_named_so_in_bounded_time():
    port = _listener(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(remote.Refused, match=rf"127.0.0.1:{port} answered, but not as a TVM RPC tracker"):
        remote.request_board("127.0.0.1", port, "rasp4", wait_s=60)
    silent = _listener(None)
    with time_bound(30, "a summary from a service that says nothing"), \
            pytest.raises(remote.Refused, match="took the connection but sent no tracker greeting within 0.5 s"):
        remote.tracker_summary("127.0.0.1", silent, timeout=0.5)


def test_the_build_fails_naming_the_route_and_the_tracker(tmp_path):
    """The whole path a build takes: the session's child process, its refusal, the build's error."""
    library = tmp_path / "lib.so"  # the header of an aarch64 library is all the parent reads
    library.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(9) + (3).to_bytes(2, "little") + (183).to_bytes(2, "little")
                        + bytes(44))
    route = RpcRoute("127.0.0.1", _closed_port(), "rasp4", 5.0, origin="builds.yaml:9 (verify.rpc)")
    with pytest.raises(BuildError, match=r"verify: verification over RPC \(tracker 127.0.0.1:\d+, key 'rasp4', from "
                                         r"builds.yaml:9 \(verify.rpc\)\): cannot reach the RPC tracker"):
        remote.run(route, library, [], {1: [np.zeros((1, 3, 32, 32), "float32")]}, key="ab" * 32)


def test_a_session_past_its_deadline_is_stopped(tmp_path, monkeypatch):
    def hung(*args, timeout, **kwargs):
        raise subprocess.TimeoutExpired(args[0], timeout)

    monkeypatch.setattr(remote.subprocess, "run", hung)
    with pytest.raises(BuildError, match=r"no answer within 190 s \(the session's bound is "
                                         r"BUILDSYS_RPC_SESSION_TIMEOUT; did the board drop off the network\?\)"):
        remote._run_child(RpcRoute("h", 9190, "rasp4", 50.0, origin="env"), tmp_path, 190, "ab" * 32)
