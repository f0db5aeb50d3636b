"""kill -9 the builder at random points, many times; after each kill the store and registry
must still hold only whole artifacts, and the next build must publish correctly.

    python -m tests.stress.crash_loop --rounds 50
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.stress.common import ROOT, audit, cli_command, cli_env, run_cli, write_config


def run(rounds: int, root: Path, seed: int = 0, latest: float = 1.2) -> dict:
    """``latest``: the latest kill, as a fraction of the baseline build's time (past 1, some rounds
    may finish before their kill)."""
    rng = random.Random(seed)
    write_config(root, [32, 40])
    start = time.perf_counter()
    first = run_cli(root, "build")
    if first.returncode != 0:
        raise SystemExit(f"baseline build failed:\n{first.stderr}")
    build_s = time.perf_counter() - start
    kills = completed = 0
    problems: list[str] = []
    rows_checked = files_checked = objects_checked = 0
    for i in range(rounds):
        delay = rng.uniform(0.1, build_s * latest)
        # --force: every round exports, compiles, writes objects and a row again
        proc = subprocess.Popen(cli_command(root, "build", "--force"), env=cli_env(), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=delay)
            completed += 1
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            if proc.wait() == -signal.SIGKILL:  # killed mid-build (not finished just before the kill)
                kills += 1
            else:
                completed += 1
        result = audit(root)
        rows_checked += result["rows"]
        files_checked += result["files"]
        objects_checked += result["objects"]
        problems += [f"round {i} (after {delay:.1f}s): {p}" for p in result["problems"]]
    final = run_cli(root, "build")
    if final.returncode != 0:
        problems.append(f"the build after the last kill failed: {final.stderr[-500:]}")
    verify = run_cli(root, "verify")
    if verify.returncode != 0:
        problems.append(f"verify after the loop: {verify.stdout} {verify.stderr}")
    gc = run_cli(root, "gc")
    after = audit(root)
    problems += after["problems"]
    if after["temp_entries"]:
        problems.append(f"{after['temp_entries']} staging entries left after gc")
    return {"rounds": rounds, "kills": kills, "completed_before_kill": completed,
            "baseline_build_s": round(build_s, 1), "rows_checked": rows_checked, "files_checked": files_checked,
            "objects_checked": objects_checked, "gc": gc.stdout.strip().splitlines()[-1:],
            "failures": len(problems), "problems": problems[:20]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crash-loop-") as tmp:
        print(json.dumps(run(args.rounds, Path(tmp), args.seed), indent=2))


if __name__ == "__main__":
    main()
