"""CPU features an artifact needs, and whether this host has them.

Code compiled with ``-mcpu=znver4`` may use AVX-512; loading it on a CPU
without AVX-512 dies with SIGILL at the first such instruction. The builder
records the instruction-set features the target enables (LLVM's names mapped
to Linux ``/proc/cpuinfo`` flags); the loader refuses a host that lacks any.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

# LLVM feature name -> /proc/cpuinfo flag, for the SIMD families generated code uses.
LLVM_TO_CPUINFO = {
    "sse4.1": "sse4_1", "sse4.2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
    "bmi": "bmi1", "bmi2": "bmi2", "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512cd": "avx512cd",
    "avx512dq": "avx512dq", "avx512vl": "avx512vl", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16", "avx512vbmi": "avx512vbmi", "avx512vbmi2": "avx512_vbmi2",
    "avx512bitalg": "avx512_bitalg", "avx512vpopcntdq": "avx512_vpopcntdq", "avx512ifma": "avx512ifma",
    "avxvnni": "avx_vnni", "amx-tile": "amx_tile", "amx-int8": "amx_int8", "amx-bf16": "amx_bf16",
}


def required_features(target: Mapping) -> list[str]:
    """cpuinfo flags the code compiled for ``target`` (normalized dict) may use. Build side (needs TVM)."""
    if "mcpu" not in target and "mattr" not in target:
        return []  # generic x86-64: baseline instructions only
    from tvm.target import codegen

    from .targets import to_tvm

    enabled = {str(f) for f in codegen.llvm_get_cpu_features(to_tvm(target))}
    return sorted(LLVM_TO_CPUINFO[f] for f in enabled if f in LLVM_TO_CPUINFO)


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
