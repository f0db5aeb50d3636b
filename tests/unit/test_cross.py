"""Targets of another architecture: the platform table, the linker it picks, ELF headers, and the
loader's refusals (foreign architecture, missing ARM features), with the host's facts injected."""

from __future__ import annotations

import re
from unittest import mock

import pytest

from buildsys import platforms
from buildsys.compiler import cross
from buildsys.config.targets import normalize_target, required_features
from buildsys.format.target import Target
from buildsys.errors import BuildError, CompatibilityError, TargetError
from buildsys.pipeline import emulation
from buildsys.runtime import loader
from buildsys.runtime.cpu import HostFacts, parse_flags
from buildsys.format.versions import runtime_versions

A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}
# A Raspberry Pi 4 (cortex-a72 without crypto) and a Graviton 3 (neoverse-v1: SVE, dot product).
PI4 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
GRAVITON3 = ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
             "asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm "
             "ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng\n")


def elf(machine: int, elf_class: int = 2) -> bytes:
    return b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9) + (3).to_bytes(2, "little") + \
        machine.to_bytes(2, "little") + bytes(44)


@pytest.mark.parametrize("triple, compiler, package", [
    ("aarch64-linux-gnu", "aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
    ("aarch64-unknown-linux-gnu", "aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
    ("armv7-linux-gnueabihf", "arm-linux-gnueabihf-g++", "g++-arm-linux-gnueabihf"),
    ("riscv64-linux-gnu", "riscv64-linux-gnu-g++", "g++-riscv64-linux-gnu"),
])
def test_the_linker_follows_the_triple(triple, compiler, package):
    target = Target({"kind": "llvm", "mtriple": triple})
    assert target.is_cross()
    assert cross.linker_for(target, which=lambda name: f"/usr/bin/{name}") == f"/usr/bin/{compiler}"
    with pytest.raises(BuildError, match=re.escape(f"needs the cross compiler {compiler}, which is not on PATH; "
                                                   f"install the Debian package {package}")):
        cross.linker_for(target, which=lambda name: None)


def test_the_host_links_with_tvms_default():
    for raw in ({"kind": "llvm"}, {"kind": "llvm", "mcpu": "znver3"},
                {"kind": "llvm", "mtriple": f"{platforms.host_arch()}-linux-gnu"}):
        target = Target(raw)
        assert not target.is_cross()
        assert cross.linker_for(target, which=lambda name: None) is None


def test_one_row_per_architecture():
    for arch, row in platforms.PLATFORMS.items():
        assert row.arch == arch and platforms.for_triple(row.triple) is row
        assert platforms.for_elf_machine(row.elf_machine) is row
        assert row.compiler == f"{row.triple}-g++" and row.compiler_package.startswith("g++-")
        assert row.vector_lanes >= 4
    assert platforms.for_arch("arm64") is platforms.PLATFORMS["aarch64"]
    assert platforms.host_arch("amd64") == "x86_64" and platforms.host_arch("armv7l") == "arm"


def test_cross_targets_normalize_and_unknown_rows_are_refused():
    target = normalize_target("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon,+dotprod")
    assert target == {**A72, "mattr": ["+dotprod", "+neon"]} and target.platform().arch == "aarch64"
    with pytest.raises(TargetError, match="-mcpu=native means this host's CPU"):
        normalize_target("llvm -mtriple=aarch64-linux-gnu -mcpu=native")
    with pytest.raises(TargetError, match="cannot link or load code for architecture 'nvptx64'"):
        normalize_target("llvm -mtriple=nvptx64-nvidia-cuda")


def test_aarch64_features_are_cpuinfo_names():
    a72 = required_features(A72)
    assert set(a72) == {"fp", "asimd"}  # no crypto: a Raspberry Pi 4 lacks it and must load cortex-a72 code
    assert {"asimddp"} <= set(required_features({**A72, "mattr": ["+dotprod", "+neon"]}))
    assert "sve" in required_features({**A72, "mattr": ["+sve"]})
    assert {"sve", "asimddp", "i8mm", "bf16"} <= set(required_features({**A72, "mcpu": "neoverse-v1"}))


def test_arm_cpuinfo_features_are_read():
    assert parse_flags(PI4) == {"fp", "asimd", "evtstrm", "crc32", "cpuid"}
    x86 = "processor : 0\nflags\t\t: fpu sse2 avx2\n"
    assert "avx2" in parse_flags(x86)
    assert HostFacts.from_cpuinfo(PI4, "aarch64").flags == parse_flags(PI4)
    # under qemu-user an aarch64 process reads the x86 host's /proc/cpuinfo: no ARM feature is claimed missing
    assert HostFacts.from_cpuinfo(x86, "aarch64").flags is None


def test_elf_headers_name_the_architecture(tmp_path):
    path = tmp_path / "lib.so"
    for row in platforms.PLATFORMS.values():
        path.write_bytes(elf(row.elf_machine, row.elf_class))
        assert platforms.elf_header(path) == (row.elf_machine, row.elf_class)
        assert platforms.describe_elf(row.elf_machine) == row.arch
    path.write_bytes(b"MZ not an ELF file" * 4)
    with pytest.raises(CompatibilityError, match="not an ELF shared library"):
        platforms.elf_header(path)


def test_a_mislinked_library_fails_the_build(tmp_path):
    """A host g++ handed aarch64 objects can produce a host library: the header is checked."""
    host_library = elf(platforms.PLATFORMS["x86_64"].elf_machine)

    class Executable:
        def export_library(self, path, cc=None):
            open(path, "wb").write(host_library)

    with mock.patch.object(cross, "linker_for", return_value="/usr/bin/aarch64-linux-gnu-g++"):
        with pytest.raises(BuildError, match="is x86_64 code, not aarch64"):
            cross.export_library(Executable(), str(tmp_path / "lib.so"), A72)
        host_library = elf(platforms.PLATFORMS["aarch64"].elf_machine)
        cross.export_library(Executable(), str(tmp_path / "lib.so"), A72)


def manifest(**cpu) -> dict:
    return {"spec": {"target": A72}, "runtime": runtime_versions(),
            "cpu": {"arch": "aarch64", "triple": "aarch64-linux-gnu", "required_features": ["asimd", "fp"], **cpu}}


def test_a_foreign_artifact_is_refused_naming_both_sides():
    x86 = HostFacts("x86_64", frozenset({"sse2", "avx2"}))
    with pytest.raises(CompatibilityError, match=r"built for aarch64-linux-gnu \(cortex-a72\); this machine is x86_64"):
        loader.check_compatibility(manifest(), "ab" * 32, host=x86)
    old = {"spec": {"target": A72}, "runtime": runtime_versions(), "cpu": {"required_features": []}}
    with pytest.raises(CompatibilityError, match="aarch64-linux-gnu"):  # no cpu.arch: the triple says it
        loader.check_compatibility(old, "ab" * 32, host=x86)
    assert loader.foreign_build(manifest(), x86) == "aarch64-linux-gnu (cortex-a72)"
    loader.check_compatibility(manifest(), "ab" * 32, host=HostFacts.from_cpuinfo(PI4, "aarch64"))


def test_missing_arm_features_are_refused():
    sve = manifest(required_features=["asimd", "fp", "sve"])
    with pytest.raises(CompatibilityError, match="lacks: sve"):
        loader.check_compatibility(sve, "ab" * 32, host=HostFacts.from_cpuinfo(PI4, "aarch64"))
    loader.check_compatibility(sve, "ab" * 32, host=HostFacts.from_cpuinfo(GRAVITON3, "aarch64"))


def test_the_library_header_is_checked_before_dlopen(tmp_path):
    """A manifest that says nothing of the architecture (or lies) does not get a foreign library loaded."""
    path = tmp_path / "lib.so"
    path.write_bytes(elf(platforms.PLATFORMS["aarch64"].elf_machine))
    x86 = HostFacts("x86_64", None)
    with pytest.raises(CompatibilityError, match="its lib.so is aarch64 code; this machine is x86_64"):
        loader.check_library(path, {"spec": {"target": {"kind": "llvm"}}}, "ab" * 32, host=x86)
    loader.check_library(path, {}, "ab" * 32, host=HostFacts("aarch64", None))


def test_emulation_says_what_to_install(monkeypatch):
    row = platforms.PLATFORMS["aarch64"]
    monkeypatch.setattr(emulation.shutil, "which", lambda name: None)
    with pytest.raises(emulation.Unavailable, match="qemu-aarch64-static is not installed.*qemu-user-static"):
        emulation.emulator(row)
    with pytest.raises(emulation.Unavailable, match="no apache-tvm wheel for riscv64"):
        emulation.recipe(platforms.PLATFORMS["riscv64"])


def test_the_sysroot_is_keyed_by_what_is_in_it(monkeypatch):
    row = platforms.PLATFORMS["aarch64"]
    first = emulation.sysroot_path(row)
    assert first.name.startswith("arm64-") and first.parent.name == "sysroots"
    monkeypatch.setattr(emulation, "package_version", lambda name: "9.9.9")
    assert emulation.sysroot_path(row) != first  # another TVM, another sysroot
