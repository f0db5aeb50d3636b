"""MetaSchedule tuning: fill a scope's tuning database (``tuning_db``) and apply its records.

Two traps of TVM 0.27 are handled here: ``TuneContext`` and every builder
worker import ``tvm.s_tir.tensor_intrin``, which parses every intrinsic of
every target (40-75 s here, past the builder's 30 s timeout); only the x86
ones are needed, so the package is replaced by a stub that imports just those.
Builder/runner workers also do not get torch (tvm_ffi imports it eagerly).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from buildsys.errors import BuildError
from buildsys.format.files import atomic_write
from buildsys.compiler.tuning_db import RECORD_FILE, WORKLOAD_FILE, TuningDatabase
from buildsys.config.spec import BuildSpec

INTRIN_SUBMODULES = ("x86",)  # the CPU targets buildsys accepts are x86 (targets.py)
BUILDER_TIMEOUT_S = 120.0
RUNNER_TIMEOUT_S = 60.0

_WORKER_SITECUSTOMIZE = '''\
# Written by buildsys.compiler.tuning for MetaSchedule's builder/runner workers only.
import ctypes, os, signal, sys, types
try:  # PR_SET_PDEATHSIG: a worker dies with its tuner (a worker mid-job outlived a killed builder,
    # then wrote a BrokenPipeError's traceback when it answered)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
except (OSError, AttributeError):  # not Linux
    pass
_stub = types.ModuleType("tvm.s_tir.tensor_intrin")
_stub.__path__ = [os.environ["BUILDSYS_TENSOR_INTRIN_DIR"]]
sys.modules["tvm.s_tir.tensor_intrin"] = _stub
'''
_WORKER_TORCH = 'raise ImportError("torch is not needed by MetaSchedule workers (buildsys.compiler.tuning)")\n'


@dataclass
class TuneReport:
    scope: str
    tasks: int
    workloads: list[str]
    per_task: int
    trials_before: int
    trials_run: int = 0
    seconds: float = 0.0
    complete: bool = False
    untunable: int = 0  # tasks with data-dependent shapes, left to the default schedules
    best_us: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- TVM side

def install_intrin_stub() -> str:
    """Replace ``tvm.s_tir.tensor_intrin`` by a package that loads only the x86 intrinsics
    (0.5 s instead of 40-75 s). Returns the real package directory."""
    import tvm.s_tir

    directory = str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")
    current = sys.modules.get("tvm.s_tir.tensor_intrin")
    if current is None or not getattr(current, "__buildsys_stub__", False):
        if current is None:
            stub = types.ModuleType("tvm.s_tir.tensor_intrin")
            stub.__path__ = [directory]
            stub.__buildsys_stub__ = True
            sys.modules["tvm.s_tir.tensor_intrin"] = stub
        import importlib

        for name in INTRIN_SUBMODULES:
            importlib.import_module(f"tvm.s_tir.tensor_intrin.{name}")
    return directory


@contextlib.contextmanager
def worker_environment(intrin_dir: str) -> Iterator[None]:
    """PYTHONPATH for MetaSchedule's popen workers: the intrinsics stub, no torch, and death with
    their tuner."""
    folder = Path(tempfile.mkdtemp(prefix="buildsys-msworker-"))
    (folder / "sitecustomize.py").write_text(_WORKER_SITECUSTOMIZE)
    (folder / "torch").mkdir()
    (folder / "torch" / "__init__.py").write_text(_WORKER_TORCH)
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "BUILDSYS_TENSOR_INTRIN_DIR")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(folder)] + ([saved["PYTHONPATH"]] if saved["PYTHONPATH"] else []))
    os.environ["BUILDSYS_TENSOR_INTRIN_DIR"] = intrin_dir
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(folder, ignore_errors=True)


def prepare_for_tuning(mod, target):
    """The passes before task extraction and before applying records (the workload hash
    depends on them, so tuning and applying must run exactly these). Weights are marked
    layout-free so tuned kernels may read them prepacked (``cpu_weight_prepack`` of TVM's
    static-shape tuning pipeline)."""
    import tvm
    from tvm import relax

    T = relax.transform
    with target:
        return tvm.transform.Sequential([T.DecomposeOpsForInference(), T.CanonicalizeBindings(),
                                         relax.pipeline.zero_pipeline(), T.AttachAttrLayoutFreeBuffers()])(mod)


def workload_hash(prim_mod) -> str:
    """The structural hash MetaSchedule files a workload under (as written to the JSON file)."""
    import tvm_ffi

    return str(tvm_ffi.structural_hash(prim_mod))


def tunable(task) -> bool:
    """MetaSchedule measures a task on random arguments of static shapes; the data-dependent
    parts of a detector (after score filtering, NMS) have symbolic shapes and are left to the
    default schedules (``ValueError: Unsupported argument type: d0`` otherwise)."""
    from tvm.s_tir import meta_schedule as ms

    try:
        infos = ms.arg_info.ArgInfo.from_prim_func(task.dispatched[0]["main"])
    except Exception:  # noqa: BLE001 - symbolic shapes or scalar arguments
        return False
    return all(isinstance(dim, int) or hasattr(dim, "value") for info in infos for dim in info.shape)


def _progress_callback(on_progress: Callable[[dict], None], total: int, names: list[str]):
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.ir.utils import derived_object

    started = time.perf_counter()
    state = {"done": 0, "best": {}}

    @derived_object
    class Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            state["done"] += len(runner_results)
            for result in runner_results:
                secs = [float(s) for s in (result.run_secs or [])]
                if secs and result.error_msg is None:
                    mean = sum(secs) / len(secs) * 1e6
                    name = names[task_id]
                    state["best"][name] = min(state["best"].get(name, mean), mean)
            elapsed = time.perf_counter() - started
            done = min(state["done"], total)
            on_progress({"trials": done, "total": total, "task": names[task_id],
                         "tasks_measured": len(state["best"]), "tasks": len(names),
                         "best_us": state["best"].get(names[task_id]),
                         "elapsed_s": elapsed, "left_s": elapsed / done * (total - done) if done else None})

    return Progress(), state


@contextlib.contextmanager
def _candidates_sent(log: Path, on_progress: Callable[[dict], None], total: int,
                     interval_s: float = 10.0) -> Iterator[None]:
    """Progress before any round has finished: MetaSchedule commits records only when it
    comes back to a task, so the first round (every task once) reports nothing; its log
    says how many candidates it has sent for measurement."""
    import re
    import threading

    pattern = re.compile(rb"Sending (\d+) valid sample")
    start_at = log.stat().st_size if log.exists() else 0
    started = time.perf_counter()
    stop = threading.Event()

    def poll() -> None:
        sent = 0
        while not stop.wait(interval_s):
            try:
                with open(log, "rb") as handle:
                    handle.seek(start_at)
                    sent = sum(int(m.group(1)) for m in pattern.finditer(handle.read()))
            except OSError:
                continue
            elapsed = time.perf_counter() - started
            on_progress({"phase": "measuring", "sent": min(sent, total), "total": total, "elapsed_s": elapsed})

    thread = threading.Thread(target=poll, name="tuning-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def tune(mod, spec: BuildSpec, database: TuningDatabase, entry_id: str,
         on_progress: Callable[[dict], None] | None = None) -> TuneReport:
    """Extract the entry's tasks, tune what the database lacks, record the entry's workloads.

    Holds the scope lock throughout; the module is the imported Relax module (params as inputs).
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from buildsys.config.targets import to_tvm

    settings = spec.tuning
    if settings is None:
        raise BuildError("tune() called for an entry without tuning", stage="tune")
    target = to_tvm(database.target)
    started = time.perf_counter()
    with database.lock():
        database.repair()
        with tvm.transform.PassContext(opt_level=spec.opt_level, disabled_pass=list(spec.disabled_passes)):
            prepared = prepare_for_tuning(mod, target)
            extracted = ms.relax_integration.extract_tasks(prepared, target)
        tasks = [t for t in extracted if tunable(t)]
        hashes = [workload_hash(task.dispatched[0]) for task in tasks]
        trials = database.applied(hashes)["trials"]
        before = sum(trials.values())
        report = TuneReport(scope=database.scope, tasks=len(tasks), workloads=hashes, per_task=settings.cap,
                            trials_before=before, untunable=len(extracted) - len(tasks))
        info = {"entry": entry_id, "label": spec.describe(), "workloads": hashes, "trials": settings.trials,
                "per_task": settings.cap, "task_names": [t.task_name for t in tasks], "complete": False}
        atomic_write(database.entry_file(entry_id), json.dumps(info, indent=1))
        # Resuming (or sharing workloads with models tuned before): what is there counts.
        budget = settings.trials - before
        todo = [(t, settings.cap - trials[h]) for t, h in zip(tasks, hashes) if trials[h] < settings.cap]
        if budget > 0 and todo:
            intrin_dir = install_intrin_stub()
            names = [t.task_name for t, _ in todo]
            callbacks = list(ms.measure_callback.MeasureCallback.create("default"))
            state = None
            if on_progress is not None:
                progress, state = _progress_callback(on_progress, budget, names)
                callbacks.append(progress)
            db = ms.database.JSONDatabase(path_workload=str(database.path / WORKLOAD_FILE),
                                          path_tuning_record=str(database.path / RECORD_FILE))
            most = max(n for _, n in todo)
            try:
                log = database.path / "logs" / "tvm.s_tir.meta_schedule.logging.task_scheduler.log"
                watch = (_candidates_sent(log, on_progress, budget) if on_progress is not None
                         else contextlib.nullcontext())
                with worker_environment(intrin_dir), _quiet_metaschedule_console(), watch:
                    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                        [t for t, _ in todo], work_dir=str(database.path),
                        strategy=ms.search_strategy.EvolutionarySearch(
                            population_size=settings.population, genetic_num_iters=settings.genetic_iters),
                        seed=settings.seed)
                    ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(database.path),
                                  max_trials_global=budget, max_trials_per_task=most,
                                  num_trials_per_iter=min(settings.per_iter, most),
                                  builder=ms.builder.LocalBuilder(timeout_sec=BUILDER_TIMEOUT_S),
                                  runner=ms.runner.LocalRunner(timeout_sec=RUNNER_TIMEOUT_S),
                                  database=db, measure_callbacks=callbacks)
            except Exception as exc:
                raise BuildError(f"MetaSchedule tuning failed: {type(exc).__name__}: {str(exc)[-1500:]}",
                                 stage="tune") from None
            if state is not None:
                report.best_us = dict(state["best"])
        after = database.applied(hashes)["trials"]
        report.trials_run = sum(after.values()) - report.trials_before
        report.complete = True
        info["complete"] = True
        atomic_write(database.entry_file(entry_id), json.dumps(info, indent=1))
    report.seconds = time.perf_counter() - started
    return report


