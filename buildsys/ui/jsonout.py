"""Machine-readable output of ``--json``: one JSON document on stdout per command.

Every document carries ``"schema": "buildsys.<command>/<version>"``; the JSON
Schema of each lives in ``buildsys/schemas/<command>.schema.json`` (tests
validate real output against them). Fields are only ever added within a
version; renaming or removing one bumps it. Progress and errors go to stderr.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Iterable

SCHEMA_VERSION = 1
COMMANDS = ("plan", "build", "ls", "show", "verify", "bench")


def schema_id(command: str) -> str:
    return f"buildsys.{command}/{SCHEMA_VERSION}"


def load_schema(command: str) -> dict:
    return json.loads((resources.files("buildsys") / "schemas" / f"{command}.schema.json").read_text())


def dumps(command: str, body: dict) -> str:
    return json.dumps({"schema": schema_id(command), **body}, indent=2, sort_keys=True, default=str)


def spec_fields(spec) -> dict[str, Any]:
    return {"label": spec.describe(), "model": spec.model.name, "task": spec.model.task,
            "input_size": spec.size_label, "batch": spec.batch.to_dict(), "target": spec.target_label,
            "opt_level": spec.opt_level,
            "disabled_passes": list(spec.disabled_passes),
            "tuning": None if spec.tuning is None else spec.tuning.to_dict()}


def plan_entry(entry) -> dict[str, Any]:
    return {"key": entry.key, **spec_fields(entry.spec), "action": entry.action, "reason": entry.reason,
            "tune_first": entry.tune_first}


def build_result(result) -> dict[str, Any]:
    out = {"key": result.entry.key, **spec_fields(result.entry.spec), "status": result.status,
           "seconds": round(result.seconds, 3), "error": result.error, "log_path": result.log_path}
    record = result.record
    out["parity_max_rel"] = getattr(record, "parity_max_rel", None)
    out["ratio_vs_eager"] = record.metrics.get("ratio_vs_eager") if record is not None else None
    return out


def artifact(record) -> dict[str, Any]:
    metrics = dict(record.metrics)
    return {"key": record.key, "model": record.model, "task": record.task, "input_size": record.input_size,
            "batch": record.spec.get("batch", 1), "target": record.target, "opt_level": record.opt_level,
            "disabled_passes": list(record.disabled_passes), "status": record.status,
            "parity_max_rel": record.parity_max_rel, "aliases": list(record.aliases),
            "created_at": record.created_at.isoformat(timespec="seconds"),
            "ratio_vs_eager_estimate": metrics.get("ratio_vs_eager"),
            "bench_ratio_vs_eager": metrics.get("bench_ratio_vs_eager"),
            "bench_ratio_vs_onnxruntime": metrics.get("bench_ratio_vs_onnxruntime"),
            "metrics": metrics}


def counts(items: Iterable[dict], field: str, names: Iterable[str]) -> dict[str, int]:
    items = list(items)
    return {name: sum(1 for item in items if item[field] == name) for name in names}
