"""plan -> export -> compile -> verify -> store -> registry.

``build_artifact`` does the heavy, torch- and TVM-bound work for one entry
and can run in a worker process; ``run_builds`` stays in the parent, holds
the per-key lock, publishes files into the store and writes the registry row
last, so a crash leaves either nothing or a whole artifact.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import statistics
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from . import manifest as manifest_format
from . import isolation, runlog, sources
from .errors import BuildError, BuildsysError, ParityError
from .keys import build_key, entry_key
from .manifest import LIBRARY_NAME, MANIFEST_FORMAT, MANIFEST_NAME, PARAMS_NAME
from .plan import BUILD, CACHED, PlanEntry, plan_builds
from .publish import publish
from .registry import RUN_BUILT, RUN_FAILED
from .schedules import RULE_NAME
from .spec import BuildSpec
from .store import Store, pid_alive
from .targets import required_features
from .toolchain import runtime_versions, toolchain_versions
from .verify import compare_detector_outputs, compare_outputs, flatten_outputs

INPUT_SEED = 0
TIMING_RUNS = 3
TIMING_BUDGET_S = 2.0  # a verify run slower than this is the only timing taken (untuned detectors: minutes)


@dataclass
class BuildOutcome:
    """What a (possibly remote) build hands back to the publisher."""

    key: str  # the artifact's key: the planned one, unless the model's recorded sources differ
    staged: dict[str, str]  # file name -> staged path
    manifest: dict
    metrics: dict[str, tuple[float, str]]
    material: dict = field(default_factory=dict)
    dependencies: list = field(default_factory=list)  # sources.Dependency, for the entry's depfile


@dataclass
class BuildResult:
    entry: PlanEntry
    status: str  # built | cached | failed | skipped
    seconds: float = 0.0
    error: str | None = None
    record: object | None = None
    log_path: str | None = None  # the run's log file (none for cached and skipped entries)


@dataclass
class BuildReport:
    results: list[BuildResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def failed(self) -> bool:
        return self.count("failed") > 0


def example_input(spec: BuildSpec):
    """The seeded input parity is measured on: uniform [0, 1), like a normalized-to-1 image."""
    import torch

    generator = torch.Generator().manual_seed(INPUT_SEED)
    return torch.rand(*spec.input_shape, generator=generator)


def _median_ms(fn: Callable[[], object], runs: int = TIMING_RUNS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _output_specs(exported, reference) -> list[dict]:
    names = exported.output_names or [f"output{i}" for i in range(len(reference))]
    return [{"name": name, "shape": list(o.shape), "dtype": str(o.dtype)} for name, o in zip(names, reference)]


def _tuning_database(spec: BuildSpec, material: Mapping, store_root: str | None, key: str):
    """The entry's tuning database, checked against the records its key names."""
    if spec.tuning is None:
        return None
    from .tuning import TuningDatabase

    planned = material.get("tuning")
    if store_root is None or not planned:
        raise BuildError("a tuned entry needs its tuning planned first (tune, then build)", key=key, stage="tune")
    database = TuningDatabase(Path(store_root), spec.target, material["toolchain"]["tvm"])
    info = database.entry_info(entry_key(material))
    applied = database.applied(info["workloads"] if info else [])
    if applied["digest"] != planned["records"]:
        raise BuildError("the tuning database changed after planning (another tuner added records); "
                         "run the build again to plan with them", key=key, stage="tune")
    return database, applied


