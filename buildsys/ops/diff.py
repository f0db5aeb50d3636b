"""``buildsys diff A B``: what differs between two artifacts, section by section."""

from __future__ import annotations

from typing import Any

SECTIONS = ("spec", "toolchain", "tuning", "pass_trace", "files", "parity", "latency", "bench")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key in sorted(value):
            flat.update(_flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _pass_trace(manifest: dict) -> dict[str, Any]:
    return {entry["name"]: entry["runs"] for entry in manifest.get("pass_trace", [])}


def artifact_view(manifest: dict, bench: dict | None) -> dict[str, Any]:
    """The comparable sections of one artifact."""
    return {
        "spec": manifest["spec"],
        "toolchain": manifest["toolchain"],
        "tuning": manifest.get("tuning") or {},
        "pass_trace": _pass_trace(manifest),
        "files": {name: info["digest"] for name, info in manifest.get("files", {}).items()},
        "parity": {k: v for k, v in manifest["parity"].items() if k != "input"},
        "latency": {k: v for k, v in manifest.get("latency", {}).items() if k != "note"},
        "bench": {name: figures.get("ms") for name, figures in (bench or {}).get("runners", {}).items()},
    }


def diff_artifacts(a: dict, b: dict) -> dict[str, list[tuple[str, Any, Any]]]:
    """Per section, (field, value in A, value in B) for every field that differs."""
    out = {}
    for section in SECTIONS:
        left, right = _flatten(a[section]), _flatten(b[section])
        rows = [(field, left.get(field), right.get(field)) for field in sorted(set(left) | set(right))
                if left.get(field) != right.get(field)]
        if rows:
            out[section] = rows
    return out


def diff_refs(ws, first: str, second: str):
    """((record A, record B), differences by section) for two keys, prefixes or aliases."""
    from buildsys.artifacts import manifest as manifest_format

    records, views = [], []
    for ref in (first, second):
        record = ws.registry.resolve(ref)
        bench = ws.registry.benchmarks(record.key, limit=1)
        records.append(record)
        views.append(artifact_view(manifest_format.read_stored(ws.store, record), bench[0].results if bench else None))
    return tuple(records), diff_artifacts(*views)
