"""End-to-end builds of small real models (torch.export -> Relax -> VM -> store -> registry)."""

import os
import time
from unittest import mock

import numpy as np
import pytest

import buildsys.compiler.compile
from buildsys.artifacts import manifest as manifest_format
from buildsys.artifacts.store import Store

pytestmark = pytest.mark.model


def test_build_publishes_every_entry_with_measured_parity(built):
    records = built.registry.list()
    assert sorted((r.model, r.input_size) for r in records) == [
        ("tiny_cnn", "32x32"), ("tiny_cnn", "48x48"), ("upsample", "29x29")]
    store = Store(built.store)
    for r in records:
        assert r.status == "ok"
        assert r.parity_max_rel is not None and r.parity_max_rel <= 1e-4
        assert {"artifact_ms", "torch_eager_ms", "compile_s", "parity_max_rel"} <= set(r.metrics)
        assert sorted(f.name for f in r.files) == ["lib.so", "manifest.json", "params.npz"]
        manifest = manifest_format.loads(store.read_verified(r.manifest_digest), key=r.key)
        assert manifest["key"] == r.key
        assert manifest["parity"]["max_rel"] == r.parity_max_rel
        assert manifest["files"]["lib.so"]["digest"] == r.file("lib.so").digest
        assert "LegalizeOps" in {p["name"] for p in manifest["pass_trace"]}
        assert manifest["toolchain"]["tvm"] and manifest["runtime"]["tvm"]


def test_second_build_compiles_nothing(built, capsys, monkeypatch):
    monkeypatch.setenv("BUILDSYS_BUILD_IN_PROCESS", "1")  # else a build runs in a child the mock cannot see
    with mock.patch.object(buildsys.compiler.compile, "compile_model") as compile_model:
        assert built.cli("build") == 0
    compile_model.assert_not_called()
    out = capsys.readouterr().out
    assert out.count("cached, nothing to do") == 3
    assert "done: 0 built, 3 cached" in out


def test_changing_one_axis_value_rebuilds_only_that_entry(fresh, capsys, monkeypatch):
    monkeypatch.setenv("BUILDSYS_BUILD_IN_PROCESS", "1")  # the mock counts compiles in this process
    ws = fresh()
    assert ws.cli("build", "--only", "model=tiny_cnn") == 0
    ws.config.write_text(ws.config.read_text().replace("input_size: [32, 48]", "input_size: [32, 40]"))
    assert ws.cli("plan", "--only", "model=tiny_cnn") == 0
    plan_out = capsys.readouterr().out
    assert "build   " in plan_out and "tiny_cnn 40x40" in plan_out and "1 to build, 1 cached" in plan_out
    with mock.patch.object(buildsys.compiler.compile, "compile_model", wraps=buildsys.compiler.compile.compile_model) as compile_model:
        assert ws.cli("build", "--only", "model=tiny_cnn") == 0
    assert compile_model.call_count == 1
    assert compile_model.call_args.args[1].input_size == (40, 40)
    with mock.patch.object(buildsys.compiler.compile, "compile_model", wraps=buildsys.compiler.compile.compile_model) as compile_model:
        assert ws.cli("build", "--force", "--only", "model=tiny_cnn") == 0
    assert compile_model.call_count == 2


def test_parity_gates_publishing(fresh, capsys, monkeypatch):
    """Without the nearest-resize importer fix the upsampling model is wrong, and must not be published."""
    monkeypatch.setenv("BUILDSYS_BUILD_IN_PROCESS", "1")  # the patch applies to this process
    ws = fresh()
    with mock.patch("buildsys.pipeline.importers.fixes.apply_torch_importer_fixes", side_effect=lambda mod: mod):
        assert ws.cli("build", "--only", "model=upsample") == 3
    err = capsys.readouterr().err
    assert "exceeds tolerance" in err
    registry = ws.registry
    assert registry.list() == []
    run = registry.runs()[0]
    assert run.status == "failed" and "max relative error" in run.error
    # with the fix (the default) the same entry passes with a tiny error
    assert ws.cli("build", "--only", "model=upsample") == 0
    assert registry.list()[0].parity_max_rel < 1e-5


