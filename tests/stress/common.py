"""Shared by the stress scripts: a workspace of tiny models, CLI in subprocesses, store audit."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
models:
  tiny_cnn: {source: "tests.fixtures.models:tiny_cnn"}
matrix:
  model: [tiny_cnn]
  input_size: %s
"""


def write_config(root: Path, sizes: list[int]) -> Path:
    path = root / "builds.yaml"
    path.write_text(textwrap.dedent(CONFIG % sizes))
    return path


def cli_command(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "buildsys.cli", "-c", str(root / "builds.yaml"), "--store",
            str(root / "artifacts"), *args]


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1"}


def run_cli(root: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(root, *args), capture_output=True, text=True, env=cli_env(),
                          timeout=timeout, cwd=ROOT)


def audit(root: Path) -> dict:
    """Check the invariants a crash must never break; returns counts and problems."""
    store = root / "artifacts"
    db = store / "registry.db"
    problems, rows, files = [], 0, 0
    objects = 0
    for path in sorted((store / "sha256").glob("*/*")) if (store / "sha256").is_dir() else []:
        objects += 1
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != path.parent.name + path.name:
            problems.append(f"partial or corrupt object {path}")
    if db.exists():
        conn = sqlite3.connect(db)
        try:
            if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                problems.append("sqlite integrity_check failed")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "artifacts" in tables:
                for key, manifest in conn.execute("SELECT key, manifest_digest FROM artifacts"):
                    rows += 1
                    names = [r[0] for r in conn.execute(
                        "SELECT digest FROM artifact_files WHERE artifact_key = ?", (key,))]
                    if len(names) != 3:
                        problems.append(f"artifact {key[:12]} has {len(names)} file rows, not 3")
                    for digest in names + [manifest]:
                        files += 1
                        hexdigest = digest.split(":", 1)[1]
                        if not (store / "sha256" / hexdigest[:2] / hexdigest[2:]).is_file():
                            problems.append(f"artifact {key[:12]} names missing object {digest}")
        finally:
            conn.close()
    temps = len(list((store / "tmp").iterdir())) if (store / "tmp").is_dir() else 0
    return {"rows": rows, "files": files, "objects": objects, "temp_entries": temps, "problems": problems}
