"""Every process boundary handles a vanished parent quietly: a build process whose builder was
killed (``kill -9``) exits without a word, MetaSchedule's workers die with their tuner, and the
semaphores a killed build leaked are cleaned up without multiprocessing's warning."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from buildsys.pipeline import isolation

ROOT = Path(__file__).resolve().parents[2]


def _python(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "BUILDSYS_BUILD_START": "spawn", **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          env=environment, cwd=ROOT, timeout=120)


ORPHAN = """
import os, sys
from buildsys.pipeline import isolation
from tests.fixtures import orphans

go, mode, after = sys.argv[1:]
context = isolation._context()
receiver, sender = context.Pipe(duplex=False)
process = context.Process(target=isolation._child, args=(sender, dict(os.environ), os.getcwd(), list(sys.path),
                          orphans.after_the_parent_is_gone, (go, mode, orphans.Holder(), after)))
process.start()
sender.close()
receiver.close()  # the builder's end of the pipe is gone, as after kill -9 of the builder
open(go, "w").close()
process.join(60)
print("exitcode", process.exitcode)
"""


def test_a_build_process_whose_builder_is_gone_exits_quietly(tmp_path):
    """The result (or a stage message) written into a pipe nobody reads: BrokenPipeError, which
    printed two chained tracebacks to the user's terminal; now the process ends without a word."""
    for mode in ("result", "message"):
        go, after = tmp_path / f"go-{mode}", tmp_path / f"after-{mode}"
        done = _python(ORPHAN, str(go), mode, str(after))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"exitcode {isolation.ORPHANED_EXIT}", (mode, done.stdout, done.stderr)
        assert done.stderr == "", (mode, done.stderr)
        assert not after.exists(), mode  # a build whose builder is gone stops at once


LEAK = """
from buildsys.errors import BuildError
from buildsys.pipeline import isolation
from tests.fixtures import orphans

isolation.start_server()
try:
    isolation.run_isolated(orphans.leaks_a_semaphore_and_exits, (), key="ab" * 32, timeout_s=60)
except BuildError as exc:
    print(exc)
"""


def test_semaphores_a_killed_build_leaked_are_cleaned_up_quietly():
    """multiprocessing's resource tracker (the builder's, shared by its build processes) removes
    them when the builder exits; it no longer warns on the user's terminal about "leaked
    semaphore objects" that a model's build left behind."""
    done = _python(LEAK)
    assert done.returncode == 0, done.stderr
    assert "exited with code 3 before returning a result" in done.stdout, done.stdout
    assert done.stderr == "", done.stderr


def test_tuning_workers_die_with_their_tuner(tmp_path):
    """MetaSchedule's builder and runner workers (TVM's popen workers) start with the
    sitecustomize of ``worker_environment``, which asks the kernel to kill them with their tuner
    (``PR_SET_PDEATHSIG``): a worker mid-job no longer outlives a killed builder and writes a
    BrokenPipeError's traceback when it answers."""
    from buildsys.compiler.tuning import worker_environment

    probe = """
    import ctypes, signal
    value = ctypes.c_int(0)
    ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
    print(signal.Signals(value.value).name if value.value else "none")
    """
    with worker_environment(str(tmp_path)):
        done = _python(probe, env={k: os.environ[k] for k in ("PYTHONPATH", "BUILDSYS_TENSOR_INTRIN_DIR")})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.strip() == "SIGKILL"