def build_artifact(spec: BuildSpec, key: str, material: Mapping, staging: str,
                   store_root: str | None = None, on_stage: Callable[[str], None] | None = None) -> BuildOutcome:
    """Export, compile, serialize and verify one entry into ``staging``. Runs torch and TVM.

    ``on_stage`` is called with each stage's name as the build enters it (runlog.STAGES)."""
    stage = on_stage or (lambda _name: None)
    stage("export")  # importing torch and TVM is part of it
    import torch

    from .compile import compile_model
    from .export import export_model
    from .models import category_names, instantiate
    from .runtime.ffi import outputs_to_numpy, to_device
    from .runtime.loader import load_executable

    staging_dir = Path(staging)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    # Everything the model loads while it is made, exported and run is recorded: its key covers it.
    with sources.recording(spec.model.source, skip_dirs=[staging, *([store_root] if store_root else [])]) as recorder:
        try:
            module = instantiate(spec.model)
        except BuildError as exc:  # say where the model is defined
            field_name = "weights" if exc.stage == "weights" else "source"
            where = spec.model.source_origin or spec.origin
            raise BuildError(f"models.{spec.model.name}.{field_name} ({where}; matrix entry at {spec.origin}): "
                             f"{exc}", key=key, stage=exc.stage) from None
        x = example_input(spec)
        timings["model_s"] = time.perf_counter() - start

        exported = export_model(module, x, spec.model.task, on_stage=stage)
        timings["export_s"], timings["import_s"] = exported.seconds_export, exported.seconds_import
        with torch.no_grad():
            reference = flatten_outputs(exported.reference(x))
    dependencies = recorder.dependencies()
    material = {**material, "sources": sources.sources_digest(dependencies)}
    if build_key(material) != key:  # the plan predicted other sources (first build here, or an edit since)
        key = build_key(material)
        print(f"[buildsys] the model's recorded sources give it the key {key}", flush=True)
    tuning = _tuning_database(spec, material, store_root, key)
    stage("build")
    compiled = compile_model(exported.mod, spec, tuning_db=tuning[0] if tuning else None)
    timings["compile_s"] = compiled.seconds

    start = time.perf_counter()
    library = staging_dir / LIBRARY_NAME
    try:
        compiled.executable.export_library(str(library))
    except Exception as exc:
        raise BuildError(f"export_library failed: {type(exc).__name__}: {exc}", key=key, stage="serialize") from None
    vm = load_executable(library, key)
    params = exported.params
    if compiled.transforms_params:  # weights prepacked into the layouts the kernels read, once, here
        params = outputs_to_numpy(vm["main_transform_params"]([to_device(p) for p in params]))
    manifest_format.write_params(staging_dir / PARAMS_NAME, params)
    timings["serialize_s"] = time.perf_counter() - start

    # Verify what will be shipped: the serialized library, reloaded the way the loader does.
    stage("verify")
    start = time.perf_counter()
    args = [to_device(x.numpy())] + [to_device(p) for p in params]
    run_start = time.perf_counter()
    actual = outputs_to_numpy(vm["main"](*args))
    first_run_ms = (time.perf_counter() - run_start) * 1e3
    if spec.model.task == "detection":
        second_stage = getattr(exported.reference, "second_stage_given_boxes", None)
        parity = compare_detector_outputs(reference, actual, exported.detection["final_outputs"],
                                          spec.model.tolerance, key=key,
                                          second_stage=(lambda b, l: second_stage(x, b, l)) if second_stage else None)
    else:
        parity = compare_outputs(reference, actual, spec.model.tolerance, key=key)
    timings["verify_s"] = time.perf_counter() - start
    outputs = _output_specs(exported, reference)
    if not parity.passed:
        raise ParityError(f"{parity.explain([o['name'] for o in outputs])}; the artifact is not published",
                          key=key, stage="verify")

    runs = TIMING_RUNS if first_run_ms < TIMING_BUDGET_S * 1e3 else 0
    with torch.no_grad():
        eager_ms = _median_ms(lambda: exported.reference(x), runs or 1)
    artifact_ms = _median_ms(lambda: vm["main"](*args)) if runs else first_run_ms
    threads = torch.get_num_threads()

    manifest = {
        "manifest_format": MANIFEST_FORMAT,
        "key": key,
        "key_material": dict(material),
        "spec": spec.to_dict(),
        "label": spec.describe(),
        "route": {"name": exported.route, **exported.details},
        "toolchain": toolchain_versions(),
        "runtime": runtime_versions(),
        "io": {"input": {"shape": list(spec.input_shape), "dtype": "float32"},
               "params": len(params),
               "outputs": outputs},
        "cpu": {"required_features": required_features(spec.target)},
        **({"detection": {**exported.detection, "categories": category_names(spec.model)}}
           if exported.detection is not None else {}),
        "sources": [{"kind": d.kind, "name": d.name, "digest": d.digest, "version": d.version}
                    for d in dependencies],
        "exported": exported_digests(exported),
        "pass_trace": compiled.pass_trace,
        "default_schedules": {"rule": RULE_NAME, "functions": compiled.default_scheduled,
                              "packed_weights": compiled.packed_weights, "note": compiled.schedules_note},
        "tuning": None if tuning is None else {
            "settings": spec.tuning.to_dict(), "scope": tuning[0].scope, "target": tuning[0].target,
            "records_digest": tuning[1]["digest"], "workloads": tuning[1]["workloads"],
            "records_applied": tuning[1]["records"], "trials": sum(tuning[1]["trials"].values()),
            "functions_scheduled": compiled.scheduled,
            "weights_prepacked": compiled.prepack_note is None, "note": compiled.prepack_note},
        "parity": {**parity.to_dict(), "input": f"torch.rand seed={INPUT_SEED}"},
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "latency": {"artifact_ms": round(artifact_ms, 3), "torch_eager_ms": round(eager_ms, 3),
                    "ratio_vs_eager": round(artifact_ms / eager_ms, 3), "torch_threads": threads,
                    "runs": runs or 1, "note": "build-time estimate; use a benchmark for decisions"},
        "build_host": {"host": socket.gethostname(), "machine": platform.machine(),
                       "python": platform.python_version()},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    metrics = {
        "parity_max_abs": (parity.max_abs, "abs"),
        "parity_max_rel": (parity.max_rel, "rel"),
        **{f"parity_{name}": (float(value), unit) for name, value, unit in (
            ("detections", parity.detections, "count"), ("matched_fraction", parity.matched_fraction, "fraction"),
            ("pre_nms_max_rel", parity.pre_nms_max_rel, "rel"), ("final_max_rel", parity.final_max_rel, "rel"),
            ("second_stage_max_rel", parity.second_stage_max_rel, "rel"))
           if value is not None},
        "artifact_ms": (artifact_ms, "ms"),
        "torch_eager_ms": (eager_ms, "ms"),
        "ratio_vs_eager": (artifact_ms / eager_ms, "x"),
        **{k: (v, "s") for k, v in timings.items()},
    }
    return BuildOutcome(key=key, staged={LIBRARY_NAME: str(library), PARAMS_NAME: str(staging_dir / PARAMS_NAME)},
                        manifest=manifest, metrics=metrics, material=dict(material), dependencies=dependencies)


def exported_digests(exported) -> dict:
    """What ``plan --deep`` compares: the Relax module right after import (structure, with the
    weights as parameters) and the weights' bytes."""
    import hashlib

    import numpy as np
    from tvm_ffi.structural import structural_hash

    weights = hashlib.sha256()
    for p in exported.params:
        array = np.ascontiguousarray(p.numpy() if hasattr(p, "numpy") else p)
        weights.update(f"{array.dtype}{array.shape}".encode())
        weights.update(array.tobytes())
    return {"graph": f"tvm-shash:{structural_hash(exported.mod, map_free_vars=True) & (2**64 - 1):016x}",
            "weights": f"sha256:{weights.hexdigest()}"}


def tune_entry(spec: BuildSpec, store: Store, registry, entry_key: str,
               on_progress: Callable[[dict], None] | None = None, on_stage: Callable[[str], None] | None = None):
    """Export the entry and tune what its target's database lacks; the database is
    then recorded in the registry. Returns the tuning report."""
    from .export import export_model
    from .models import instantiate
    from .tuning import TuningDatabase, tune

    stage = on_stage or (lambda _name: None)
    stage("export")
    module = instantiate(spec.model)
    exported = export_model(module, example_input(spec), spec.model.task, on_stage=stage)
    stage("tune")
    database = TuningDatabase(store.root, spec.target, toolchain_versions()["tvm"])
    report = tune(exported.mod, spec, database, entry_key, on_progress)
    registry.record_tuning_database(database.stats())
    return report


class _RunLogs:
    """A log file per entry for this invocation (tuning and the build that follows share it)
    and the stage reporters that write into it and tell the caller."""

    def __init__(self, store: Store, emit):
        self.store, self.emit = store, emit
        self.paths: dict[BuildSpec, Path] = {}
        self.entries: dict[str, PlanEntry] = {}

    def path(self, entry: PlanEntry) -> Path:
        if entry.spec not in self.paths:
            path = runlog.new_log_path(self.store.root, entry.key)
            runlog.append_line(path, f"[buildsys] {entry.spec.describe()} key {entry.key} "
                                     f"({entry.spec.origin}): {entry.reason}")
            self.paths[entry.spec] = path
        return self.paths[entry.spec]

    def reporter(self, entry: PlanEntry, queue=None) -> runlog.StageReporter:
        self.entries[entry.key] = entry
        reporter = runlog.StageReporter(entry.key, str(self.path(entry)), queue)
        if queue is None:
            reporter.local = self.on_stage
        return reporter

    def on_stage(self, key: str, stage: str, at: float) -> None:
        entry = self.entries.get(key)
        if entry is not None:
            self.emit("stage", entry, {"stage": stage, "at": at})

    def note(self, entry: PlanEntry, text: str) -> None:
        runlog.append_line(self.path(entry), f"[buildsys] {text}")


def _tune_first(entries: list[PlanEntry], store: Store, registry, report: "BuildReport", emit,
                logs: _RunLogs) -> list[PlanEntry]:
    """Tune the entries whose records are not final, then plan them again with their real key."""
    ready = []
    for entry in entries:
        if not entry.tune_first:
            ready.append(entry)
            continue
        emit("tune", entry, {"reason": entry.reason})
        started = time.perf_counter()
        reporter = logs.reporter(entry)
        try:
            with runlog.captured(reporter.log_path), _interrupts_noticed() as interrupted:
                try:
                    tuned = tune_entry(entry.spec, store, registry, entry.key, on_stage=reporter,
                                       on_progress=lambda progress, e=entry: emit("tune-progress", e, progress))
                except BaseException:
                    if interrupted:  # TVM turns Ctrl-C into a RuntimeError; it must still stop the build
                        raise KeyboardInterrupt from None
                    raise
        except BaseException as exc:  # noqa: BLE001 - recorded per entry; the records made so far stay
            text = _error_text(exc)
            logs.note(entry, f"tuning FAILED: {_log_text(exc)}")
            run_id = registry.start_run(entry.key, entry.spec.describe(), log_path=reporter.log_path)
            registry.finish_run(run_id, RUN_FAILED, text)
            report.results.append(BuildResult(entry, "failed", time.perf_counter() - started, error=text,
                                              log_path=reporter.log_path))
            emit("failed", entry, {"seconds": time.perf_counter() - started, "error": text,
                                   "log_path": reporter.log_path})
            if isinstance(exc, KeyboardInterrupt):
                raise
            continue
        logs.note(entry, f"tuned: {tuned.trials_run} trials run, {tuned.trials_before} found in the database")
        emit("tuned", entry, {"report": tuned})
        again = plan_builds([entry.spec], registry, store, force=entry.forced)[0]
        if again.tune_first:  # cannot happen unless the database was removed meanwhile
            raise BuildError(f"tuning finished but the entry still needs tuning: {again.reason}", key=entry.key)
        if again.action == CACHED:
            logs.note(entry, f"cached after tuning: {again.key}")
            report.results.append(BuildResult(again, "cached"))
            emit("cached", again, {"reason": again.reason})
        else:
            logs.note(entry, f"its key after tuning: {again.key}")
            ready.append(again)
    return ready


@contextmanager
def _interrupts_noticed():
    """Yields a list that is non-empty once SIGINT arrived during the block (the signal still does
    what it did before: usually KeyboardInterrupt, which native code may swallow)."""
    import signal

    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        seen.append(signum)
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def tune_entries(entries: list[PlanEntry], store: Store, registry,
                 on_event: Callable[[str, PlanEntry, dict], None] | None = None) -> BuildReport:
    """Tune the entries that need it (events and logs as in ``run_builds``); build nothing."""
    emit = on_event or (lambda *_: None)
    report = BuildReport()
    _tune_first(entries, store, registry, report, emit, _RunLogs(store, emit))
    return report


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, BuildsysError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    return f"unexpected {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"


def _log_text(exc: BaseException) -> str:
    """For the log: always the whole traceback."""
    return "".join(traceback.format_exception(exc)).rstrip()


def build_logged(spec: BuildSpec, key: str, material: Mapping, staging: str, store_root: str | None,
                 reporter: runlog.StageReporter) -> BuildOutcome:
    """``build_artifact`` with its output in the run's log: in the builder's process or in a worker."""
    with runlog.captured(reporter.log_path):
        try:
            return build_artifact(spec, key, material, staging, store_root, on_stage=reporter)
        except BaseException as exc:
            runlog.append_line(reporter.log_path, f"[buildsys] the build raised: {_log_text(exc)}")
            raise


def run_builds(entries: list[PlanEntry], store: Store, registry, *, jobs: int = 1,
               on_event: Callable[[str, PlanEntry, dict], None] | None = None,
               timeout_s: float | None = isolation.DEFAULT_TIMEOUT_S) -> BuildReport:
    """Build every entry whose action is ``build``; one failure never stops the others.

    Each build runs in a process of its own (``isolation``): a crash, an exit or a hang
    (``timeout_s``) inside model code fails that entry only, with its cause.
    Events (kind, entry, info) tell the caller what happens: cached, skipped, tune,
    tune-progress, tuned, start, stage, built, failed. Each build run writes a log
    file under the store's logs/; its path is on the run's registry row."""
    emit = on_event or (lambda *_: None)
    report = BuildReport()
    logs = _RunLogs(store, emit)
    # what crashed builders left: staging dirs, and runs that will never finish
    store.clean_tmp()
    registry.mark_crashed_runs(pid_alive)
    todo = []
    for entry in entries:
        if entry.action == BUILD:
            todo.append(entry)
        else:
            status = "cached" if entry.action == CACHED else "skipped"
            report.results.append(BuildResult(entry, status))
            emit(status, entry, {"reason": entry.reason})
    todo = _tune_first(todo, store, registry, report, emit, logs)
    if not todo:
        return report

    def finish(entry: PlanEntry, run_id: int, started: float, outcome=None, exc=None) -> None:
        seconds = time.perf_counter() - started
        log_path = str(logs.path(entry))
        if exc is None and outcome.key != entry.key:
            logs.note(entry, f"its recorded model sources give it the key {outcome.key} (planned {entry.key})")
            entry = replace(entry, key=outcome.key, material=outcome.material)
            existing = None if entry.forced else registry.get(entry.key)
            if existing is not None and all(store.has(f.digest) for f in existing.files):  # built before, same sources
                _remember_sources(store, entry, outcome, logs)
                registry.finish_run(run_id, RUN_BUILT, key=entry.key)
                report.results.append(BuildResult(entry, "cached", seconds, log_path=log_path))
                emit("cached", entry, {"reason": "its recorded sources name an artifact already built"})
                return
        if exc is None:
            logs.reporter(entry)("publish")  # the log line and the event, as from the build itself
            try:
                record = publish(outcome, entry.spec, store, registry)
            except BaseException as publish_exc:  # noqa: BLE001 - recorded, then reported
                exc = publish_exc
            else:
                _remember_sources(store, entry, outcome, logs)
                registry.finish_run(run_id, RUN_BUILT, key=entry.key)
                logs.note(entry, f"built and published {entry.key} in {seconds:.1f}s")
                report.results.append(BuildResult(entry, "built", seconds, record=record, log_path=log_path))
                emit("built", entry, {"seconds": seconds, "record": record, "manifest": outcome.manifest,
                                      "log_path": log_path})
                return
        text = _error_text(exc)
        logs.note(entry, f"FAILED after {seconds:.1f}s: {text}")
        registry.finish_run(run_id, RUN_FAILED, text)
        report.results.append(BuildResult(entry, "failed", seconds, error=text, log_path=log_path))
        emit("failed", entry, {"seconds": seconds, "error": text, "log_path": log_path})
        if isinstance(exc, KeyboardInterrupt):
            raise exc

    def begin(entry: PlanEntry, stack: ExitStack):
        """With the key's lock held: (run id, staging dir), or None if another builder
        published the key while we waited for its lock."""
        existing = None if entry.forced else registry.get(entry.key)
        if existing is not None and all(store.has(f.digest) for f in existing.files):
            report.results.append(BuildResult(entry, "cached"))
            emit("cached", entry, {"reason": "built by another process meanwhile"})
            return None  # (a row whose objects are gone is rebuilt, and its row replaced)
        run_id = registry.start_run(entry.key, entry.spec.describe(), log_path=str(logs.path(entry)))
        staging = stack.enter_context(store.staging(prefix=entry.key[:12]))
        emit("start", entry, {"log_path": str(logs.path(entry))})
        return run_id, staging

    isolate = not isolation.in_process()
    guard = threading.RLock()  # registry rows, results and events: one thread at a time

    def on_stage(item) -> None:
        with guard:
            logs.on_stage(*item)

    def build_one(entry: PlanEntry, stack: ExitStack, run_id: int, staging) -> None:
        """Runs the build (in its own process unless BUILDSYS_BUILD_IN_PROCESS is set), then
        publishes or records the failure; the stack holds the key's lock and the staging dir."""
        with stack:
            started = time.perf_counter()
            args = (entry.spec, entry.key, dict(entry.material), str(staging), str(store.root),
                    logs.reporter(entry, isolation.PARENT_QUEUE if isolate else None))
            try:
                if isolate:
                    outcome = isolation.run_isolated(build_logged, args, key=entry.key, timeout_s=timeout_s,
                                                     on_message=on_stage)
                else:
                    outcome = build_logged(*args)
            except BaseException as exc:  # noqa: BLE001 - recorded per entry
                with guard:
                    finish(entry, run_id, started, exc=exc)
            else:
                with guard:
                    finish(entry, run_id, started, outcome=outcome)

    # A builder holds at most one key lock while it waits for another, so builders with
    # overlapping matrices cannot deadlock: busy keys are deferred, then waited for one by one.
    deferred = todo
    pool, queued = None, {}
    if isolate:
        isolation.reset()
        isolation.start_server()  # from this thread: the server lives as long as the builder does
    try:
        if jobs > 1 and len(todo) > 1:
            deferred = []
            pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="buildsys-build")
            for entry in todo:
                stack = ExitStack()
                if not stack.enter_context(store.lock(entry.key, blocking=False)):
                    stack.close()
                    deferred.append(entry)
                    continue
                with guard:
                    begun = begin(entry, stack)
                if begun is None:
                    stack.close()
                    continue
                queued[pool.submit(build_one, entry, stack, *begun)] = (entry, stack, begun[0])
            for future in list(queued):
                future.result()
            pool.shutdown()
        for entry in deferred:
            stack = ExitStack()
            stack.enter_context(store.lock(entry.key))
            begun = begin(entry, stack)
            if begun is None:
                stack.close()
                continue
            build_one(entry, stack, *begun)
    except BaseException:
        isolation.kill_all()  # Ctrl-C: no build outlives the builder, and no queued one starts
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            for future, (entry, stack, run_id) in queued.items():
                if future.cancelled():  # never started: its lock and staging go, its run says why
                    stack.close()
                    with guard:
                        registry.finish_run(run_id, RUN_FAILED, "interrupted (Ctrl-C) before it started")
        raise
    return report


