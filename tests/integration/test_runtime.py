"""The thin loader: verified before it loads, refuses skew, runs without torch."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from unittest import mock

import numpy as np
import pytest

from buildsys.artifacts import manifest as manifest_format
from buildsys.errors import CompatibilityError, IntegrityError
from buildsys.artifacts.registry import FileRecord, NewArtifact
from buildsys.runtime import load_artifact, loader
from buildsys.artifacts.store import Store

pytestmark = pytest.mark.model


@pytest.fixture
def copy_of_built(built, tmp_path):
    """A private copy of the built workspace, safe to tamper with."""
    shutil.copytree(built.store, tmp_path / "artifacts")
    for path in (tmp_path / "artifacts").rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    ws = type(built)(tmp_path, "")
    ws.config = built.config
    return ws


def _record(ws):
    return next(r for r in ws.registry.list() if r.input_size == "32x32")


def test_tampered_library_is_refused_before_loading(copy_of_built):
    ws = copy_of_built
    record = _record(ws)
    store = Store(ws.store)
    lib = store.object_path(record.file("lib.so").digest)
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0x01
    lib.write_bytes(bytes(data))
    with mock.patch.object(loader, "load_executable") as load_executable:
        with pytest.raises(IntegrityError) as info:
            load_artifact(record.key, registry=ws.registry, store=store)
    load_executable.assert_not_called()
    message = str(info.value)
    assert record.key in message and "lib.so" in message
    assert record.file("lib.so").digest in message and "found    sha256:" in message


def test_missing_params_file_is_refused(copy_of_built):
    ws = copy_of_built
    record = _record(ws)
    store = Store(ws.store)
    store.object_path(record.file("params.npz").digest).unlink()
    with mock.patch.object(loader, "load_executable") as load_executable:
        with pytest.raises(IntegrityError, match="missing file"):
            load_artifact(record.key, registry=ws.registry, store=store)
    load_executable.assert_not_called()


def _republish_with_manifest(ws, record, edit):
    store = Store(ws.store)
    manifest = manifest_format.loads(store.read_verified(record.manifest_digest))
    edit(manifest)
    digest, size = store.put_bytes(manifest_format.dumps(manifest))
    files = tuple(f if f.name != "manifest.json" else FileRecord(f.name, digest, size) for f in record.files)
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(NewArtifact) if hasattr(record, f.name)}
    fields.update(manifest_digest=digest, files=files, metrics={})
    ws.registry.publish(NewArtifact(**fields))
    return store


def test_other_tvm_version_is_refused_with_rebuild_hint(copy_of_built):
    ws = copy_of_built
    record = _record(ws)
    store = _republish_with_manifest(ws, record, lambda m: m["runtime"].update(tvm="0.26.0"))
    with mock.patch.object(loader, "load_executable") as load_executable:
        with pytest.raises(CompatibilityError, match="built with TVM 0.26.0.*Rebuild it"):
            load_artifact(record.key, registry=ws.registry, store=store)
    load_executable.assert_not_called()


def test_unknown_manifest_format_is_refused(copy_of_built):
    ws = copy_of_built
    record = _record(ws)
    store = _republish_with_manifest(ws, record, lambda m: m.update(manifest_format=99))
    with pytest.raises(CompatibilityError, match="manifest format 99"):
        load_artifact(record.key, registry=ws.registry, store=store)


def test_loader_process_imports_neither_torch_nor_the_compiler(built):
    record = _record(built)
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from buildsys.runtime import load_artifact
        p = load_artifact({record.key[:10]!r})
        out = p(np.zeros((1, 3, 32, 32), np.float32))
        print(json.dumps({{"torch": "torch" in sys.modules, "relax": "tvm.relax" in sys.modules, "tvm": "tvm" in sys.modules,
                          "shape": list(out[0].shape)}}))
    """)
    env = {**os.environ, "BUILDSYS_STORE": str(built.store)}
    env.pop("BUILDSYS_REGISTRY", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"torch": False, "relax": False, "tvm": False, "shape": [1, 10]}


def test_wrong_input_shape_is_a_clear_error(built):
    record = _record(built)
    predictor = load_artifact(record.key, registry=built.registry, store=Store(built.store))
    with pytest.raises(ValueError, match=r"input 'input' takes shape \[batch, 3, 32, 32\], got \(1, 3, 48, 48\)"):
        predictor(np.zeros((1, 3, 48, 48), np.float32))
    with pytest.raises(ValueError, match=r"has batch 2; the artifact takes batch 1"):
        predictor(np.zeros((2, 3, 32, 32), np.float32))


def test_bundle_loads_without_the_registry_and_is_verified(built, tmp_path, monkeypatch):
    from buildsys.distribution.bundle import export_bundle

    record = _record(built)
    bundle = export_bundle(record, Store(built.store), tmp_path / "bundles")
    assert sorted(p.name for p in bundle.iterdir()) == ["lib.so", "manifest.json", "params.npz"]
    # no registry reachable: a bundle needs none
    monkeypatch.setenv("BUILDSYS_REGISTRY", "sqlite:////nonexistent/dir/registry.db")
    predictor = load_artifact(bundle)
    assert predictor.key == record.key
    x = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    via_registry = load_artifact(record.key, registry=built.registry, store=Store(built.store))
    np.testing.assert_array_equal(predictor(x)[0], via_registry(x)[0])

    os.chmod(bundle / "params.npz", 0o644)
    data = bytearray((bundle / "params.npz").read_bytes())
    data[-100] ^= 0xFF
    (bundle / "params.npz").write_bytes(bytes(data))
    with mock.patch.object(loader, "load_executable") as load_executable:
        with pytest.raises(IntegrityError, match="params.npz"):
            load_artifact(bundle)
    load_executable.assert_not_called()


def test_cli_export_writes_a_bundle(built, tmp_path, capsys):
    record = _record(built)
    assert built.cli("export", record.key[:8], "-o", str(tmp_path / "out")) == 0
    assert (tmp_path / "out" / record.key / "manifest.json").is_file()


def test_missing_cpu_features_are_refused(built):
    record = _record(built)
    manifest = manifest_format.loads(Store(built.store).read_verified(record.manifest_digest))
    manifest["cpu"] = {"required_features": ["avx2", "avx512f"]}
    manifest["spec"]["target"] = {"kind": "llvm", "mcpu": "skylake-avx512"}
    with pytest.raises(CompatibilityError, match="skylake-avx512.*lacks: avx512f"):
        loader.check_compatibility(manifest, record.key, cpu_flags={"avx", "avx2", "fma"})
    loader.check_compatibility(manifest, record.key, cpu_flags={"avx2", "avx512f"})  # all present: fine
