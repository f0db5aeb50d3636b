"""What each CPU architecture needs, in one table: build for it, link for it, run it, load it.

A target's ``mtriple`` names an architecture; the row for that architecture says which
compiler driver links TVM's objects into a shared library (and which Debian package has it),
which Debian architecture a sysroot for emulated verification is made of, which qemu-user
emulator runs it (and its package), which wheel platform tag TVM's runtime is installed from,
the ELF ``e_machine`` a library for it carries, where Linux lists the CPU's features in
``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on ARM) with LLVM's names for the SIMD
families generated code uses, and the width of its baseline vectors (default schedules).

Another architecture is one more row. The builder (``config/targets.py``, ``compiler/cross.py``,
``pipeline/sysroots.py``) and the thin loader (``runtime/cpu.py``) both read this table, so it
imports nothing but the standard library and ``errors``.
"""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass, field
from typing import Mapping

from buildsys.errors import CompatibilityError


@dataclass(frozen=True)
class Platform:
    arch: str  # LLVM's architecture name, as a triple's first field normalizes to
    triple: str  # the GNU triple of its cross toolchain (the compiler's prefix)
    machines: tuple[str, ...]  # what `uname -m` / platform.machine() says on such a machine
    elf_machine: int  # ELF e_machine of its shared libraries
    elf_class: int  # 1: 32-bit, 2: 64-bit
    debian_arch: str  # `dpkg --print-architecture` there; a sysroot's architecture
    compiler_package: str  # Debian package with the cross compiler (the host's own g++ for the host)
    emulator: str | None  # qemu-user binary that runs its code on another host
    emulator_package: str | None
    wheel_platform: str | None  # pip --platform tag of TVM's wheels for it (None: PyPI has none)
    cpuinfo_field: str  # the /proc/cpuinfo line that lists the CPU's features
    vector_bits: int  # baseline SIMD width (float32 lanes = bits / 32) the default schedules tile for
    # LLVM feature name -> /proc/cpuinfo name, for the SIMD families generated code uses
    features: Mapping[str, str] = field(default_factory=dict)

    @property
    def compiler(self) -> str:
        """The C++ driver that links a library for this architecture on a host of another one."""
        return f"{self.triple}-g++"

    @property
    def vector_lanes(self) -> int:
        return self.vector_bits // 32


_X86_FEATURES = {
    "sse4.1": "sse4_1", "sse4.2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
    "bmi": "bmi1", "bmi2": "bmi2", "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512cd": "avx512cd",
    "avx512dq": "avx512dq", "avx512vl": "avx512vl", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16", "avx512vbmi": "avx512vbmi", "avx512vbmi2": "avx512_vbmi2",
    "avx512bitalg": "avx512_bitalg", "avx512vpopcntdq": "avx512_vpopcntdq", "avx512ifma": "avx512ifma",
    "avxvnni": "avx_vnni", "amx-tile": "amx_tile", "amx-int8": "amx_int8", "amx-bf16": "amx_bf16",
}
# Linux arm64 hwcaps. Crypto, CRC and atomics are left out on purpose: kernels do not use them, and a
# Raspberry Pi 4 (cortex-a72 without the crypto extension) must load a -mcpu=cortex-a72 artifact.
_AARCH64_FEATURES = {
    "fp-armv8": "fp", "neon": "asimd", "fullfp16": "asimdhp", "dotprod": "asimddp", "fp16fml": "asimdfhm",
    "rdm": "asimdrdm", "i8mm": "i8mm", "bf16": "bf16", "sve": "sve", "sve2": "sve2", "sme": "sme",
}
_ARM_FEATURES = {"neon": "neon", "vfp4": "vfpv4", "fullfp16": "asimdhp", "dotprod": "asimddp"}

