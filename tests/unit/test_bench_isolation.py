"""``buildsys bench`` runs each runner in a process of its own (``RunnerProcess``), stops it while
another is timed, and reports a runner that crashes, hangs or fails to set up as that runner's
error, the others timed as usual. Fake runners (tests/fixtures/bench_runners.py): no model, no
timing assertions."""

import os
import time

import numpy as np
import pytest

from buildsys.ops.bench_processes import RunnerFailed, RunnerProcess, Timeouts, Session

FAKES = "tests.fixtures.bench_runners"


def _inputs(tmp_path):
    path = tmp_path / "inputs-2.npz"
    np.savez(path, np.arange(4, dtype=np.float32))
    return {2: path}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("mode", ["interleaved", "alone"])
def test_each_runner_has_its_process_and_a_crash_or_hang_is_reported_not_waited_for(mode, tmp_path):
    setups = {name: {"factory": f"{FAKES}:{factory}"} for name, factory in
              [("torch_eager", "steady"), ("artifact", "steady"), ("crash", "crashing"), ("hang", "hanging"),
               ("broken", "failing_setup")]}
    session = Session(setups, {}, threads=3, workdir=tmp_path, timeouts=Timeouts(floor_s=5, warm_s=5))
    try:
        results = getattr(session, mode)([2], _inputs(tmp_path), rounds=2, number=3, budget_s=None)[2]
    finally:
        session.close()
    assert set(results) == {"torch_eager", "artifact"}
    for name in ("torch_eager", "artifact"):
        assert len(results[name]["rounds_ms"]) == 2 and results[name]["ratio_vs_eager"] > 0
        assert session.info[name]["threads"] == {"OMP_NUM_THREADS": "3", "TVM_NUM_THREADS": "3"}
        assert np.load(session.outputs[(name, 2)])["arr_0"].tolist() == [0, 2, 4, 6]
    pids = {session.info[name]["pid"] for name in session.info}
    assert len(pids) == len(session.info) and os.getpid() not in pids
    assert "SIGSEGV" in session.failed["crash"] and "about to crash" in session.failed["crash"]
    assert "no answer to 'bind' within 5 s" in session.failed["hang"]
    assert "RuntimeError: no such model here" in session.failed["broken"]
    assert all(_gone(pid) for pid in pids)  # nothing left behind, stopped or not


def test_a_waiting_runner_is_stopped_and_continued_for_its_turn(tmp_path):
    process = RunnerProcess("steady", {"factory": f"{FAKES}:steady"}, threads=1, workdir=tmp_path)
    try:
        def stopped():  # SIGSTOP lands a moment after kill() returns
            for _ in range(500):
                with open(f"/proc/{process.process.pid}/stat") as stat:
                    if stat.read().rsplit(")", 1)[1].split()[0] == "T":
                        return True
                time.sleep(0.01)
            return False
        assert stopped()  # after the set-up answered
        assert len(process.request("bind", str(_inputs(tmp_path)[2]), 30)) == 2  # continued to answer
        assert stopped() and len(process.time(4, 0.01)) == 4
    finally:
        process.close()
    assert process.process.returncode is not None


def test_an_unknown_runner_fails_its_setup_and_leaves_no_process(tmp_path):
    before = _children()
    with pytest.raises(RunnerFailed, match="ModuleNotFoundError"):
        RunnerProcess("x", {"factory": "no_such_module:runner"}, threads=1, workdir=tmp_path)
    assert _children() == before


def _children() -> set[int]:
    found = set()
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{task}/children") as children:
            found.update(int(pid) for pid in children.read().split())
    return found