def test_one_failing_entry_does_not_stop_the_others(fresh, capsys):
    ws = fresh("""
models:
  broken: {source: "tests.fixtures.models:raises_on_build"}
  wrong: {source: "tests.fixtures.models:not_a_module"}
  tiny_cnn: {source: "tests.fixtures.models:tiny_cnn"}
matrix:
  model: [broken, wrong, tiny_cnn]
  input_size: [32]
""")
    assert ws.cli("build") == 3
    captured = capsys.readouterr()
    assert "model function failed on purpose" in captured.err
    assert "not a torch.nn.Module" in captured.err
    assert "done: 1 built, 0 cached, 0 skipped, 2 failed" in captured.out
    runs = {r.label.split()[0]: r for r in ws.registry.runs()}
    assert runs["broken"].status == "failed" and "failed on purpose" in runs["broken"].error
    assert runs["tiny_cnn"].status == "built"
    assert ws.cli("plan") == 0
    assert "last attempt failed" in capsys.readouterr().out


def test_disabled_pass_does_not_run_and_is_recorded(fresh):
    ws = fresh("""
models:
  tiny_cnn: {source: "tests.fixtures.models:tiny_cnn"}
matrix:
  model: [tiny_cnn]
  input_size: [32]
  disabled_passes: [[], [tirx.UnrollLoop]]
""")
    assert ws.cli("build") == 0
    store = Store(ws.store)
    traces = {}
    for r in ws.registry.list():
        manifest = manifest_format.loads(store.read_verified(r.manifest_digest))
        traces[r.disabled_passes] = {p["name"] for p in manifest["pass_trace"]}
    assert "tirx.UnrollLoop" in traces[()]
    assert "tirx.UnrollLoop" not in traces[("tirx.UnrollLoop",)]


def test_parallel_jobs_build_in_worker_processes(fresh):
    ws = fresh()
    assert ws.cli("build", "--jobs", "2", "--only", "model=tiny_cnn") == 0
    assert len(ws.registry.list()) == 2


