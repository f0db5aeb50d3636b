"""The runners' processes of ``buildsys bench`` (``buildsys.ops.bench``): one per runner, started
with the thread counts in its environment, asked for one thing at a time over a socket
(``buildsys.ops.bench_worker``), stopped between its turns, killed and reported when it fails,
dies or does not answer in time; and the rounds they are timed in, interleaved or alone."""

from __future__ import annotations

import os
import signal
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class RunnerFailed(Exception):
    """A runner's process answered with an error, died, or did not answer in time."""


@dataclass
class Timeouts:
    """Seconds a runner's process may take to answer before it is killed and reported (a hang
    guard, not a budget): set-up (imports, loading, an ONNX session), the warm-up of each batch size
    (torch.compile compiles there), and timed runs (``per_run`` times the warm-up, per run)."""

    setup_s: float = 1800.0
    warm_s: float = 1800.0
    floor_s: float = 60.0
    per_run: float = 20.0


class RunnerProcess:
    """One runner in a process of its own (``buildsys.ops.bench_worker``), started with the
    thread counts in its environment. Between its turns it is stopped (SIGSTOP): a thread pool that
    spins after its work (TVM's, OpenMP's, onnxruntime's all do) then takes no core from the runner
    being timed; it is continued (SIGCONT) just before its next request."""

    def __init__(self, name: str, setup: dict, *, threads: int, workdir: Path, env: dict[str, str] | None = None,
                 timeouts: Timeouts | None = None, freeze: bool = True):
        import socket
        import subprocess
        from multiprocessing.connection import Connection

        self.name, self.timeouts = name, timeouts or Timeouts()
        self.freeze = freeze and hasattr(signal, "SIGSTOP")
        self.stopped = False
        self.log = workdir / f"{name}.log"
        ours, theirs = socket.socketpair()
        environment = {**os.environ, **(env or {}), "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
                       "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": "1",  # numpy's pool: unused here
                       "PYTHONPATH": os.pathsep.join(filter(None, [_source_root(), os.environ.get("PYTHONPATH")]))}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "buildsys.ops.bench_worker", str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=environment,
                start_new_session=True)  # the terminal's Ctrl-C goes to the parent, which ends us
        theirs.close()
        self.connection = Connection(ours.detach())
        try:
            self.info = self.request("setup", {**setup, "threads": threads}, self.timeouts.setup_s)
        except BaseException:
            self.kill()
            raise

    def request(self, op: str, argument=None, timeout_s: float | None = None):
        if self.process.poll() is not None:
            raise RunnerFailed(self._death())
        if self.stopped:
            os.kill(self.process.pid, signal.SIGCONT)
            self.stopped = False
        try:
            self.connection.send((op, argument))
            if not self.connection.poll(timeout_s):
                self.kill()
                raise RunnerFailed(f"no answer to {op!r} within {timeout_s:.0f} s; killed{self._log_tail()}")
            status, value = self.connection.recv()
        except (EOFError, OSError):
            raise RunnerFailed(self._death()) from None
        if self.freeze:
            os.kill(self.process.pid, signal.SIGSTOP)
            self.stopped = True
        if status != "ok":
            raise RunnerFailed(f"{value}{self._log_tail()}")
        return value

    def time(self, number: int, warm_s: float) -> list[float]:
        t = self.timeouts
        return self.request("time", number, max(t.floor_s, t.per_run * number * warm_s))

    def _death(self) -> str:
        try:
            code = self.process.wait(timeout=10)
        except Exception:  # noqa: BLE001 - still there: say so
            return f"its process stopped answering{self._log_tail()}"
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        return f"its process {how}{self._log_tail()}"

    def _log_tail(self, limit: int = 600) -> str:
        try:
            text = self.log.read_bytes()[-limit:].decode(errors="replace").strip()
        except OSError:
            return ""
        return f" (last output: ...{text})" if text else ""

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # SIGKILL ends a stopped process too
        self.process.wait()
        self.connection.close()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.request("exit", None, 10)
            except RunnerFailed:
                pass
        self.kill()


def _source_root() -> str:
    """The directory that holds this buildsys package: the children import the same one."""
    return str(Path(__file__).resolve().parents[2])