@contextlib.contextmanager
def _quiet_metaschedule_console() -> Iterator[None]:
    """MetaSchedule prints its task table to the console after every batch. The per-task
    log files under the database's logs/ keep everything; the console keeps our progress.
    (MetaSchedule gives its console handler its top logger's level when it makes it.)"""
    import logging

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    saved_level, saved_handlers = logger.level, logger.handlers[:]
    # MetaSchedule re-lists the handlers it finds by name and fails on an unnamed one; it
    # adds a file handler per run. Start each run bare and close what it opened.
    logger.handlers = []
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for handler in logger.handlers:
            handler.close()
        logger.handlers = saved_handlers
        logger.setLevel(saved_level)


def apply(mod, spec: BuildSpec, database: TuningDatabase):
    """The module with the database's best records applied (scheduled PrimFuncs) and its
    weight transforms lifted into ``main_transform_params``; run under the entry's
    PassContext. Returns (module, number of scheduled functions, why weights are not
    prepacked or None)."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from buildsys.config.targets import to_tvm

    target = to_tvm(database.target)
    with database.lock():
        database.repair()
        db = ms.database.JSONDatabase(path_workload=str(database.path / WORKLOAD_FILE),
                                      path_tuning_record=str(database.path / RECORD_FILE))
    T = relax.transform
    prepared = prepare_for_tuning(mod, target)
    with target, db:
        scheduled = T.MetaScheduleApplyDatabase()(prepared)
    count = sum(1 for _, f in scheduled.functions.items()
                if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and f.attrs.get("tirx.is_scheduled", False))
    # Weight layout rewrites the records ask for move into main_transform_params, which the
    # builder runs once; the artifact ships prepacked weights and `main` reads them as they are.
    # TVM 0.27's SplitLayoutRewritePreproc fails on some of Mask R-CNN's functions ("There should
    # be a compute block if there is only one subtree under the root"); then the rewrites stay
    # inside the kernels (correct, repeated at every run) and the manifest says so.
    prepack = None
    with target:
        try:
            lifted = tvm.transform.Sequential([T.SplitLayoutRewritePreproc(), T.LiftTransformParams(),
                                               T.FoldConstant()])(scheduled)
        except tvm.error.InternalError as exc:
            prepack = f"weights not prepacked: SplitLayoutRewritePreproc failed ({str(exc).splitlines()[0][:200]})"
            lifted = tvm.transform.Sequential([T.LiftTransformParams(), T.FoldConstant()])(scheduled)
    return lifted, count, prepack
