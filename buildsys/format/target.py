"""What an artifact's code is compiled for: the normalized target, one frozen type.

A ``Target`` is the normalized dict that ``config/targets.normalize_target`` makes (its JSON is
the ``target`` of the build key and of the manifest's spec), with the questions every layer asks
of it answered here once: which kind, which CPU target the host code has, which triple and
architecture, which CUDA architectures, and the classic string form for people. The build side
makes one from a config; the thin runtime reads one from a manifest (already checked as outside
input by ``artifacts/manifest.check_loadable``). Validation against this TVM (CPU names, triples)
is the build side's: it needs TVM's facts.

The normalized forms::

    {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"],
     "num-cores": 4, "mabi": ..., "opt-level": ...}         (every key but kind optional)
    {"kind": "cuda", "arch": ["sm_80", "sm_90"], "ptx": true, "host": {<an llvm target>}}
"""

from __future__ import annotations

from typing import Any, Mapping

from buildsys import platforms
from buildsys.errors import TargetError
from buildsys.format.values import FrozenDict, thaw


class Target(FrozenDict):
    __slots__ = ()

    def __init__(self, *args, **kwargs):
        data = dict(*args, **kwargs)
        if isinstance(data.get("host"), Mapping):  # a CUDA target's host code: a Target too
            data["host"] = Target(data["host"])
        super().__init__(data)

    @classmethod
    def read(cls, value: Any) -> "Target":
        """A target read back from outside (a registry row, a manifest): ValueError unless it has the
        normalized form's shape (a mapping with a kind; a CUDA target's arch names and host too)."""
        if not isinstance(value, Mapping) or not isinstance(value.get("kind"), str):
            raise ValueError(f"{value!r:.80} is not a target (a mapping with a kind)")
        if value["kind"] == "cuda":
            arch = value.get("arch")
            if not (isinstance(arch, list) and arch and all(isinstance(a, str) for a in arch)):
                raise ValueError(f"a CUDA target names its architectures, got arch {arch!r:.80}")
            cls.read(value.get("host"))
        return cls(value)

    def __reduce__(self):  # pickled for the build process: rebuilt through __init__
        return (Target, (thaw(self),))

    def __repr__(self) -> str:
        return f"Target({self.cli()!r})"

    @property
    def kind(self) -> str:
        return self["kind"]

    @property
    def is_cuda(self) -> bool:
        return self.get("kind") == "cuda"

    @property
    def host(self) -> "Target":
        """The CPU target of the code that runs on the host: a CUDA target's ``host``, or itself."""
        return self["host"] if self.is_cuda else self

    @property
    def triple(self) -> str | None:
        """The host code's ``mtriple`` as written (None: this build host's)."""
        return self.host.get("mtriple")

    @property
    def arch(self) -> str | None:
        """The host code's architecture from its triple (None: the build host's)."""
        return platforms.triple_arch(self.triple) if self.triple else None

    @property
    def mcpu(self) -> str | None:
        return self.host.get("mcpu")

    @property
    def mattr(self) -> tuple[str, ...]:
        return tuple(self.host.get("mattr", ()))

    @property
    def cuda_archs(self) -> tuple[str, ...]:
        """The GPU architectures a CUDA target has device code for, oldest first (else empty)."""
        return tuple(self["arch"]) if self.is_cuda else ()

    @property
    def ptx(self) -> bool:
        """Whether a CUDA target also carries PTX for GPUs newer than all of ``cuda_archs``."""
        return bool(self.get("ptx", False))

    def is_cross(self, host_arch: str | None = None) -> bool:
        """Whether code for this target cannot run on a machine of ``host_arch`` (default: this one);
        for a CUDA target, its host code's."""
        return self.arch is not None and self.arch != (host_arch or platforms.host_arch())

    def platform(self) -> platforms.Platform:
        """The row of ``buildsys/platforms.py`` for the host code's architecture (this host's when the
        target names no triple)."""
        arch = self.arch or platforms.host_arch()
        found = platforms.for_arch(arch)
        if found is None:
            raise TargetError(f"buildsys has no platform row for architecture {arch!r}",
                              hint=f"known: {', '.join(platforms.PLATFORMS)}; add a row to buildsys/platforms.py")
        return found

    @property
    def gnu_triple(self) -> str:
        """The triple the code is for, as the target names it (this host's GNU triple when it names none)."""
        return self.triple or self.platform().triple

    def cli(self) -> str:
        """The classic string form (``llvm -mcpu=cortex-a72 -mtriple=aarch64-linux-gnu``), for people."""
        return format_cli(self)


def format_cli(target: Mapping[str, Any]) -> str:
    parts = [str(target["kind"])]
    for name in sorted(k for k in target if k != "kind"):
        value = target[name]
        if isinstance(value, (list, tuple)):
            value = ",".join(value)
        elif isinstance(value, Mapping):  # a CUDA target's host
            value = format_cli(value)
            value = value if " " not in value else repr(value)
        elif isinstance(value, bool):
            value = int(value)
        parts.append(f"-{name}={value}")
    return " ".join(parts)
