"""This machine's NVIDIA GPUs, asked of the CUDA driver itself (``libcuda.so.1`` through ctypes: no
torch, no CUDA toolkit), and whether a CUDA artifact can run on one of them: checked before any
kernel is loaded, so a mismatch is a ``CompatibilityError`` naming both sides, not a launch failure.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Mapping

from buildsys.errors import CompatibilityError
from buildsys.platforms import cuda_arch_number

_COMPUTE_MAJOR, _COMPUTE_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}


@dataclass(frozen=True)
class GpuFacts:
    driver: int | None  # cuDriverGetVersion (13000 = CUDA 13.0); None: no driver library
    devices: tuple[str, ...] = ()  # "sm_80" per device index

    @property
    def cuda_version(self) -> str | None:
        return None if self.driver is None else f"{self.driver // 1000}.{self.driver % 1000 // 10}"


def gpu_facts() -> GpuFacts:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return GpuFacts(None)
    version = ctypes.c_int(0)
    if cuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return GpuFacts(None)
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return GpuFacts(version.value)
    devices = []
    for index in range(count.value):
        device, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        if (cuda.cuDeviceGet(ctypes.byref(device), index) != 0
                or cuda.cuDeviceGetAttribute(ctypes.byref(major), _COMPUTE_MAJOR, device) != 0
                or cuda.cuDeviceGetAttribute(ctypes.byref(minor), _COMPUTE_MINOR, device) != 0):
            continue
        devices.append(f"sm_{major.value}{minor.value}")
    return GpuFacts(version.value, tuple(devices))


def runs_on(cuda: Mapping[str, Any], device: str) -> bool:
    """Whether the artifact's device code runs on a GPU of architecture ``device``: a cubin for the
    same major version and an equal or lower minor, or PTX for an equal or lower architecture."""
    have = cuda_arch_number(device)
    cubins = [cuda_arch_number(a) for a in cuda.get("archs", [])]
    if any(c // 10 == have // 10 and c <= have for c in cubins):
        return True
    return bool(cuda.get("ptx")) and any(c <= have for c in cubins)


def check_gpu(cuda: Mapping[str, Any], key: str, facts: GpuFacts | None = None, device: int = 0) -> None:
    """Refuse a CUDA artifact this machine cannot run (no driver, no GPU, an older GPU or driver),
    naming both sides; then, as the thin runtime does not launch CUDA kernels yet, say so."""
    facts = gpu_facts() if facts is None else facts
    archs = ", ".join(cuda.get("archs", [])) + (" (+PTX)" if cuda.get("ptx") else "")
    needs = (f"CUDA code for {archs}, which needs an NVIDIA GPU and a CUDA {cuda.get('cuda_version')} driver "
             f"(>= {cuda.get('min_driver')})")
    where = f"artifact {key[:12]} is {needs}"
    if facts.driver is None:
        raise CompatibilityError(f"{where}; this machine has no CUDA driver (libcuda.so.1). Load it on a GPU "
                                 "machine, or build the entry for this CPU (target \"llvm -mcpu=native\")")
    if not facts.devices:
        raise CompatibilityError(f"{where}; this machine's CUDA driver sees no GPU")
    if device >= len(facts.devices):
        raise CompatibilityError(f"{where}; GPU {device} was asked for, this machine has {len(facts.devices)}")
    if not runs_on(cuda, facts.devices[device]):
        raise CompatibilityError(f"{where}; GPU {device} is {facts.devices[device]}, which none of that code runs on: "
                                 f"add -arch={facts.devices[device]} (or -ptx=1) to the entry's target and build again")
    needed = cuda.get("cuda_version")
    if needed and facts.cuda_version and tuple(map(int, facts.cuda_version.split("."))) < tuple(
            map(int, str(needed).split("."))):
        raise CompatibilityError(f"{where}; this machine's driver supports CUDA {facts.cuda_version}: upgrade it")
    raise CompatibilityError(f"{where}; GPU {device} ({facts.devices[device]}) can run it, but buildsys' thin "
                             "runtime does not launch CUDA kernels yet: load lib.so with TVM's runtime "
                             "(tvm.runtime.load_module, relax.VirtualMachine on tvm.cuda()) meanwhile")
