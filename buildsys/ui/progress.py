"""What a person sees while the matrix builds: a live view (rich) on a terminal, a line
per event when the output is a file or CI, or failures only (quiet).

Each display is a callable taking the builder's events (``pipeline.jobs.Event``) and a
context manager around the run. The texts are shared, so the modes say the same things.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import IO

from buildsys.pipeline.jobs import (Built, Cached, Event, Failed, Skipped, StageBegun, Started, TuneProgress, Tuned,
                                    TuneStarted)

MODES = ("auto", "rich", "plain", "quiet")


def choose_mode(requested: str, stream: IO) -> str:
    """``auto``: the live view on an interactive terminal, plain lines anywhere else (CI, pipes, files)."""
    if requested != "auto":
        return requested
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if not interactive or os.environ.get("CI") or os.environ.get("TERM") == "dumb":
        return "plain"
    return "rich"


def make_display(mode: str, entries, *, err: bool = False, tune_only: bool = False):
    """The display for ``mode`` on stdout (stderr with ``err``). It writes to its own copy of the
    file descriptor: while a build runs in this process, descriptors 1 and 2 go to the run's log."""
    stream = sys.stderr if err else sys.stdout
    mode = choose_mode(mode, stream)
    kind = {"rich": RichDisplay, "plain": PlainDisplay, "quiet": QuietDisplay}[mode]
    out, errors = _own(stream), _own(sys.stderr)
    display = kind(entries, out or stream)
    display.owned = [f for f in (out, errors) if f is not None]
    display.errors = errors or sys.stderr  # failures, in plain and quiet modes
    display.tune_only = tune_only  # `buildsys tune`: an entry is done when it is tuned
    return display


def _own(stream: IO) -> IO | None:
    """A copy of ``stream``'s descriptor, or None if it is not a real file (a test runner's buffer)."""
    try:
        stream.flush()
        return os.fdopen(os.dup(stream.fileno()), "w", buffering=1, encoding=getattr(stream, "encoding", None),
                         errors="replace")
    except (AttributeError, OSError, ValueError):
        return None


# ---------------------------------------------------------------- texts


def head(index: int | str, total: int, entry) -> str:
    return f"[{index}/{total}] {entry.spec.describe()} ({entry.key[:12]})"


def built_text(event: Built) -> str:
    m = event.manifest
    t, p, lat = m["timings"], m["parity"], m["latency"]
    compared = ""
    if p.get("matched_fraction") is not None:
        pre = p.get("pre_nms_max_rel")
        compared = (f"; pre-NMS max_rel {pre:.2e}" if pre is not None else "") + (
            f"; {p['detections']} final detections matched ({p['matched_fraction']:.0%})")
        if p.get("tied_scores"):
            compared += ", scores tied: final order not enforced"
    verification = m.get("verification") or {}
    if p.get("max_rel") is None:
        checked = f"NOT verified ({verification.get('reason') or 'no run'})"
    else:
        how = verification.get("how")
        where = (f", on a {verification.get('key')} board over RPC" if how == "rpc" else
                 f", under {how}" if how not in (None, "native") else "")
        checked = f"parity max_rel {p['max_rel']:.2e} (tol {p['tolerance']:g}{compared}{where})"
    if lat.get("artifact_ms") is not None:
        speed = (f"{lat['artifact_ms']:.1f} ms vs eager {lat['torch_eager_ms']:.1f} ms = "
                 f"{lat['ratio_vs_eager']:.1f}x")
    elif isinstance(m.get("cuda"), dict):
        speed = f"no latency (CUDA code for {', '.join(m['cuda'].get('archs', []))}, {m['cuda'].get('fatbin_bytes', 0) / 1024:.0f} KiB)"
    else:
        speed = f"no latency ({m.get('cpu', {}).get('arch', 'another')} code" + (
            f"; {lat['emulated_ms'] / 1e3:.1f} s emulated, not latency)" if lat.get("emulated_ms") is not None else ")")
    return (f"built in {event.seconds:.1f}s (export {t['export_s']:.1f}s, import {t['import_s']:.1f}s, "
            f"compile {t['compile_s']:.1f}s, verify {t.get('verify_s', 0.0):.1f}s); {checked}; {speed}")


