"""Whether this host has the CPU features an artifact needs (runtime side).

Code compiled with ``-mcpu=znver4`` may use AVX-512; loading it on a CPU
without AVX-512 dies with SIGILL at the first such instruction. The builder
records the instruction-set features the target enables as Linux
``/proc/cpuinfo`` flags (``targets.required_features``); the loader refuses a
host that lacks any.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

def host_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """This host's CPU flags, or None where /proc/cpuinfo is not available."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def missing_features(required: Iterable[str], flags: set[str] | None) -> list[str]:
    if flags is None:
        return []
    return sorted(set(required) - flags)
