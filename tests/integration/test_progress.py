"""What a person sees while building, and the log each build run leaves behind."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from buildsys.errors import UsageError

from tests.fixtures.workspace import Workspace

pytestmark = pytest.mark.model

STAGES = ["export", "import", "build", "verify", "publish"]

NOISY = """
models:
  noisy: {source: "tests.fixtures.models:noisy_cnn"}
  tiny_cnn: {source: "tests.fixtures.models:tiny_cnn"}
matrix:
  model: [noisy, tiny_cnn]
  input_size: [32]
"""


def _stages_in(text: str, key: str) -> list[str]:
    return re.findall(rf"\({key[:12]}\): (export|import|tune|build|verify|publish) \(", text)


def _log_stages(path: str) -> list[str]:
    return re.findall(r"\[buildsys\] stage (\w+)", Path(path).read_text())


@pytest.mark.parametrize("jobs", [1, 2])
def test_plain_progress_shows_stages_and_each_run_keeps_a_log(tmp_path, capfd, jobs):
    ws = Workspace(tmp_path, NOISY)
    assert ws.cli("build", "--progress", "plain", "-j", str(jobs)) == 0
    out, err = capfd.readouterr()
    runs = {r.label.split()[0]: r for r in ws.registry.runs()}
    assert set(runs) == {"noisy", "tiny_cnn"}
    for run in runs.values():
        # on the console: every stage, in order, per entry (from worker processes too)
        assert _stages_in(out, run.key) == STAGES, out
        # in the registry: the log's path; in the log: the stages and the outcome
        assert run.log_path and Path(run.log_path).parent == ws.store / "logs"
        assert _log_stages(run.log_path) == STAGES
        assert f"built and published {run.key}" in Path(run.log_path).read_text()
        assert f"building (log: {run.log_path})" in out
    # what libraries write below Python goes to the run's log, not the console
    noisy_log = Path(runs["noisy"].log_path).read_text()
    assert "native noise: written to file descriptor 2 by the model" in noisy_log
    assert "python noise: printed by the model" in noisy_log
    assert "native noise" not in out + err and "python noise" not in out + err
    assert "native noise" not in Path(runs["tiny_cnn"].log_path).read_text()
    assert "done: 2 built, 0 cached, 0 skipped, 0 failed" in out

    # a second run: cache hits are said as such, and no run (so no log) is started for them
    assert ws.cli("build", "--progress", "plain") == 0
    out, _ = capfd.readouterr()
    assert out.count("cached, nothing to do") == 2 and "building" not in out
    assert len(ws.registry.runs()) == 2
    # quiet: the summary only
    assert ws.cli("build", "--quiet") == 0
    out, err = capfd.readouterr()
    assert out.strip().splitlines() == ["done: 0 built, 2 cached, 0 skipped, 0 failed"] and err == ""

    # `buildsys log` prints it, by key prefix or alias
    key = runs["tiny_cnn"].key
    assert ws.cli("alias", "set", "prod-tiny", key[:12]) == 0
    capfd.readouterr()
    assert ws.cli("log", "prod-tiny", "--tail", "2") == 0
    lines = capfd.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].endswith("[buildsys] stage publish")
    assert f"[buildsys] built and published {key} in " in lines[1]
    assert ws.cli("log", key[:8], "--path") == 0
    assert capfd.readouterr().out.strip() == runs["tiny_cnn"].log_path


def test_a_failed_build_leaves_its_traceback_in_the_log(tmp_path, capfd):
    ws = Workspace(tmp_path, """
models:
  broken: {source: "tests.fixtures.models:raises_on_build"}
matrix: {model: [broken], input_size: [32]}
""")
    assert ws.cli("build", "--quiet") == 3
    out, err = capfd.readouterr()
    run = ws.registry.runs()[0]
    assert run.status == "failed" and run.log_path
    # quiet still names the failure and where its log is
    assert "FAILED after" in err and f"(log: {run.log_path})" in err and out.startswith("done: ")
    log = Path(run.log_path).read_text()
    assert "Traceback (most recent call last)" in log and "model function failed on purpose" in log
    assert re.search(r"\[buildsys\] FAILED after [0-9.]+s: ", log)
    # a failed key is not an artifact, and its log is still found by prefix
    assert ws.cli("log", run.key[:10]) == 0
    assert "model function failed on purpose" in capfd.readouterr().out
    assert ws.cli("log", "nosuchalias") == UsageError.exit_code
    assert ws.cli("log", "ffff0000") == UsageError.exit_code
    assert "no build run of a key that starts with 'ffff0000'" in capfd.readouterr().err


def test_a_native_crash_fails_its_entry_only_and_leaves_the_crash_in_its_log(tmp_path):
    """Each build runs in a process of its own: a segfault in model code fails that entry (with the
    signal named), the other entries build, and the crash's Python traceback is in its log."""
    ws = Workspace(tmp_path, """
models:
  crashes: {source: "tests.fixtures.models:segfaults_on_build"}
  fine: {source: "tests.fixtures.models:tiny_cnn"}
matrix: {model: [crashes, fine], input_size: [32]}
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    env.pop("BUILDSYS_BUILD_IN_PROCESS", None)
    proc = subprocess.run([sys.executable, "-m", "buildsys.cli", "-c", str(ws.config), "--store", str(ws.store),
                           "build", "--progress", "plain", "--jobs", "1"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 3, proc.stderr
    assert "done: 1 built, 0 cached, 0 skipped, 1 failed" in proc.stdout
    runs = {r.label.split()[0]: r for r in ws.registry.runs()}
    crashed = runs["crashes"]
    assert crashed.status == "failed" and "SIGSEGV" in crashed.error and crashed.log_path
    log = Path(crashed.log_path).read_text()
    assert "Fatal Python error: Segmentation fault" in log and "segfaults_on_build" in log
    assert runs["fine"].status == "built"