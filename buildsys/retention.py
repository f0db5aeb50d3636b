"""Which artifacts ``buildsys gc`` may remove: past a retention age or out of the current matrix,
and never one that an alias names (deployments load by alias)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Iterable

from .errors import UsageError

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