def tuned_text(report) -> str:
    skipped = f" ({report.untunable} with data-dependent shapes left untuned)" if report.untunable else ""
    return (f"tuned {report.tasks} tasks{skipped}, {report.per_task} trials each at most: {report.trials_run} "
            f"trials run now, {report.trials_before} found in the database (scope {report.scope}), "
            f"{report.seconds:.0f}s")


def tune_progress_text(info: dict) -> str:
    if info.get("phase") == "measuring":  # the first round: candidates sent, no records yet
        return f"tuning, {info['sent']}/{info['total']} candidates sent for measurement, {info['elapsed_s']:.0f}s"
    best = f", best {info['best_us']:.1f} us on {info['task']}" if info.get("best_us") else ""
    left = f", about {info['left_s'] / 60:.1f} min left" if info.get("left_s") is not None else ""
    return (f"tuning {info['trials']}/{info['total']} trials, {info['tasks_measured']}/{info['tasks']} tasks "
            f"measured, {info['elapsed_s']:.0f}s{best}{left}")


def failed_text(event: Failed) -> str:
    first = event.error.strip().splitlines()
    log = f" (log: {event.log_path})" if event.log_path else ""
    return f"FAILED after {event.seconds:.1f}s: {first[0] if first else ''}{log}"


class _Display:
    def __init__(self, entries, stream: IO):
        self.total = len(entries)
        self.index = {e.spec: i + 1 for i, e in enumerate(entries)}
        self.stream = stream
        self.owned: list[IO] = []
        self.errors: IO = stream
        self.tune_only = False
        self.lock = threading.Lock()

    def head(self, entry) -> str:
        return head(self.index.get(entry.spec, "?"), self.total, entry)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for f in self.owned:
            f.close()
        self.owned = []

    def line(self, text: str, stream: IO | None = None) -> None:
        stream = stream or self.stream
        with self.lock:
            stream.write(text + "\n")
            stream.flush()


class QuietDisplay(_Display):
    """Failures only (and the summary the command prints)."""

    def __call__(self, event: Event) -> None:
        if isinstance(event, Failed):
            self.line(f"{self.head(event.job)}: {failed_text(event)}", self.errors)


class PlainDisplay(_Display):
    """A line per event: for logs, pipes and CI. Tuning progress at most every ``tune_interval_s``."""

    def __init__(self, entries, stream: IO, tune_interval_s: float = 10.0):
        super().__init__(entries, stream)
        self.tune_interval_s = tune_interval_s
        self.last_tune_line = 0.0
        self.started: dict[object, float] = {}

    def __call__(self, event: Event) -> None:
        entry = event.job
        h = self.head(entry)
        match event:
            case TuneStarted(reason=reason):
                self.started[entry.spec] = time.monotonic()
                self.line(f"{h}: {reason}; tuning ...")
            case TuneProgress(progress=progress):
                now = time.monotonic()
                final = progress.get("trials") is not None and progress["trials"] >= progress["total"]
                if now - self.last_tune_line >= self.tune_interval_s or final:
                    self.last_tune_line = now
                    self.line(f"{h}: {tune_progress_text(progress)}")
            case Tuned(report=report):
                self.line(f"{h}: {tuned_text(report)}")
            case Started(log_path=log_path):
                self.started[entry.spec] = time.monotonic()
                self.line(f"{h}: building (log: {log_path})" if log_path else f"{h}: building ...")
            case StageBegun(stage=stage):
                since = time.monotonic() - self.started.get(entry.spec, time.monotonic())
                self.line(f"{h}: {stage} ({since:.1f}s in)")
            case Cached(reason=reason):
                self.line(f"{h}: cached, nothing to do: {reason}")
            case Skipped(reason=reason):
                self.line(f"{h}: {reason}")
            case Built():
                self.line(f"{h}: {built_text(event)}")
            case Failed():
                self.line(f"{h}: {failed_text(event)}", self.errors)


