"""Tuning as a cached build input: records made once, applied by later builds, scoped by target,
resumed after an interruption. A tiny CNN with a few trials keeps this under a minute."""

import json

import pytest

from buildsys.pipeline.plan import plan_builds
from buildsys.config.spec import load_specs
from buildsys.compiler.tuning_db import RECORD_FILE, WORKLOAD_FILE, TuningDatabase

from tests.fixtures.workspace import Workspace, tiny_cnn_config

pytestmark = pytest.mark.model

TUNED_CONFIG = tiny_cnn_config('target: ["llvm -mcpu=native"]',
                               "tuning: [{trials: 12, per_iter: 4, population: 16, genetic_iters: 1}]")

OTHER_TARGET = """
  include:
    - {model: tiny_cnn, input_size: 32, target: llvm, tuning: {trials: 0}}
"""


def _manifest(ws, key):
    record = ws.registry.get(key)
    from buildsys.artifacts.store import Store
    return json.loads(Store(ws.store).read_verified(record.manifest_digest))


def _only(ws, **match):
    rows = [r for r in ws.registry.list() if all(getattr(r, k) == v for k, v in match.items())]
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("tuned"), TUNED_CONFIG)
    assert ws.cli("build") == 0
    return ws


def _database(ws, target):
    from buildsys.config.toolchain import toolchain_versions
    return TuningDatabase(ws.store, target, toolchain_versions()["tvm"])


def test_tuning_produces_records_and_registers_the_database(tuned):
    spec = load_specs(tuned.config)[0]
    database = _database(tuned, spec.target)
    assert database.target["num-cores"] >= 1
    by_workload = database.records_by_workload()
    assert sum(len(r) for r in by_workload.values()) >= 6  # at least a record per task
    rows = tuned.registry.tuning_databases()
    assert [r.scope for r in rows] == [database.scope]
    assert rows[0].records == sum(len(r) for r in by_workload.values())
    assert rows[0].digest == database.digest()

    record = tuned.registry.list()[0]
    manifest = _manifest(tuned, record.key)
    assert manifest["tuning"]["functions_scheduled"] >= 1
    assert 1 <= manifest["tuning"]["records_applied"] <= manifest["tuning"]["workloads"]
    assert manifest["key_material"]["tuning"]["records"] == manifest["tuning"]["records_digest"]
    assert manifest["parity"]["passed"]


def test_second_build_applies_records_without_tuning(tuned, monkeypatch):
    import buildsys.compiler.tuning as tuning

    def no_tuning(*_args, **_kwargs):
        raise AssertionError("the tuner ran although the records were there")

    from tvm.s_tir import meta_schedule

    monkeypatch.setattr(tuning, "tune", no_tuning)
    monkeypatch.setattr(meta_schedule, "tune_tasks", no_tuning)
    key = tuned.registry.list()[0].key
    entries = plan_builds(load_specs(tuned.config), tuned.registry, _store(tuned))
    assert [(e.action, e.key, e.tune_first) for e in entries] == [("cached", key, False)]
    assert tuned.cli("build", "--force") == 0  # compile and verify again, applying the records
    assert tuned.registry.get(key) is not None
    assert _manifest(tuned, key)["tuning"]["functions_scheduled"] >= 1


def _store(ws):
    from buildsys.artifacts.store import Store
    return Store(ws.store)


def test_records_are_never_applied_to_another_target(tuned, tmp_path, monkeypatch):
    import shutil

    ws = Workspace(tmp_path, TUNED_CONFIG + OTHER_TARGET)
    shutil.copytree(tuned.store, ws.store)
    assert ws.cli("build") == 0
    tuned_spec, plain_spec = load_specs(ws.config)
    assert _database(ws, tuned_spec.target).scope != _database(ws, plain_spec.target).scope
    plain = [r for r in ws.registry.list() if r.target.get("mcpu") is None]
    assert len(plain) == 1
    manifest = _manifest(ws, plain[0].key)
    assert manifest["tuning"]["records_applied"] == 0
    assert manifest["tuning"]["functions_scheduled"] == 0
    assert manifest["tuning"]["scope"] == _database(ws, plain_spec.target).scope


