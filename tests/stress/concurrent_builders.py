"""N builder processes with overlapping matrices on one registry (SQLite, or any SQLAlchemy
URL such as PostgreSQL) and one store.

Every entry must end built exactly once, with no lost rows and no "database is locked".

    python -m tests.stress.concurrent_builders --procs 4 [--registry postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from tests.stress.common import ROOT, audit, cli_command, cli_env, run_cli, write_config

SIZES = [32, 40, 48, 56]


def run(procs: int, root: Path, registry_url: str | None = None) -> dict:
    from buildsys.artifacts.registry import Registry
    from buildsys.artifacts.store import Store

    write_config(root, SIZES)
    url = registry_url or f"sqlite:///{root / 'artifacts' / 'registry.db'}"
    # process i builds three neighbouring sizes: every size is wanted by several processes
    commands = []
    for i in range(procs):
        only = [f"input_size={SIZES[(i + j) % len(SIZES)]}" for j in range(3)]
        commands.append(cli_command(root, "--registry", url, "build", *[a for o in only for a in ("--only", o)]))
    running = [subprocess.Popen(c, env=cli_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for c in commands]
    outputs = [p.communicate(timeout=900) for p in running]
    problems = []
    for i, (p, (out, err)) in enumerate(zip(running, outputs)):
        if p.returncode != 0:
            problems.append(f"builder {i} exited {p.returncode}: {err[-300:]}")
        if "locked" in out + err:
            problems.append(f"builder {i} saw a locked database")
    registry = Registry(url)
    built: dict[str, int] = {}
    for r in registry.runs(limit=1000):
        if r.status == "built":
            built[r.key] = built.get(r.key, 0) + 1
    records = registry.list()
    artifacts = [r.key for r in records]
    store = Store(root / "artifacts")
    for record in records:  # every row names whole objects (the SQLite audit below reads the file itself)
        problems += [f"artifact {record.key[:12]} names missing object {f.digest}" for f in record.files
                     if not store.has(f.digest)]
    registry.close()
    if len(artifacts) != len(SIZES):
        problems.append(f"{len(artifacts)} artifacts registered, expected {len(SIZES)}")
    duplicates = {k[:12]: n for k, n in built.items() if n != 1}
    if duplicates:
        problems.append(f"keys built more than once: {duplicates}")
    cached_by_other = sum(out.count("built by another process meanwhile") for out, _ in outputs)
    result = audit(root)
    problems += result["problems"]
    verify = run_cli(root, "--registry", url, "verify")
    if verify.returncode != 0:
        problems.append(f"verify: {verify.stdout}")
    return {"procs": procs, "entries": len(SIZES), "requested_builds": 3 * procs, "artifacts": len(artifacts),
            "compiled": sum(built.values()), "waited_then_cached": cached_by_other, "rows_checked": result["rows"],
            "failures": len(problems), "problems": problems}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--registry", default=None, help="SQLAlchemy URL (default: SQLite in the store)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="concurrent-") as tmp:
        print(json.dumps(run(args.procs, Path(tmp), args.registry), indent=2))


if __name__ == "__main__":
    main()
