"""Parity on a board over TVM's RPC, with no board: a tracker on loopback and TVM's RPC server for
aarch64 under qemu-user (tests/fixtures/rpc.py). The tiny CNN built for aarch64 is verified there
through builds.yaml's verify.rpc, under the key it has without it; a key no board registered under,
or a board that stays busy, fails in bounded time naming the cause."""

from __future__ import annotations

import json
import time

import pytest

from buildsys.artifacts import manifest as manifest_format
from buildsys.artifacts.store import Store
from buildsys.pipeline import remote

from tests.fixtures.guards import time_bound
from tests.fixtures.rpc import BOARD_KEY, qemu_board, tracker
from tests.fixtures.workspace import Workspace, tiny_cnn_config

pytestmark = pytest.mark.model

CONFIG = tiny_cnn_config('target: ["llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72"]')


@pytest.fixture(scope="module")
def board(tmp_path_factory, aarch64_sysroot):
    """(tracker host, tracker port), with the aarch64 board registered under BOARD_KEY."""
    logs = tmp_path_factory.mktemp("rpc-logs")
    with tracker(logs) as (host, port), qemu_board(aarch64_sysroot, port, logs):
        yield host, port


def _with_rpc(config: str, tracker_address: str, key: str) -> str:
    return config + f"verify:\n  rpc: {{tracker: \"{tracker_address}\", key: {key}, timeout: 60}}\n"


def _planned_keys(ws: Workspace, capsys) -> list[str]:
    capsys.readouterr()
    assert ws.cli("plan", "--json") == 0
    return [entry["key"] for entry in json.loads(capsys.readouterr().out)["entries"]]


def test_built_for_aarch64_verified_on_a_board_over_rpc(board, tmp_path, capsys):
    host, port = board
    (tmp_path / "rpc").mkdir(), (tmp_path / "plain").mkdir()
    ws = Workspace(tmp_path / "rpc", _with_rpc(CONFIG, f"{host}:{port}", BOARD_KEY))
    plain = Workspace(tmp_path / "plain", CONFIG)
    (key,) = _planned_keys(ws, capsys)
    assert _planned_keys(plain, capsys) == [key]  # where parity runs is not part of the artifact
    start = time.perf_counter()
    assert ws.cli("build") == 0
    seconds = time.perf_counter() - start
    assert "on a test-a72 board over RPC" in capsys.readouterr().out
    (record,) = ws.registry.list()
    manifest = manifest_format.read_stored(Store(ws.store), record)
    verification = manifest["verification"]
    assert verification["status"] == "verified" and verification["how"] == "rpc"
    assert verification["tracker"] == f"{host}:{port}" and verification["key"] == BOARD_KEY
    assert verification["server"].startswith("127.0.0.1:") and verification["remote_ms"] > 0
    assert manifest["parity"]["passed"] and manifest["parity"]["max_rel"] < 1e-5
    assert record.status == "ok" and record.parity_max_rel == manifest["parity"]["max_rel"]
    latency = manifest["latency"]
    assert latency["artifact_ms"] is None and not latency["emulated"] and "over RPC" in latency["note"]
    print(f"RPC-verified tiny CNN build: {seconds:.1f} s (verify {manifest['timings']['verify_s']:.1f} s, "
          f"first run {verification['remote_ms']:.0f} ms), parity max_abs {manifest['parity']['max_abs']:.2e} "
          f"max_rel {manifest['parity']['max_rel']:.2e}")


def test_a_key_no_board_registered_under_fails_the_build_naming_the_keys(board, fresh, monkeypatch, capsys):
    """The environment wins over builds.yaml; nothing is published, so the next build tries again."""
    host, port = board
    monkeypatch.setenv("BUILDSYS_RPC_TRACKER", f"{host}:{port}")
    monkeypatch.setenv("BUILDSYS_RPC_KEY", "test-a27")
    ws = fresh(_with_rpc(CONFIG, f"{host}:{port}", BOARD_KEY))
    assert ws.cli("build") == 3
    err = capsys.readouterr().err
    assert "no board is registered under key 'test-a27' (registered: test-a72)" in err
    assert "did you mean 'test-a72'?" in err and "BUILDSYS_RPC_TRACKER/BUILDSYS_RPC_KEY" in err
    assert ws.registry.list() == []


def test_a_library_the_board_cannot_load_names_what_it_needs(board, tmp_path):
    """A board of another architecture than the library's (here: a host library sent to the aarch64
    board) fails with dlopen's misleading "No such file or directory"; the error says what to check."""
    import numpy as np
    import tvm
    from tvm import relax
    from tvm.script import relax as R

    from buildsys import platforms
    from buildsys.config.verify import RpcRoute
    from buildsys.errors import BuildError

    @tvm.script.ir_module
    class Relu:
        @R.function
        def main(x: R.Tensor((2, 3), "float32")):
            return R.nn.relu(x)

    library = tmp_path / "lib.so"
    relax.build(Relu, tvm.target.Target({"kind": "llvm"})).export_library(str(library))
    host, port = board
    route = RpcRoute(host, port, BOARD_KEY, 30, origin="the test")
    with pytest.raises(BuildError, match=rf"could not load the library .*needs {platforms.host_arch()} and "
                                         rf"apache-tvm .*check what the boards under key 'test-a72' are"):
        remote.run(route, library, [], {1: [np.ones((2, 3), "float32")]}, key="ab" * 32)


def test_a_busy_board_is_waited_for_within_the_timeout(board):
    """The only board is held by a session: a second request gives up after its timeout. (Last: the
    tracker keeps the abandoned request a moment.)"""
    from tvm import rpc

    host, port = board
    url, board_port, matchkey = remote.request_board(host, port, BOARD_KEY, wait_s=30)
    session = rpc.connect(url, board_port, matchkey, session_timeout=60)
    try:
        busy = r"none of the 1 board\(s\) under key 'test-a72' came free within 2 s"
        with time_bound(60, "a request for a busy board"), pytest.raises(remote.Refused, match=busy):
            remote.request_board(host, port, BOARD_KEY, wait_s=2)
    finally:
        del session
