"""Which artifacts ``buildsys gc`` may remove: past a retention age or out of the current matrix,
and never one that an alias names (deployments load by alias)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Iterable

from buildsys.errors import UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not match:
        raise UsageError(f"an age is a number and a unit (s, m, h, d, w), e.g. 30d; got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def select_expired(records: Iterable, *, older_than_s: float | None = None, matrix_keys: set[str] | None = None,
                   now: datetime | None = None) -> list[tuple[object, str]]:
    """(record, why) for each unaliased artifact older than ``older_than_s`` or not in ``matrix_keys``."""
    now = now or datetime.now(timezone.utc).replace(tzinfo=None)
    expired = []
    for record in records:
        if record.aliases:
            continue
        why = []
        if older_than_s is not None and (now - record.created_at).total_seconds() > older_than_s:
            why.append(f"built {record.created_at:%Y-%m-%d %H:%M}, past the retention")
        if matrix_keys is not None and record.key not in matrix_keys:
            why.append("not in the current matrix")
        if why:
            expired.append((record, "; ".join(why)))
    return expired


def collect_garbage(ws, *, dry_run: bool = False, grace_s: float = 3600, older_than: str | None = None,
                    not_in_matrix: bool = False) -> list[str]:
    """``buildsys gc``: what crashed builds left (staging dirs, unfinished runs), unreferenced objects
    past ``grace_s``, and with ``older_than`` / ``not_in_matrix`` the artifacts past retention
    (never an aliased one) and old build logs. Returns what it did (or would do), a line each."""
    from buildsys.artifacts.store import pid_alive

    verb = "would remove" if dry_run else "removed"
    lines, expired_keys = [], set()
    if older_than is not None or not_in_matrix:
        age_s = parse_age(older_than) if older_than is not None else None
        matrix = set(ws.matrix_specs()) if not_in_matrix else None
        for record, why in select_expired(ws.registry.list(), older_than_s=age_s, matrix_keys=matrix):
            lines.append(f"{verb} artifact {record.key[:12]} ({record.model} {record.input_size}): {why}")
            expired_keys.add(record.key)
            if not dry_run:
                ws.registry.delete(record.key)
        if age_s is not None:
            from buildsys.pipeline.runlog import remove_old_logs

            logs = remove_old_logs(ws.store.root, age_s, dry_run=dry_run)
            lines.append(f"{verb} {len(logs)} build logs older than {older_than}")
    temps = ws.store.clean_tmp(dry_run=dry_run)
    crashed = ws.registry.mark_crashed_runs(pid_alive, dry_run=dry_run)
    # what the registry still names once the expired artifacts are gone (a dry run deleted none of
    # them, so it leaves their files out itself): manifests are files of their artifact
    referenced = {f.digest for key, f in ws.registry.file_digests() if key not in expired_keys}
    objects = ws.store.remove_unreferenced(referenced, grace_s=grace_s, dry_run=dry_run)
    lines += [f"{verb} staging {path}" for path in temps]
    lines += [f"{verb} object {digest}" for digest in objects]
    lines.append(f"{verb} {len(temps)} staging entries and {len(objects)} unreferenced objects; "
                 f"{crashed} unfinished runs {'would be ' if dry_run else ''}marked crashed")
    return lines