class RichDisplay(_Display):
    """A live view: one row per entry being built (stage, time in the stage, time in all),
    an overall bar with counts; finished entries scroll above it as one line each."""

    def __init__(self, entries, stream: IO, force_terminal: bool | None = None):
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn,
                                   TextColumn, TimeElapsedColumn)
        from rich.text import Text

        super().__init__(entries, stream)
        self.console = Console(file=stream, force_terminal=force_terminal, highlight=False)

        class StageColumn(ProgressColumn):
            def render(self, task) -> Text:
                stage = task.fields.get("stage", "")
                since = task.fields.get("since")
                detail = task.fields.get("detail") or ""
                clock = f" {time.monotonic() - since:4.0f}s" if since is not None else ""
                return Text(f"{stage}{clock}" + (f"  {detail}" if detail else ""), style="cyan")

        self.running = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), StageColumn(),
                                TimeElapsedColumn(), console=self.console)
        self.overall = Progress(TextColumn("[bold]matrix"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), console=self.console)
        self.counts = {"tuned": 0, "built": 0, "cached": 0, "skipped": 0, "failed": 0}
        self.overall_task = self.overall.add_task("matrix", total=self.total, counts=self._counts())
        self.tasks: dict[object, int] = {}  # by spec: tuning changes an entry's key
        # Python's prints are not redirected above the view: during a build they belong in the run's log.
        self.live = Live(Group(self.running, self.overall), console=self.console, refresh_per_second=4,
                         transient=False, redirect_stdout=False, redirect_stderr=False)

    def _counts(self) -> str:
        return ", ".join(f"{n} {k}" for k, n in self.counts.items() if n) or "starting"

    def __enter__(self):
        self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.live.stop()
        self.close()

    def _row(self, entry, stage: str, detail: str = ""):
        task = self.tasks.get(entry.spec)
        if task is None:
            self.tasks[entry.spec] = self.running.add_task(self.head(entry), total=None, stage=stage,
                                                          since=time.monotonic(), detail=detail)
        else:
            fields = {"stage": stage, "detail": detail}
            if self.running.tasks[self._position(task)].fields.get("stage") != stage:
                fields["since"] = time.monotonic()
            self.running.update(task, **fields)

    def _position(self, task_id: int) -> int:
        return next(i for i, t in enumerate(self.running.tasks) if t.id == task_id)

    def _done(self, entry, status: str, text: str, style: str) -> None:
        from rich.text import Text

        task = self.tasks.pop(entry.spec, None)
        if task is not None:
            self.running.remove_task(task)
        self.counts[status] += 1
        self.overall.update(self.overall_task, advance=1, counts=self._counts())
        self.console.print(Text.assemble((f"{status:7} ", style), f"{self.head(entry)}: {text}"))

    def __call__(self, event: Event) -> None:
        from rich.text import Text

        entry = event.job
        with self.lock:
            match event:
                case TuneStarted():
                    self._row(entry, "tune")
                case TuneProgress(progress=progress):
                    self._row(entry, "tune", tune_progress_text(progress))
                case Tuned(report=report) if self.tune_only:
                    self._done(entry, "tuned", tuned_text(report), "bold green")
                case Tuned(report=report):  # the build follows
                    self.console.print(Text.assemble(("tuned   ", "green"), f"{self.head(entry)}: {tuned_text(report)}"))
                    self._row(entry, "tuned")
                case Started():
                    self._row(entry, "export")
                case StageBegun(stage=stage):
                    self._row(entry, stage)
                case Cached(reason=reason):
                    self._done(entry, "cached", f"cache hit, nothing to do ({reason})", "green")
                case Skipped(reason=reason):
                    self._done(entry, "skipped", reason, "yellow")
                case Built():
                    self._done(entry, "built", built_text(event), "bold green")
                case Failed():
                    self._done(entry, "failed", failed_text(event), "bold red")