class Session:
    """The runners' processes for one artifact, and what they answered."""

    def __init__(self, setups: dict[str, dict], failed: dict[str, str], *, threads: int, workdir: Path,
                 freeze: bool = True, status: Callable[[str], None] = lambda _text: None,
                 env: dict[str, str] | None = None, timeouts: Timeouts | None = None):
        self.setups, self.failed, self.threads, self.workdir = setups, failed, threads, workdir
        self.freeze, self.status, self.env, self.timeouts = freeze, status, env, timeouts
        self.processes: dict[str, RunnerProcess] = {}
        self.info: dict[str, dict] = {}
        self.compile_s: dict[str, float] = {}
        self.outputs: dict[tuple[str, int], Path] = {}
        self.numbers: list[int] = []

    def _alive(self) -> list[str]:
        return [name for name in self.setups if name not in self.failed]

    def _guard(self, name: str, step: Callable[[], object]):
        """``step()``, or None with the runner marked failed (its process ended) when it fails."""
        try:
            return step()
        except RunnerFailed as exc:
            self.failed[name] = str(exc)
            process = self.processes.pop(name, None)
            if process is not None:
                process.kill()
            return None

    def start(self, name: str) -> None:
        self.status(f"{name}: starting ...")
        try:
            process = RunnerProcess(name, self.setups[name], threads=self.threads, workdir=self.workdir,
                                    env=self.env, timeouts=self.timeouts, freeze=self.freeze)
        except RunnerFailed as exc:  # its process is gone
            self.failed[name] = str(exc)
            return
        self.processes[name] = process
        self.info[name] = process.info

    def bind(self, name: str, size: int, inputs: Path) -> float | None:
        process = self.processes[name]
        calls = self._guard(name, lambda: process.request("bind", str(inputs), process.timeouts.warm_s))
        if calls is None:
            return None
        if name == "torch_compile" and name not in self.compile_s:
            self.compile_s[name] = calls[0]  # its first call compiles
        return calls[-1]  # what one run costs, for the budget and the timeouts

    def finish(self, name: str, size: int) -> None:
        path = self.workdir / f"outputs-{name}-{size}.npz"
        if name in self.processes and self._guard(name, lambda: self.processes[name].request(
                "outputs", str(path), self.processes[name].timeouts.warm_s)) is not None:
            self.outputs[(name, size)] = path

    def interleaved(self, sizes, inputs, rounds, number, budget_s) -> dict[int, dict[str, dict]]:
        for name in list(self.setups):
            self.start(name)
        results = {}
        for size in sizes:
            warm = {name: self.bind(name, size, inputs[size]) for name in self._alive()}
            warm = {name: w for name, w in warm.items() if w is not None}
            used = _number_for(number, budget_s, rounds, sum(warm.values()))
            self.numbers.append(used)
            self.status(f"batch {size}: {rounds} rounds x {used} runs ..." if len(sizes) > 1 else
                        f"{rounds} rounds x {used} runs ...")
            per_round: dict[str, list[float]] = {name: [] for name in warm}
            for _ in range(rounds):
                for name in self._alive():
                    times = self._guard(name, lambda name=name: self.processes[name].time(used, warm[name]))
                    if times is not None:
                        per_round[name].append(statistics.median(times))
            for name in self._alive():
                self.finish(name, size)
            results[size] = _summarize({n: t for n, t in per_round.items() if n not in self.failed}, size)
        return results

    def alone(self, sizes, inputs, rounds, number, budget_s) -> dict[int, dict[str, dict]]:
        """Each runner's process alone: started, timed at every size, ended; then the next."""
        per_size: dict[int, dict[str, list[float]]] = {size: {} for size in sizes}
        share = None if budget_s is None else budget_s / max(1, len(self._alive()))
        for name in list(self.setups):
            self.start(name)
            for size in sizes:
                if name in self.failed:
                    break
                warm = self.bind(name, size, inputs[size])
                if warm is None:
                    break
                used = _number_for(number, share, rounds, warm)
                self.numbers.append(used)
                self.status(f"{name}: batch {size}: {rounds} rounds x {used} runs ...")
                times = []
                for _ in range(rounds):
                    timed = self._guard(name, lambda: self.processes[name].time(used, warm))
                    if timed is None:
                        break
                    times.append(statistics.median(timed))
                if name in self.failed:
                    break
                per_size[size][name] = times
                self.finish(name, size)
            if name in self.processes:
                self.processes.pop(name).close()
        return {size: _summarize({n: t for n, t in per_size[size].items() if n not in self.failed}, size)
                for size in sizes}

    def close(self) -> None:
        for process in self.processes.values():
            process.close()
        self.processes.clear()


def _number_for(number: int, budget_s: float | None, rounds: int, warm_s: float) -> int:
    """``number`` runs per round and runner, fewer (1 at least) when the rounds, judged from the
    warm-up, would pass ``budget_s``."""
    if budget_s is None or warm_s <= 0:
        return number
    return max(1, min(number, int(budget_s / (rounds * warm_s))))


def _summarize(per_round: dict[str, list[float]], size: int) -> dict[str, dict]:
    """Per runner: the median over rounds, its minimum, items/s, and the median of per-round
    ratios to eager and to onnxruntime."""
    results = {}
    for name, times in per_round.items():
        if not times:
            continue
        entry = {"ms": statistics.median(times), "min_ms": min(times), "rounds_ms": [round(t, 3) for t in times]}
        for reference, label in (("torch_eager", "ratio_vs_eager"), ("onnxruntime", "ratio_vs_onnxruntime")):
            if per_round.get(reference):
                entry[label] = statistics.median(a / b for a, b in zip(times, per_round[reference]))
        entry["items_per_s"] = size * 1e3 / entry["ms"] if entry["ms"] > 0 else None
        results[name] = entry
    return results