PLATFORMS: dict[str, Platform] = {p.arch: p for p in (
    Platform("x86_64", "x86_64-linux-gnu", ("x86_64", "amd64"), 62, 2, "amd64", "g++-x86-64-linux-gnu",
             "qemu-x86_64-static", "qemu-user-static", "manylinux_2_28_x86_64", "flags", 128, _X86_FEATURES),
    Platform("aarch64", "aarch64-linux-gnu", ("aarch64", "arm64"), 183, 2, "arm64", "g++-aarch64-linux-gnu",
             "qemu-aarch64-static", "qemu-user-static", "manylinux_2_28_aarch64", "Features", 128,
             _AARCH64_FEATURES),
    Platform("arm", "arm-linux-gnueabihf", ("armv7l", "armv8l", "armhf"), 40, 1, "armhf", "g++-arm-linux-gnueabihf",
             "qemu-arm-static", "qemu-user-static", None, "Features", 128, _ARM_FEATURES),
    Platform("riscv64", "riscv64-linux-gnu", ("riscv64",), 243, 2, "riscv64", "g++-riscv64-linux-gnu",
             "qemu-riscv64-static", "qemu-user-static", None, "isa", 128, {}),
)}

# Spellings of an architecture in triples and `uname -m` that LLVM names otherwise.
ARCH_ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "i686": "i386", "i586": "i386", "i486": "i386",
                "arm64": "aarch64", "armv7": "arm", "armv7a": "arm", "armv7l": "arm", "armv8l": "arm",
                "armhf": "arm", "armv8": "aarch64", "ppc64le": "powerpc64le", "ppc64": "powerpc64"}


def triple_arch(triple: str) -> str:
    """``aarch64-linux-gnu`` -> ``aarch64``; ``arm64-apple-darwin`` -> ``aarch64``."""
    arch = triple.split("-", 1)[0].lower()
    return ARCH_ALIASES.get(arch, arch)


def for_arch(arch: str) -> Platform | None:
    return PLATFORMS.get(ARCH_ALIASES.get(arch, arch))


def for_triple(triple: str) -> Platform | None:
    return for_arch(triple_arch(triple))


def for_elf_machine(machine: int) -> Platform | None:
    return next((p for p in PLATFORMS.values() if p.elf_machine == machine), None)


def host_arch(machine: str | None = None) -> str:
    """This machine's architecture by LLVM's name (``platform.machine()`` unless given)."""
    name = (machine or _platform.machine()).lower()
    return ARCH_ALIASES.get(name, name)


def host() -> Platform | None:
    return for_arch(host_arch())


def cuda_arch_number(arch: str) -> int:
    """A CUDA architecture's compute capability as a number: ``sm_90a`` -> 90, ``compute_90`` -> 90
    (0 for a name without one). Builder, target check and loader compare GPUs by it."""
    return int("".join(c for c in arch.split("_", 1)[-1] if c.isdigit()) or 0)


ELF_MAGIC = b"\x7fELF"


def elf_header(path) -> tuple[int, int]:
    """(e_machine, ELF class) of the file at ``path``; CompatibilityError when it is no ELF file.

    Read before anything loads it: dlopen of a library for another architecture fails with a
    misleading "No such file or directory" (the interpreter it names is not there)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(20)
    except OSError as exc:
        raise CompatibilityError(f"cannot read {path}: {exc.strerror}") from None
    if len(head) < 20 or head[:4] != ELF_MAGIC:
        raise CompatibilityError(f"{path} is not an ELF shared library")
    order = "little" if head[5] == 1 else "big"
    return int.from_bytes(head[18:20], order), head[4]


def describe_elf(machine: int, elf_class: int = 0) -> str:
    found = for_elf_machine(machine)
    return found.arch if found is not None else f"ELF machine {machine}" + (
        f" ({32 if elf_class == 1 else 64}-bit)" if elf_class else "")


def host_packages(arch: str) -> list[tuple[str, str]]:
    """(command, Debian package) pairs a host of another architecture needs to build for ``arch`` and
    verify under emulation (mmdebstrap makes the sysroot)."""
    row = PLATFORMS[ARCH_ALIASES.get(arch, arch)]
    pairs = [(row.compiler, row.compiler_package), ("mmdebstrap", "mmdebstrap")]
    return pairs + ([(row.emulator, row.emulator_package)] if row.emulator else [])


if __name__ == "__main__":  # `python -m buildsys.platforms aarch64`: what .ci/cross-deps installs
    import sys

    for name in sys.argv[1:]:
        if host_arch() != ARCH_ALIASES.get(name, name):
            for command, package in host_packages(name):
                print(command, package)