def test_cli_ls_show_run_verify_alias(built, capsys, tmp_path):
    assert built.cli("ls") == 0
    out = capsys.readouterr().out
    assert "tiny_cnn" in out and "48x48" in out and "MAX_REL" in out
    key = next(r.key for r in built.registry.list() if r.input_size == "32x32")
    assert built.cli("alias", "set", "tiny-small", key[:8]) == 0
    assert built.cli("show", "tiny-small") == 0
    assert f'"key": "{key}"' in capsys.readouterr().out
    x = np.random.default_rng(3).random((1, 3, 32, 32), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    assert built.cli("run", "tiny-small", "--input", str(tmp_path / "x.npy")) == 0
    out = capsys.readouterr().out
    assert "output 0: shape (1, 10) float32" in out and "top:" in out
    assert built.cli("verify") == 0
    assert "0 problems" in capsys.readouterr().out
    assert built.cli("run", "no-such-alias") == 2
    assert "no alias 'no-such-alias'" in capsys.readouterr().err
    assert built.cli("alias", "rm", "tiny-small") == 0


def test_run_output_matches_pytorch(built):
    import torch

    from buildsys.models import instantiate
    from buildsys.runtime import load_artifact
    from buildsys.config.spec import load_specs

    spec = next(s for s in load_specs(built.config) if s.input_size == (48, 48))
    record = next(r for r in built.registry.list() if r.input_size == "48x48")
    predictor = load_artifact(record.key, registry=built.registry, store=Store(built.store))
    x = np.random.default_rng(7).random((1, 3, 48, 48), dtype=np.float32)
    with torch.no_grad():
        expected = instantiate(spec.model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predictor(x)[0], expected, rtol=1e-4, atol=1e-5)


def test_corrupt_weights_file_fails_naming_file_and_field(fresh, capsys):
    ws = fresh("""
models:
  tiny_cnn: {source: "tests.fixtures.models:tiny_cnn", weights: garbage.pth}
matrix:
  model: [tiny_cnn]
  input_size: [32]
""")
    (ws.root / "garbage.pth").write_bytes(b"\x00not a checkpoint" * 10)
    assert ws.cli("build") == 3
    err = capsys.readouterr().err
    assert "cannot load weights from" in err and "garbage.pth" in err
    assert "models.tiny_cnn.weights" in err and "builds.yaml:" in err


def test_gc_removes_leftovers_of_a_crashed_build(fresh, capsys):
    import os

    ws = fresh()
    assert ws.cli("build", "--only", "model=tiny_cnn", "--only", "input_size=32") == 0
    store = Store(ws.store)
    dead = store.tmp / "abc.999999999.x"  # staging dir of a builder that no longer exists
    dead.mkdir()
    orphan, _ = store.put_bytes(b"object of a build that died before its registry row")
    old = 10**9
    os.utime(store.object_path(orphan), (old, old))
    run_id = ws.registry.start_run("f" * 64, "crashed entry")
    with mock.patch("buildsys.artifacts.store.pid_alive", return_value=False):
        assert ws.cli("gc", "--dry-run") == 0
        assert dead.exists() and store.has(orphan)
        assert ws.cli("gc") == 0
    out = capsys.readouterr().out
    assert "removed 1 staging entries and 1 unreferenced objects; 1 unfinished runs marked crashed" in out
    assert not dead.exists() and not store.has(orphan)
    assert ws.registry.runs("f" * 64)[0].status == "crashed" and run_id
    assert ws.cli("verify") == 0


def test_disk_full_while_publishing_leaves_no_partial_object_or_row(fresh, capsys):
    ws = fresh()

    def no_space(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    with mock.patch("buildsys.artifacts.store.os.replace", side_effect=no_space):
        assert ws.cli("build", "--only", "model=tiny_cnn", "--only", "input_size=32") == 4
    assert "no space left on device: " in capsys.readouterr().err
    store = Store(ws.store)
    assert list(store.iter_objects()) == [] and list(store.tmp.iterdir()) == []
    assert ws.registry.list() == [] and ws.registry.runs()[0].status == "failed"
    assert ws.cli("build", "--only", "model=tiny_cnn", "--only", "input_size=32") == 0  # space is back


def test_registry_failure_after_objects_leaves_no_row(fresh, capsys):
    from buildsys.errors import RegistryError
    from buildsys.artifacts.registry import Registry

    ws = fresh()
    with mock.patch.object(Registry, "publish", side_effect=RegistryError("registry error: disk I/O error")):
        assert ws.cli("build", "--only", "model=tiny_cnn", "--only", "input_size=32") == 3
    assert ws.registry.list() == []
    assert ws.cli("verify") == 0  # no row points anywhere; the orphans are whole objects
    assert "unreferenced objects" in capsys.readouterr().out


def test_hub_weights_come_from_the_local_cache_or_fail_clearly(fresh, monkeypatch, capsys):
    """weights: DEFAULT reads torchvision's file from the torch hub cache; nothing is downloaded."""
    import torch
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(fresh().root / "torch-home"))
    ws = fresh("""
models:
  resnet18: {source: "torchvision.models:resnet18", weights: DEFAULT}
matrix:
  model: [resnet18]
  input_size: [32]
""")
    checkpoints = ws.root / "torch-home" / "hub" / "checkpoints"
    assert ws.cli("plan") == 2  # the key needs the weights' digest: no file, no key
    err = capsys.readouterr().err
    assert "models.resnet18.weights" in err and "not in the local torch hub cache" in err
    assert str(checkpoints / "resnet18-f37072fd.pth") in err
    checkpoints.mkdir(parents=True)
    torch.manual_seed(5)
    weights = torchvision.models.resnet18().state_dict()
    torch.save(weights, checkpoints / "resnet18-f37072fd.pth")
    assert ws.cli("build") == 0
    record = ws.registry.list()[0]
    assert record.key_material["weights"].startswith("sha256:")
    # the artifact carries those weights, not seeded ones
    from buildsys.runtime import load_artifact
    predictor = load_artifact(record.key, registry=ws.registry, store=Store(ws.store))
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    model = torchvision.models.resnet18()
    model.load_state_dict(weights)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predictor.run(x)[0], expected, rtol=1e-4, atol=1e-4)


