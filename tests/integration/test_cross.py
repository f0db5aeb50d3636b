"""A tiny CNN built for aarch64 on this host: an aarch64 library, parity under qemu-user, refused
by the loader here; built without a way to run it, it is recorded unverified and not signed; the
thin runtime loads it by key, alias and bundle in an aarch64 runtime-only environment."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from buildsys import platforms
from buildsys.artifacts import manifest as manifest_format
from buildsys.artifacts.store import Store

from tests.fixtures.capabilities import machine_lacks
from tests.fixtures.workspace import Workspace, tiny_cnn_config

pytestmark = pytest.mark.model

CONFIG = tiny_cnn_config('target: ["llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon,+dotprod"]')


@pytest.fixture(scope="module")
def arm_built(tmp_path_factory, aarch64_sysroot):
    ws = Workspace(tmp_path_factory.mktemp("arm"), CONFIG)
    assert ws.cli("build") == 0
    (record,) = ws.registry.list()
    return ws, record


def _manifest(ws, record) -> dict:
    return manifest_format.read_stored(Store(ws.store), record)


def test_built_for_aarch64_verified_under_qemu(arm_built):
    ws, record = arm_built
    manifest = _manifest(ws, record)
    library = Store(ws.store).object_path(record.file("lib.so").digest)
    assert platforms.elf_header(library) == (183, 2)  # EM_AARCH64, 64-bit
    assert manifest["cpu"]["arch"] == "aarch64" and manifest["cpu"]["elf_machine"] == 183
    assert {"asimd", "asimddp", "fp"} <= set(manifest["cpu"]["required_features"])
    assert manifest["verification"]["status"] == "verified" and manifest["verification"]["how"] == "qemu-user"
    assert manifest["parity"]["passed"] and manifest["parity"]["max_rel"] < 1e-5
    assert record.status == "ok" and record.parity_max_rel == manifest["parity"]["max_rel"]
    latency = manifest["latency"]
    assert latency["artifact_ms"] is None and latency["emulated"] and "not latency" in latency["note"]
    assert manifest["default_schedules"]["packed_weights"] > 0  # the weights were packed on the host


def test_the_loader_refuses_it_here_and_bench_prints_no_number(arm_built, capsys):
    ws, record = arm_built
    if platforms.host_arch() == "aarch64":
        machine_lacks("this host is aarch64: the artifact is native here, nothing to refuse")
    capsys.readouterr()
    assert ws.cli("run", record.key[:10]) == 7
    err = capsys.readouterr().err
    assert f"built for aarch64-linux-gnu (cortex-a72); this machine is {platforms.host_arch()}" in err
    assert ws.cli("bench", record.key[:10], "--rounds", "1", "--number", "1", "--json") == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert "ms" not in result["runners"]["artifact"] and "not latency" in result["runners"]["artifact"]["error"]


def test_the_runtime_loads_it_by_key_alias_and_bundle_under_qemu(arm_built, tmp_path):
    ws, record = arm_built
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "smoke"))
    from cross_smoke import guest_smoke

    assert ws.cli("alias", "set", "arm", record.key[:8]) == 0
    assert ws.cli("export", record.key[:8], "-o", str(tmp_path / "bundles")) == 0
    seen = guest_smoke(ws.store, record.key, "arm", tmp_path / "bundles" / record.key)
    assert seen["ok"] and seen["machine"] == "aarch64" and seen["loads"] == ["prefix", "alias", "bundle"]
    assert "libtvm.so" not in seen["tvm_libraries"]


def test_without_an_emulator_it_is_built_but_not_verified(fresh, aarch64_linker, monkeypatch, capsys, tmp_path):
    from buildsys.pipeline import emulation

    def unavailable(row):
        raise emulation.Unavailable(f"{row.emulator} is not installed: install the Debian package qemu-user-static")

    monkeypatch.setenv("BUILDSYS_BUILD_IN_PROCESS", "1")  # the patch applies to this process
    monkeypatch.setattr(emulation, "emulator", unavailable)
    ws = fresh(CONFIG)
    assert ws.cli("build") == 0
    (record,) = ws.registry.list()
    manifest = _manifest(ws, record)
    assert record.status == "unverified" and record.parity_max_rel is None
    assert manifest["verification"]["status"] == "unverified"
    assert "qemu-user-static" in manifest["verification"]["reason"]
    assert manifest["parity"]["passed"] is None and manifest["latency"]["artifact_ms"] is None
    capsys.readouterr()
    assert ws.cli("ls") == 0
    assert "unverified" in capsys.readouterr().out
    assert ws.cli("show", record.key[:8], "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["registry"]["status"] == "unverified" and "qemu-user-static" in shown["manifest"]["parity"]["not_verified"]
    key = tmp_path / "release.key"
    assert ws.cli("keygen", "-o", str(key)) == 0
    capsys.readouterr()
    assert ws.cli("export", record.key[:8], "-o", str(tmp_path / "r.tar"), "--sign-key", str(key)) == 2
    assert "never verified against PyTorch" in capsys.readouterr().err
    assert not (tmp_path / "r.tar").exists()
    assert ws.cli("export", record.key[:8], "-o", str(tmp_path / "r.tar"), "--sign-key", str(key),
                  "--allow-unverified") == 0


EVERY_KERNEL = """
models:
  every_kernel: {source: "tests.fixtures.models:every_kernel"}
matrix:
  model: [every_kernel]
  input_size: [32]
  target: [llvm, "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72"]
"""


def test_every_kernel_the_host_schedules_is_scheduled_for_aarch64_and_correct(fresh, aarch64_sysroot):
    """The default schedules are not x86-only: each kernel gets the same schedule for NEON (4 lanes),
    none falls back to TVM's loop nests, and the result matches PyTorch under qemu-user."""
    ws = fresh(EVERY_KERNEL)
    assert ws.cli("build") == 0
    store = Store(ws.store)
    built = {m["cpu"]["arch"]: m for m in (manifest_format.read_stored(store, r) for r in ws.registry.list())}
    host, arm = built[platforms.host_arch()], built["aarch64"]
    assert arm["default_schedules"]["note"] is None and host["default_schedules"]["note"] is None
    assert arm["default_schedules"]["functions"] == host["default_schedules"]["functions"]
    functions = " ".join(arm["default_schedules"]["functions"])
    for kind in ("conv2d_packed", "depthwise_conv2d", "matmul_packed", "mean"):
        assert kind in functions, (kind, functions)
    assert arm["default_schedules"]["packed_weights"] == host["default_schedules"]["packed_weights"] >= 4
    assert arm["verification"]["how"] == "qemu-user" and arm["parity"]["passed"]
    assert arm["parity"]["max_rel"] < 1e-5
