"""N builder processes with overlapping matrices on one SQLite registry and one store.

Every entry must end built exactly once, with no lost rows and no "database is locked".

    python -m tests.stress.concurrent_builders --procs 4
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import tempfile
from pathlib import Path

from tests.stress.common import ROOT, audit, cli_command, cli_env, run_cli, write_config

SIZES = [32, 40, 48, 56]


def run(procs: int, root: Path) -> dict:
    write_config(root, SIZES)
    # process i builds three neighbouring sizes: every size is wanted by several processes
    commands = []
    for i in range(procs):
        only = [f"input_size={SIZES[(i + j) % len(SIZES)]}" for j in range(3)]
        commands.append(cli_command(root, "build", *[a for o in only for a in ("--only", o)]))
    running = [subprocess.Popen(c, env=cli_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for c in commands]
    outputs = [p.communicate(timeout=900) for p in running]
    problems = []
    for i, (p, (out, err)) in enumerate(zip(running, outputs)):
        if p.returncode != 0:
            problems.append(f"builder {i} exited {p.returncode}: {err[-300:]}")
        if "locked" in out + err:
            problems.append(f"builder {i} saw a locked database")
    conn = sqlite3.connect(root / "artifacts" / "registry.db")
    built = dict(conn.execute("SELECT key, COUNT(*) FROM build_runs WHERE status = 'built' GROUP BY key"))
    artifacts = [r[0] for r in conn.execute("SELECT key FROM artifacts")]
    conn.close()
    if len(artifacts) != len(SIZES):
        problems.append(f"{len(artifacts)} artifacts registered, expected {len(SIZES)}")
    duplicates = {k[:12]: n for k, n in built.items() if n != 1}
    if duplicates:
        problems.append(f"keys built more than once: {duplicates}")
    cached_by_other = sum(out.count("built by another process meanwhile") for out, _ in outputs)
    result = audit(root)
    problems += result["problems"]
    verify = run_cli(root, "verify")
    if verify.returncode != 0:
        problems.append(f"verify: {verify.stdout}")
    return {"procs": procs, "entries": len(SIZES), "requested_builds": 3 * procs, "artifacts": len(artifacts),
            "compiled": sum(built.values()), "waited_then_cached": cached_by_other, "rows_checked": result["rows"],
            "failures": len(problems), "problems": problems}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--procs", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="concurrent-") as tmp:
        print(json.dumps(run(args.procs, Path(tmp)), indent=2))


if __name__ == "__main__":
    main()