def test_shards_split_the_matrix_deterministically(fresh, capsys):
    """--shard i/N: the N slices are disjoint, cover the matrix, and do not depend on order."""
    import json

    ws = fresh("""
models:
  a: {source: "tests.fixtures.models:tiny_cnn"}
  b: {source: "tests.fixtures.models:tiny_cnn", kwargs: {classes: 3}}
matrix:
  model: [a, b]
  input_size: [16, 24, 32, 40, 48]
  opt_level: [2, 3]
""")

    def keys(*args):
        capsys.readouterr()
        assert ws.cli("plan", "--json", *args) == 0
        return [e["key"] for e in json.loads(capsys.readouterr().out)["entries"]]

    everything = keys()
    slices = [keys("--shard", f"{i}/3") for i in (1, 2, 3)]
    assert sorted(k for s in slices for k in s) == sorted(everything) and len(everything) == 20
    assert all(slices) and len({k for s in slices for k in s}) == 20
    assert keys("--shard", "2/3") == slices[1]  # the same every time
    assert keys("--shard", "1/1") == everything
    for bad in ("0/3", "4/3", "x/2", "3"):
        assert ws.cli("plan", "--shard", bad) == 2
    assert "--shard takes i/N" in capsys.readouterr().err


def test_gc_retention_removes_old_and_out_of_matrix_artifacts_but_never_aliased_ones(fresh, capsys):
    from datetime import datetime, timedelta

    from buildsys.ops.retention import parse_age, select_expired
    from buildsys.artifacts.store import Store

    ws = fresh("""
models:
  a: {source: "tests.fixtures.models:tiny_cnn"}
matrix:
  model: [a]
  input_size: [16, 24, 32]
""")
    assert ws.cli("build") == 0
    records = {r.input_size: r for r in ws.registry.list()}
    ws.cli("alias", "set", "prod", records["16x16"].key)
    # 24 leaves the matrix; 16 (aliased) and 32 stay in it
    ws.config.write_text(ws.config.read_text().replace("[16, 24, 32]", "[16, 32]"))
    store = Store(ws.store)
    objects_before = set(store.iter_objects())

    capsys.readouterr()
    assert ws.cli("gc", "--not-in-matrix", "--dry-run", "--grace", "0") == 0
    out = capsys.readouterr().out
    assert "would remove artifact " + records["24x24"].key[:12] in out and "16x16" not in out
    assert len(ws.registry.list()) == 3 and set(store.iter_objects()) == objects_before

    assert ws.cli("gc", "--not-in-matrix", "--grace", "0") == 0
    assert {r.input_size for r in ws.registry.list()} == {"16x16", "32x32"}
    remaining = {f.digest for r in ws.registry.list() for f in r.files}
    assert remaining <= set(store.iter_objects())  # shared objects (same weights) stay
    assert set(store.iter_objects()) == remaining  # the removed artifact's own files are gone
    assert ws.cli("verify") == 0

    # age: nothing is a day old yet; pretend a week passed, the aliased one still stays
    assert select_expired(ws.registry.list(), older_than_s=parse_age("1d")) == []
    later = datetime.now() + timedelta(days=7)
    expired = select_expired(ws.registry.list(), older_than_s=parse_age("1d"), now=later)
    assert [r.input_size for r, _ in expired] == ["32x32"]
    assert ws.cli("gc", "--older-than", "soon") == 2

    # build logs past the age go too (by modification time); the runs keep their rows
    logs = sorted((ws.store / "logs").glob("*.log"))
    assert len(logs) == 3
    week_ago = (datetime.now() - timedelta(days=7)).timestamp()
    os.utime(logs[0], (week_ago, week_ago))
    capsys.readouterr()
    assert ws.cli("gc", "--older-than", "1d", "--dry-run") == 0
    assert "would remove 1 build logs older than 1d" in capsys.readouterr().out and logs[0].exists()
    assert ws.cli("gc", "--older-than", "1d") == 0
    assert sorted((ws.store / "logs").glob("*.log")) == logs[1:]
    gone = next(r for r in ws.registry.runs() if r.log_path == str(logs[0]))
    assert ws.cli("log", gone.key[:12]) == 2 and "is gone" in capsys.readouterr().err


