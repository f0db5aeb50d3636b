"""A build log has a size cap: a model printing in a loop does not fill the disk."""

from __future__ import annotations

import os

from buildsys.pipeline import runlog


def test_a_log_stops_taking_model_output_at_its_cap_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("BUILDSYS_LOG_MAX_BYTES", "200000")
    log = tmp_path / "run.log"
    runlog.append_line(log, "[buildsys] stage export")
    with runlog.captured(log):
        line = b"the model says hello again and again\n" * 100
        for _ in range(3000):  # 11 MB through file descriptor 1, as a C extension would print
            os.write(1, line)
        print("and through Python's stdout", flush=True)
    runlog.append_line(log, "[buildsys] FAILED after 1.0s: the model printed too much")
    text = log.read_text()
    assert log.stat().st_size <= 200_000 + 4096, log.stat().st_size
    assert text.count("log truncated at 200000 bytes (BUILDSYS_LOG_MAX_BYTES)") == 1
    assert text.splitlines()[0].endswith("[buildsys] stage export")
    assert text.splitlines()[-1].endswith("[buildsys] FAILED after 1.0s: the model printed too much")


def test_buildsys_own_lines_have_a_bound_too(tmp_path, monkeypatch):
    monkeypatch.setenv("BUILDSYS_LOG_MAX_BYTES", "4096")
    log = tmp_path / "run.log"
    for _ in range(100_000):
        runlog.append_line(log, "[buildsys] " + "x" * 100)
    assert log.stat().st_size <= 4096 + runlog.OWN_LINES_ROOM
