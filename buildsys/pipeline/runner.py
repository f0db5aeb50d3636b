"""The builder's side of a build run: plan order, locks, isolation, publishing, the registry.

``run_builds`` takes the planned jobs, tunes those that need it first, runs each build in a
process of its own (``isolation``; ``build.build_artifact`` is what runs there), publishes the
outcome into the store and writes the registry row last, so a crash leaves either nothing or
a whole artifact. One failing entry never stops the others. It tells its caller what happens
through ``jobs.Event``s.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

from buildsys.artifacts.store import Store, pid_alive
from buildsys.config.spec import BuildSpec
from buildsys.artifacts.space import describe_os_error, is_storage_error
from buildsys.errors import BuildError, StoreError
from buildsys.pipeline import isolation, runlog, sources
from buildsys.pipeline.build import BuildOutcome, build_artifact, tune_entry
from buildsys.pipeline.failures import failure_text, in_model_code, log_text
from buildsys.format.status import Action, Outcome, RunStatus
from buildsys.pipeline import jobs as events
from buildsys.pipeline.jobs import Job
from buildsys.pipeline.keys import entry_key
from buildsys.pipeline.plan import plan_builds
from buildsys.pipeline.publish import publish


@dataclass
class BuildResult:
    entry: Job
    status: Outcome
    seconds: float = 0.0
    error: str | None = None
    record: object | None = None
    log_path: str | None = None  # the run's log file (none for cached and skipped entries)
    storage: bool = False  # it failed because the store's disk is full (or read-only)


@dataclass
class BuildReport:
    results: list[BuildResult] = field(default_factory=list)

    def count(self, status: Outcome | str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def failed(self) -> bool:
        return self.count(Outcome.FAILED) > 0

    def raise_for_failures(self, *, tuning: bool = False) -> None:
        """A ``BuildError`` (exit 3) when an entry failed: each is recorded with its error and log."""
        failed = self.count(Outcome.FAILED)
        if not failed:
            return
        storage = next((r for r in self.results if r.status == Outcome.FAILED and r.storage), None)
        if storage is not None:  # the disk, not the entries: exit 4 like every other store write
            raise StoreError(f"{failed} of {len(self.results)} entries failed, {storage.entry.spec.describe()} "
                             f"with: {storage.error.splitlines()[0]}")
        if tuning:
            raise BuildError(f"tuning failed for {failed} of {len(self.results)} entries; the records made so far "
                             "are kept (run again to resume)")
        raise BuildError(f"{failed} of {len(self.results)} entries failed; failed entries are recorded with their "
                         "error and log; `buildsys plan` shows them, `buildsys log KEY` prints a log")


class _RunLogs:
    """A log file per entry for this invocation (tuning and the build that follows share it)
    and the stage reporters that write into it and tell the caller."""

    def __init__(self, store: Store, emit):
        self.store, self.emit = store, emit
        self.paths: dict[BuildSpec, Path] = {}
        self.entries: dict[str, Job] = {}

    def path(self, entry: Job) -> Path:
        if entry.spec not in self.paths:
            try:
                path = runlog.new_log_path(self.store.root, entry.key)
            except OSError as exc:
                raise StoreError(f"cannot make the run's log: {describe_os_error(exc)}") from None
            runlog.append_line(path, f"[buildsys] {entry.spec.describe()} key {entry.key} "
                                     f"({entry.spec.origin}): {entry.reason}")
            self.paths[entry.spec] = path
        return self.paths[entry.spec]

    def reporter(self, entry: Job, queue=None) -> runlog.StageReporter:
        self.entries[entry.key] = entry
        reporter = runlog.StageReporter(entry.key, str(self.path(entry)), queue)
        if queue is None:
            reporter.local = self.on_stage
        return reporter

    def on_stage(self, key: str, stage: str, at: float) -> None:
        entry = self.entries.get(key)
        if entry is not None:
            self.emit(events.StageBegun(entry, stage, at))

    def note(self, entry: Job, text: str) -> None:
        runlog.append_line(self.path(entry), f"[buildsys] {text}")


def _tune_first(entries: list[Job], store: Store, registry, report: "BuildReport", emit,
                logs: _RunLogs) -> list[Job]:
    """Tune the entries whose records are not final, then plan them again with their real key."""
    ready = []
    for entry in entries:
        if not entry.tune_first:
            ready.append(entry)
            continue
        emit(events.TuneStarted(entry, entry.reason))
        started = time.perf_counter()
        reporter = logs.reporter(entry)
        try:
            with runlog.captured(reporter.log_path), _interrupts_noticed() as interrupted:
                try:
                    tuned = tune_entry(entry.spec, store, registry, entry.key, on_stage=reporter,
                                       on_progress=lambda progress, e=entry: emit(events.TuneProgress(e, progress)))
                except BaseException:
                    if interrupted:  # TVM turns Ctrl-C into a RuntimeError; it must still stop the build
                        raise KeyboardInterrupt from None
                    raise
        except BaseException as exc:  # noqa: BLE001 - recorded per entry; the records made so far stay
            text, storage = failure_text(exc, store)  # a full disk first, as for a build
            logs.note(entry, f"tuning FAILED: {log_text(exc)}")
            run_id = registry.start_run(entry.key, entry.spec.describe(), log_path=reporter.log_path)
            registry.finish_run(run_id, RunStatus.FAILED, text)
            report.results.append(BuildResult(entry, Outcome.FAILED, time.perf_counter() - started, error=text,
                                              log_path=reporter.log_path, storage=storage))
            emit(events.Failed(entry, time.perf_counter() - started, text, reporter.log_path))
            if isinstance(exc, KeyboardInterrupt):
                raise
            continue
        logs.note(entry, f"tuned: {tuned.trials_run} trials run, {tuned.trials_before} found in the database")
        emit(events.Tuned(entry, tuned))
        again = plan_builds([entry.spec], registry, store, force=entry.forced)[0]
        if again.tune_first:  # cannot happen unless the database was removed meanwhile
            raise BuildError(f"tuning finished but the entry still needs tuning: {again.reason}", key=entry.key)
        if again.action == Action.CACHED:
            logs.note(entry, f"cached after tuning: {again.key}")
            report.results.append(BuildResult(again, Outcome.CACHED))
            emit(events.Cached(again, again.reason))
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


def tune_entries(entries: list[Job], store: Store, registry,
                 on_event: Callable[[events.Event], None] | None = None) -> BuildReport:
    """Tune the entries that need it (events and logs as in ``run_builds``); build nothing."""
    emit = on_event or (lambda _event: None)
    report = BuildReport()
    _tune_first(entries, store, registry, report, emit, _RunLogs(store, emit))
    return report


def build_logged(spec: BuildSpec, key: str, material: Mapping, staging: str, store_root: str | None,
                 reporter: runlog.StageReporter) -> BuildOutcome:
    """``build_artifact`` with its output in the run's log: in the builder's process or in a worker."""
    with runlog.captured(reporter.log_path):
        try:
            return build_artifact(spec, key, material, staging, store_root, on_stage=reporter)
        except BaseException as exc:
            runlog.append_line(reporter.log_path, f"[buildsys] the build raised: {log_text(exc)}")
            if is_storage_error(exc):  # the file it concerns, not "unexpected OSError" and a traceback
                raise BuildError(describe_os_error(exc), key=key) from None
            raise


def run_builds(entries: list[Job], store: Store, registry, *, jobs: int = 1,
               on_event: Callable[[events.Event], None] | None = None,
               timeout_s: float | None = isolation.DEFAULT_TIMEOUT_S) -> BuildReport:
    """Build every entry whose action is ``build``; one failure never stops the others.

    Each build runs in a process of its own (``isolation``): a crash, an exit or a hang
    (``timeout_s``) inside model code fails that entry only, with its cause. Events
    (``jobs.Event``) tell the caller what happens. Each build run writes a log file under the
    store's logs/; its path is on the run's registry row."""
    emit = on_event or (lambda _event: None)
    report = BuildReport()
    logs = _RunLogs(store, emit)
    store.clean_tmp()  # what crashed builders left: staging dirs, and runs that will never finish
    registry.mark_crashed_runs(pid_alive)
    todo = []
    for entry in entries:
        if entry.action == Action.BUILD:
            todo.append(entry)
        elif entry.action == Action.CACHED:
            report.results.append(BuildResult(entry, Outcome.CACHED))
            emit(events.Cached(entry, entry.reason))
        else:
            report.results.append(BuildResult(entry, Outcome.SKIPPED))
            emit(events.Skipped(entry, entry.reason))
    todo = _tune_first(todo, store, registry, report, emit, logs)
    if todo:
        _Builds(store, registry, report, logs, emit, timeout_s).run(todo, jobs)
    return report


class _Builds:
    """One invocation's builds: each job under its key's lock, built (in a process of its own unless
    BUILDSYS_BUILD_IN_PROCESS is set), then published or recorded as failed. Registry rows,
    results and events are written by one thread at a time (``guard``)."""

    def __init__(self, store: Store, registry, report: BuildReport, logs: _RunLogs, emit,
                 timeout_s: float | None):
        self.store, self.registry, self.report, self.logs, self.emit = store, registry, report, logs, emit
        self.timeout_s = timeout_s
        self.isolate = not isolation.in_process()
        self.guard = threading.RLock()

    def run(self, todo: list[Job], jobs: int) -> None:
        """A builder holds at most one key lock while it waits for another, so builders with
        overlapping matrices cannot deadlock: busy keys are deferred, then waited for one by one."""
        pool, queued = None, {}
        if self.isolate:
            isolation.reset()
            isolation.start_server()  # from this thread: the server lives as long as the builder does
        try:
            deferred = todo
            if jobs > 1 and len(todo) > 1:
                deferred = []
                pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="buildsys-build")
                for entry in todo:
                    stack = ExitStack()
                    if not stack.enter_context(self.store.lock(entry.key, blocking=False)):
                        stack.close()
                        deferred.append(entry)
                        continue
                    begun = self.begin(entry, stack)
                    if begun is not None:
                        queued[pool.submit(self.build_one, entry, stack, *begun)] = (stack, begun[0])
                for future in list(queued):
                    future.result()
                pool.shutdown()
            for entry in deferred:
                stack = ExitStack()
                stack.enter_context(self.store.lock(entry.key))
                begun = self.begin(entry, stack)
                if begun is not None:
                    self.build_one(entry, stack, *begun)
        except BaseException:
            isolation.kill_all()  # Ctrl-C: no build outlives the builder, and no queued one starts
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
                for future, (stack, run_id) in queued.items():
                    if future.cancelled():  # never started: its lock and staging go, its run says why
                        stack.close()
                        with self.guard:
                            self.registry.finish_run(run_id, RunStatus.FAILED,
                                                     "interrupted (Ctrl-C) before it started")
            raise

    def begin(self, entry: Job, stack: ExitStack) -> tuple[int, Path] | None:
        """With the key's lock held (on ``stack``): (run id, staging dir), or None (and ``stack``
        closed) if another builder published the key while we waited for its lock."""
        with self.guard:
            existing = None if entry.forced else self.registry.get(entry.key)
            if existing is not None and all(self.store.has(f.digest) for f in existing.files):
                self.report.results.append(BuildResult(entry, Outcome.CACHED))
                self.emit(events.Cached(entry, "built by another process meanwhile"))
                stack.close()
                return None  # (a row whose objects are gone is rebuilt, and its row replaced)
            log_path = str(self.logs.path(entry))
            run_id = self.registry.start_run(entry.key, entry.spec.describe(), log_path=log_path)
            staging = stack.enter_context(self.store.staging(prefix=entry.key[:12]))
            self.emit(events.Started(entry, log_path))
            return run_id, staging

    def build_one(self, entry: Job, stack: ExitStack, run_id: int, staging) -> None:
        """Runs the build, then publishes or records the failure; ``stack`` holds the key's lock and
        the staging dir until then."""
        with stack:
            started = time.perf_counter()
            args = (entry.spec, entry.key, dict(entry.material), str(staging), str(self.store.root),
                    self.logs.reporter(entry, isolation.PARENT_QUEUE if self.isolate else None))
            stages: list[str] = []  # the build's stages so far, as its process reported them

            def on_message(item) -> None:
                stages.append(item[1])
                with self.guard:
                    self.logs.on_stage(*item)

            try:
                if self.isolate:
                    outcome = isolation.run_isolated(build_logged, args, key=entry.key, timeout_s=self.timeout_s,
                                                     on_message=on_message)
                else:
                    outcome = build_logged(*args)
            except BaseException as exc:  # noqa: BLE001 - recorded per entry
                exc = in_model_code(exc, entry, stages[-1] if stages else None)
                with self.guard:
                    self.finish(entry, run_id, started, exc=exc)
            else:
                with self.guard:
                    self.finish(entry, run_id, started, outcome=outcome)

    def finish(self, entry: Job, run_id: int, started: float, outcome: BuildOutcome | None = None,
               exc: BaseException | None = None) -> None:
        seconds = time.perf_counter() - started
        log_path = str(self.logs.path(entry))
        if exc is None and outcome.key != entry.key:
            self.logs.note(entry, f"its recorded model sources give it the key {outcome.key} (planned {entry.key})")
            entry = replace(entry, key=outcome.key, material=outcome.material)
            existing = None if entry.forced else self.registry.get(entry.key)
            if existing is not None and all(self.store.has(f.digest) for f in existing.files):  # same sources
                _remember_sources(self.store, entry, outcome, self.logs)
                self.registry.finish_run(run_id, RunStatus.BUILT, key=entry.key)
                self.report.results.append(BuildResult(entry, Outcome.CACHED, seconds, log_path=log_path))
                self.emit(events.Cached(entry, "its recorded sources name an artifact already built"))
                return
        if exc is None:
            self.logs.reporter(entry)("publish")  # the log line and the event, as from the build itself
            try:
                record = publish(outcome, entry.spec, self.store, self.registry)
            except BaseException as publish_exc:  # noqa: BLE001 - recorded, then reported
                exc = publish_exc
            else:
                _remember_sources(self.store, entry, outcome, self.logs)
                self.registry.finish_run(run_id, RunStatus.BUILT, key=entry.key)
                self.logs.note(entry, f"built and published {entry.key} in {seconds:.1f}s")
                self.report.results.append(BuildResult(entry, Outcome.BUILT, seconds, record=record,
                                                       log_path=log_path))
                self.emit(events.Built(entry, seconds, outcome.manifest, record, log_path))
                return
        text, storage = failure_text(exc, self.store)
        self.logs.note(entry, f"FAILED after {seconds:.1f}s: {text}")
        self.registry.finish_run(run_id, RunStatus.FAILED, text)
        self.report.results.append(BuildResult(entry, Outcome.FAILED, seconds, error=text, log_path=log_path,
                                               storage=storage))
        self.emit(events.Failed(entry, seconds, text, log_path))
        if isinstance(exc, KeyboardInterrupt):
            raise exc


def _remember_sources(store: Store, entry: Job, outcome: BuildOutcome, logs: "_RunLogs") -> None:
    """The entry's depfile, which the next plan re-checks (a lost one costs a re-export, nothing more)."""
    try:
        sources.write_depfile(store.root, entry.entry_key or entry_key(outcome.material), outcome.dependencies,
                              entry.spec.model.config_dir)
    except OSError as exc:
        logs.note(entry, f"could not write its depfile: {describe_os_error(exc)}")