def test_check_repro_rebuilds_aside_and_compares_byte_for_byte(fresh, capsys):
    import json

    ws = fresh("""
models:
  a: {source: "tests.fixtures.models:tiny_cnn"}
matrix: {model: [a], input_size: [32]}
""")
    assert ws.cli("build") == 0
    (record,) = ws.registry.list()
    capsys.readouterr()
    assert ws.cli("build", "--check-repro", record.key[:8], "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reproducible"] and report["key"] == record.key
    assert {name: f["identical"] for name, f in report["files"].items()} == {"lib.so": True, "params.npz": True}
    # what differs is only what must (created_at has one-second resolution: a rebuild within the
    # same second does not differ in it, so it is not required to)
    from buildsys.ops.repro import VOLATILE_FIELDS
    assert report["manifest"]["differing"] == []
    assert "timings" in report["manifest"]["volatile"] and set(report["manifest"]["volatile"]) <= set(VOLATILE_FIELDS)
    assert len(ws.registry.list()) == 1 and ws.registry.runs(record.key, limit=5)[0].status == "built"


def test_check_repro_explains_a_params_file_written_the_old_way(tmp_path):
    import io

    import numpy as np

    from buildsys.artifacts.manifest import write_params
    from buildsys.ops.repro import _explain_params

    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3)]
    old = io.BytesIO()
    np.savez(old, p00000=arrays[0])  # zip members stamped with the time
    write_params(tmp_path / "new.npz", arrays)
    assert "same arrays, different container bytes" in _explain_params(old.getvalue(), (tmp_path / "new.npz").read_bytes())
    write_params(tmp_path / "other.npz", [arrays[0] + 1])
    assert "1 arrays differ" in _explain_params((tmp_path / "new.npz").read_bytes(),
                                                 (tmp_path / "other.npz").read_bytes())


def test_diff_names_what_differs_between_two_artifacts(built, capsys):
    import json

    records = {r.input_size: r for r in built.registry.list() if r.model == "tiny_cnn"}
    a, b = records["32x32"], records["48x48"]
    capsys.readouterr()
    assert built.cli("diff", a.key[:8], b.key[:8], "--json") == 0
    differences = json.loads(capsys.readouterr().out)["differences"]
    assert {d["field"]: (d["a"], d["b"]) for d in differences["spec"]} == {
        "input_shape": ([1, 3, 32, 32], [1, 3, 48, 48])}
    assert [d["field"] for d in differences["files"]] == ["lib.so"]  # same weights, same params object
    assert "toolchain" not in differences and "pass_trace" not in differences
    assert built.cli("diff", a.key[:8], a.key[:8]) == 0
    text = capsys.readouterr().out
    assert "spec: same" in text and "files: same" in text


def test_a_missing_store_object_makes_the_entry_build_again_and_verify_clean(fresh, capsys):
    """Objects deleted behind the registry's back: plan says build, build heals it (no --force)."""
    ws = fresh()
    assert ws.cli("build", "--only", "model=tiny_cnn", "--only", "input_size=32") == 0
    record = ws.registry.list()[0]
    path = Store(ws.store).object_path(record.file("lib.so").digest)
    os.chmod(path.parent, 0o755)
    path.unlink()
    capsys.readouterr()
    assert ws.cli("plan", "--only", "model=tiny_cnn", "--only", "input_size=32") == 0
    assert "registered but missing from the store: lib.so" in capsys.readouterr().out
    assert ws.cli("verify") != 0
    assert ws.cli("build", "--only", "model=tiny_cnn", "--only", "input_size=32") == 0
    assert "done: 1 built, 0 cached" in capsys.readouterr().out
    assert ws.cli("verify") == 0
    assert path.is_file()


