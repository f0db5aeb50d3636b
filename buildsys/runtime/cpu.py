"""Whether this host can run an artifact: its architecture and the CPU features it needs (runtime side).

An artifact built for aarch64 cannot run on x86_64 at all (and dlopen says only "No such file or
directory"); code compiled with ``-mcpu=znver4`` may use AVX-512, and with ``-mattr=+sve`` SVE:
on a CPU without them it dies with SIGILL at the first such instruction. The builder records
the architecture (from the library's ELF header) and the features the target enables as Linux
``/proc/cpuinfo`` names (``flags`` on x86, ``Features`` on ARM; ``buildsys/platforms.py``); the
loader compares them with ``HostFacts`` before anything is loaded. The facts are a value, so a
test gives the loader an ARM machine's on any host.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from buildsys import platforms

CPUINFO = Path("/proc/cpuinfo")
_FEATURE_FIELDS = ("flags", "Features", "isa")  # x86, ARM, RISC-V


@dataclass(frozen=True)
class HostFacts:
    """The machine an artifact would run on: ``uname -m`` and the /proc/cpuinfo feature names
    (None where there is no /proc/cpuinfo: then no feature is claimed missing)."""

    machine: str
    flags: frozenset[str] | None

    @property
    def arch(self) -> str:
        return platforms.host_arch(self.machine)

    @classmethod
    def from_cpuinfo(cls, text: str | None, machine: str) -> HostFacts:
        row = platforms.for_arch(platforms.host_arch(machine))
        fields = (row.cpuinfo_field,) if row is not None else _FEATURE_FIELDS
        return cls(machine, parse_flags(text, fields) if text is not None else None)


def parse_flags(text: str, fields: tuple[str, ...] = _FEATURE_FIELDS) -> frozenset[str] | None:
    """The features of the first processor /proc/cpuinfo lists in one of ``fields`` (the one the
    machine's architecture uses: under qemu-user, /proc/cpuinfo is the x86 host's, whose ``flags``
    say nothing of an ARM CPU, so none is then claimed missing)."""
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() in fields:
            return frozenset(value.split())
    return None


def host_facts(cpuinfo: Path = CPUINFO, machine: str | None = None) -> HostFacts:
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = None
    return HostFacts.from_cpuinfo(text, machine or platform.machine())


def host_flags(cpuinfo: Path = CPUINFO) -> frozenset[str] | None:
    """This host's CPU features, or None where /proc/cpuinfo is not available (or lists none)."""
    return host_facts(cpuinfo).flags


def missing_features(required: Iterable[str], flags: Iterable[str] | None) -> list[str]:
    if flags is None:
        return []
    return sorted(set(required) - set(flags))