def test_an_interrupted_tuning_run_resumes_from_its_records(tuned, tmp_path):
    import shutil

    ws = Workspace(tmp_path, TUNED_CONFIG)
    shutil.copytree(tuned.store, ws.store)
    spec = load_specs(ws.config)[0]
    database = _database(ws, spec.target)
    records = database.path / RECORD_FILE
    lines = records.read_text().splitlines(keepends=True)
    # What a kill leaves: the records measured so far, a torn last line, the entry not complete.
    kept = lines[:3]
    records.write_text("".join(kept) + lines[3][: len(lines[3]) // 2])
    info_file = next((database.path / "models").glob("*.json"))
    info = json.loads(info_file.read_text())
    info["complete"] = False
    info_file.write_text(json.dumps(info))

    entry = plan_builds([spec], ws.registry, _store(ws))[0]
    assert entry.tune_first and "interrupted" in entry.reason
    assert ws.cli("tune") == 0
    after = database.records_by_workload()
    assert database.repair() == 0  # the torn line was dropped when tuning resumed
    assert records.read_text().startswith("".join(kept))  # what was measured before is kept
    assert sum(len(r) for r in after.values()) > len(kept)
    assert json.loads(info_file.read_text())["complete"] is True
    assert (database.path / WORKLOAD_FILE).read_text().count("\n") == len(database.workload_hashes())
    entry = plan_builds([spec], ws.registry, _store(ws))[0]
    assert not entry.tune_first


def test_detectors_tune_their_static_shape_tasks_only():
    """The data-dependent part of a detector (after score filtering and NMS) has symbolic shapes:
    MetaSchedule cannot measure it (ValueError: Unsupported argument type: d0), so it is left out."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from buildsys.pipeline.samples import export_examples
    from buildsys.pipeline.importers import export_model
    from buildsys.models import instantiate
    from buildsys.config.spec import parse_specs
    from buildsys.config.targets import to_tvm
    from buildsys.compiler.tuning import prepare_for_tuning, tunable
    from buildsys.compiler.tuning_db import tuning_target

    (spec,) = parse_specs("""
models:
  tiny_fasterrcnn: {source: "buildsys.models.tiny:tiny_fasterrcnn", task: detection}
matrix: {model: [tiny_fasterrcnn], input_size: [64], tuning: [8]}
""")
    exported = export_model(instantiate(spec.model), export_examples(spec), "detection")
    target = to_tvm(tuning_target(spec.target))
    with tvm.transform.PassContext(opt_level=3):
        tasks = ms.relax_integration.extract_tasks(prepare_for_tuning(exported.mod, target), target)
    static = [t for t in tasks if tunable(t)]
    names = {t.task_name for t in static}
    assert any(name.startswith("conv2d") for name in names)  # the compute-heavy part is tuned
    assert 0 < len(static) < len(tasks)
    assert not any("non_max_suppression" in t.task_name or "roi_align" in t.task_name for t in static)
    for task in static:  # what is kept can be measured
        infos = ms.arg_info.ArgInfo.from_prim_func(task.dispatched[0]["main"])
        assert all(int(d) >= 0 for info in infos for d in info.shape)


def test_ctrl_c_during_tuning_stops_the_whole_build(tmp_path, monkeypatch, capsys):
    """TVM turns SIGINT inside tuning into a RuntimeError; the build must still stop (exit 130),
    not record 'tuning FAILED' and go on with the next entries."""
    import os
    import signal

    import buildsys.compiler.tuning as tuning

    def interrupted_tuner(*_args, **_kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            raise RuntimeError("TVM: KeyboardInterrupt caught in a packed function") from None
        raise AssertionError("SIGINT was not delivered")

    monkeypatch.setattr(tuning, "tune", interrupted_tuner)
    ws = Workspace(tmp_path, TUNED_CONFIG + OTHER_TARGET)
    assert ws.cli("build", "--progress", "plain") == 130
    out = capsys.readouterr().out
    assert "done:" not in out  # it stopped; nothing after the interrupted entry was built
    assert ws.registry.list() == []