@pytest.mark.parametrize("source, cause", [
    ("raises_on_build", "raised RuntimeError: model function failed on purpose"),
    ("segfaults_on_build", "the build process was killed by SIGSEGV"),
    ("exits_on_build", "the build process exited with code 0 before returning a result"),
])
def test_a_model_that_crashes_or_exits_is_named_by_its_config_field_and_line(fresh, capsys, source, cause):
    """A Python exception in the model's function was reported with ``models.NAME.source`` and
    where builds.yaml says so; a segfault or os._exit in the same function was not (only the key)."""
    ws = fresh(f"""
models:
  bad: {{source: "tests.fixtures.models:{source}"}}
matrix: {{model: [bad], input_size: [32]}}
""")
    assert ws.cli("build", "--progress", "plain") == 3
    out, err = capsys.readouterr()
    assert f"models.bad.source ({ws.config}:3; matrix entry at {ws.config}:4): " in err, err
    assert cause in err, err
    assert cause in ws.registry.runs(limit=1)[0].error


@pytest.mark.parametrize("source, cause", [
    ("exits_on_build", "exited with code 0 before returning a result"),
    ("sys_exits_on_build", "called sys.exit('giving up')"),
    ("hangs_on_build", "took longer than 45 s"),
])
def test_a_model_that_exits_or_hangs_fails_its_entry_only(fresh, capsys, source, cause):
    ws = fresh(f"""
models:
  bad: {{source: "tests.fixtures.models:{source}"}}
  fine: {{source: "tests.fixtures.models:tiny_cnn"}}
matrix: {{model: [bad, fine], input_size: [32]}}
""")
    assert ws.cli("build", "--jobs", "1", "--timeout", "45") == 3  # room for the fine entry on a busy CI
    out, err = capsys.readouterr()
    assert "done: 1 built, 0 cached, 0 skipped, 1 failed" in out
    assert cause in err and f"models.bad.source ({ws.config}:3; matrix entry at {ws.config}:5): " in err, err
    assert [r.model for r in ws.registry.list()] == ["fine"]


LEAVE_A_CHILD = {"forks_and_leaves_a_child", "escapes_its_process_group", "escapes_and_exits"}


@pytest.mark.parametrize("source, cause", [
    ("interrupts_on_build", "unexpected KeyboardInterrupt"),
    ("kills_its_process_group", "was killed by SIGKILL"),
    ("raises_base_exception", "unexpected _Boom: a BaseException of the model's own"),
    ("forks_and_leaves_a_child", "failed after forking"),
    ("escapes_its_process_group", "failed after escaping"),
    ("escapes_and_exits", "exited with code 3"),
    ("deletes_the_logs_folder", "removed the logs"),
])
def test_model_code_that_attacks_the_builder_fails_its_entry_only(fresh, capsys, monkeypatch, tmp_path, source,
                                                                   cause):
    """What an outside attack did from model code: raise KeyboardInterrupt, kill its process group,
    raise an exception class only its module has, fork a child that stays, remove the logs folder.
    Each fails its own entry; the next entry builds, and nothing the model started outlives it."""
    ws = fresh(f"""
models:
  bad: {{source: "tests.fixtures.models:{source}"}}
  fine: {{source: "tests.fixtures.models:tiny_cnn"}}
matrix: {{model: [bad, fine], input_size: [32]}}
""")
    pidfile = tmp_path / "child.pid"
    monkeypatch.setenv("BUILDSYS_TEST_PIDFILE", str(pidfile))
    monkeypatch.setenv("BUILDSYS_TEST_STORE", str(ws.store))
    assert ws.cli("build", "--jobs", "1") == 3
    out, err = capsys.readouterr()
    assert "done: 1 built, 0 cached, 0 skipped, 1 failed" in out
    assert cause in err
    assert [r.model for r in ws.registry.list()] == ["fine"]
    assert pidfile.exists() == (source in LEAVE_A_CHILD), source
    if source in LEAVE_A_CHILD:  # the child the model started went with its build
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