def find_drift(entries: list[PlanEntry], store: Store, registry,
               on_entry: Callable[[PlanEntry], None] | None = None) -> list[PlanEntry]:
    """``plan --deep``: re-export every cached entry and compare the exported module and weights
    with what its artifact was built from. Catches what the recorded sources missed (a model that
    reads an environment variable, a file it opened through native code...). Drifted entries come
    back as ``build`` (forced: their key is unchanged) with the reason; others as they were."""
    checked = []
    for entry in entries:
        if entry.action != CACHED:
            checked.append(entry)
            continue
        if on_entry is not None:
            on_entry(entry)
        record = registry.get(entry.key)
        manifest = manifest_format.loads(store.read_verified(record.manifest_digest, key=record.key,
                                                             name=MANIFEST_NAME), key=record.key)
        recorded = manifest.get("exported")
        if not isinstance(recorded, dict):
            checked.append(replace(entry, reason=entry.reason + "; not checked deeply (built before buildsys 0.4)"))
            continue
        try:
            if isolation.in_process():
                now = _current_digests(entry.spec)
            else:  # model code runs in a process of its own here too (it may crash, exit, print)
                isolation.start_server()
                now = isolation.run_isolated(_current_digests, (entry.spec,), key=entry.key,
                                             timeout_s=isolation.DEFAULT_TIMEOUT_S)
        except BuildsysError as exc:
            checked.append(replace(entry, action=BUILD, forced=True, reason=f"drifted: it no longer exports: {exc}"))
            continue
        differs = [what for what in ("graph", "weights") if now.get(what) != recorded.get(what)]
        if differs:
            what = " and ".join({"graph": "exported graph", "weights": "weights"}[d] for d in differs)
            checked.append(replace(entry, action=BUILD, forced=True,
                                   reason=f"drifted: its {what} differ from the built artifact's although its "
                                          "recorded sources did not change (a dependency buildsys cannot see)"))
        else:
            checked.append(replace(entry, reason=entry.reason + "; exported graph and weights unchanged (--deep)"))
    return checked


def _current_digests(spec: BuildSpec) -> dict:
    """The entry's model exported now, as ``exported_digests`` (what the model prints goes to
    stderr: stdout may be carrying a JSON document)."""
    from .export import export_model
    from .models import instantiate

    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return exported_digests(export_model(instantiate(spec.model), example_input(spec), spec.model.task))
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _remember_sources(store: Store, entry: PlanEntry, outcome: BuildOutcome, logs: "_RunLogs") -> None:
    """The entry's depfile, which the next plan re-checks (a lost one costs a re-export, nothing more)."""
    try:
        sources.write_depfile(store.root, entry.entry_key or entry_key(outcome.material), outcome.dependencies,
                              entry.spec.model.config_dir)
    except OSError as exc:
        logs.note(entry, f"could not write its depfile: {exc}")


def default_jobs() -> int:
    return max(1, min(2, os.cpu_count() or 1))
