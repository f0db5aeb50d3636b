"""CUDA device code built on a machine without a GPU: real cubins for every requested architecture
(and PTX for newer ones, when asked), in one fatbin, so that nothing compiles at load time.

Three facts shape this module (docs: README "CUDA targets"):

- TVM's wheel keeps its CUDA runtime in ``libtvm_runtime_cuda.so``, which needs the driver
  (``libcuda.so.1``). Where the driver is missing (a CPU-only builder), TVM imports without it and
  its CUDA code generator keeps CUDA *source* only, no binary. So the build process, and only it,
  loads a stand-in ``libcuda.so.1`` first (``_STUB``: every driver call answers "no device"),
  then TVM's CUDA runtime. The stand-in is compiled into the user's cache, loaded by path into the
  build process, and never written into an artifact: a deployment loads the real driver.
- The device code is compiled by NVRTC (pip ``nvidia-cuda-nvrtc``, with ``nvidia-cuda-cccl``'s
  headers), once per architecture, and the images are packed by nvFatbin (pip
  ``nvidia-nvfatbin``): ``buildsys[cuda]`` installs them; no system CUDA toolkit is used.
- TVM asks the callback ``tvm_callback_cuda_compile`` for the device binary; ``DeviceCompiler``
  is that callback while a build runs, and records what it made (architectures, sizes).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from buildsys.errors import BuildError
from buildsys.platforms import cuda_arch_number

INSTALL = "pip install 'buildsys[cuda]' (NVRTC, CCCL headers and nvFatbin from PyPI)"
# The oldest Linux driver each CUDA release's code runs on (NVIDIA's CUDA Toolkit release notes,
# "CUDA Toolkit and Corresponding Driver Versions"): a cubin from NVRTC 13.0 needs a 13.0 driver.
MIN_DRIVER = {"13.0": "580.65.06", "13.1": "590.44.01"}
# Every driver entry point libtvm_runtime_cuda.so and libcudart.so look up; each says "no device"
# (CUDA_ERROR_NO_DEVICE = 100). A build never calls them: it compiles, it does not launch.
_STUB = """/* buildsys: a build-time stand-in for the CUDA driver (never shipped, never used at run time) */
typedef int CUresult;
static const char *no_device = "CUDA_ERROR_NO_DEVICE: no CUDA driver on this builder (buildsys build-time stub)";
CUresult cuGetErrorName(int e, const char **s) { if (s) *s = "CUDA_ERROR_NO_DEVICE"; return 0; }
CUresult cuGetErrorString(int e, const char **s) { if (s) *s = no_device; return 0; }
#define NONE(name) CUresult name(void) { return 100; }
NONE(cuInit) NONE(cuDriverGetVersion) NONE(cuDeviceGet) NONE(cuDeviceGetCount) NONE(cuDeviceGetName)
NONE(cuDeviceGetAttribute) NONE(cuFuncSetAttribute) NONE(cuLaunchKernel) NONE(cuLaunchKernelEx)
NONE(cuModuleGetFunction) NONE(cuModuleLoadData) NONE(cuModuleUnload) NONE(cuTensorMapEncodeTiled)
NONE(cuGetProcAddress) NONE(cuGetProcAddress_v2) NONE(cuCtxGetCurrent)
"""


def _cu13() -> Path:
    """The pip CUDA root (``nvidia/cu13``) that NVRTC's wheel installs."""
    try:
        import nvidia.cu13  # namespace package of the nvidia-* wheels
    except ImportError:
        raise BuildError(f"a CUDA target needs NVRTC: {INSTALL}", stage="compile") from None
    return Path(list(nvidia.cu13.__path__)[0])


def cccl_include() -> Path:
    include = _cu13() / "include" / "cccl"
    if not (include / "cuda" / "std" / "cstdint").is_file():
        raise BuildError(f"a CUDA target needs the CCCL headers NVRTC includes ({include} has none): {INSTALL}",
                         stage="compile")
    return include


def _stub_library() -> Path:
    """The stand-in driver, compiled once per source into buildsys' cache."""
    from buildsys.config.tvmfacts import cache_dir

    digest = hashlib.sha256(_STUB.encode()).hexdigest()[:16]
    path = cache_dir() / "cuda-stub" / digest / "libcuda.so.1"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    source = path.with_name("stub.c")
    source.write_text(_STUB)
    partial = path.with_name(f".libcuda.so.1.{os.getpid()}")
    done = subprocess.run(["cc", "-shared", "-fPIC", "-o", str(partial), "-Wl,-soname,libcuda.so.1", str(source)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"cannot compile the build-time CUDA driver stand-in with cc: {done.stderr.strip()[-500:]}; "
                         "install a C compiler (Debian: gcc)", stage="compile")
    os.replace(partial, path)
    return path


_stub_loaded = False  # this process loaded the stand-in (then "libcuda.so.1" names it, not a driver)


def driver_present() -> bool:
    """Whether this machine has a CUDA driver library (a GPU machine, or one with the driver)."""
    if _stub_loaded:
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def ensure_device_codegen() -> bool:
    """Make TVM's CUDA code generator produce binaries in this process (see the module's text).
    Returns whether the stand-in driver was loaded (False: a real driver is here)."""
    from tvm.base import _LOADED_LIBS

    if "tvm_runtime_cuda" in _LOADED_LIBS:
        return False
    global _stub_loaded
    stub = not driver_present()
    if stub:
        ctypes.CDLL(str(_stub_library()), mode=ctypes.RTLD_GLOBAL)
        _stub_loaded = True
    cudart = _cu13() / "lib" / "libcudart.so.13"
    if cudart.is_file():
        ctypes.CDLL(str(cudart), mode=ctypes.RTLD_GLOBAL)
    from tvm_ffi.libinfo import load_lib_ctypes

    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda",
                                                           extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")
    except (OSError, RuntimeError) as exc:
        raise BuildError(f"TVM's CUDA runtime does not load here ({exc}); a CUDA target needs the CUDA runtime "
                         f"library: {INSTALL}", stage="compile") from None
    return stub


def versions() -> dict[str, str | None]:
    """The device compiler's versions, for the key and the manifest: another NVRTC is other code."""
    from buildsys.format.versions import package_version

    return {name: package_version(name) for name in ("nvidia-cuda-nvrtc", "nvidia-cuda-cccl", "nvidia-nvfatbin")}


@dataclass
class DeviceCompiler:
    """TVM's ``tvm_callback_cuda_compile`` for one build: the CUDA source TVM generates, compiled for
    each of ``archs`` (cubins) and, with ``ptx``, to PTX for the newest of them, packed in a fatbin.
    ``images`` lists what went in (kind, arch, bytes)."""

    archs: tuple[str, ...]
    ptx: bool = False
    images: list[dict] = field(default_factory=list)
    fatbin_bytes: int = 0

    def compile(self, code: str, _target=None) -> bytes:
        from cuda.bindings import nvfatbin
        from tvm.support import nvcc

        options = [f"-I{cccl_include()}"]
        images = []
        os.environ["CUDA_PATH"] = str(_cu13())  # TVM's NVRTC route takes the headers from there: the wheels'

        for arch in self.archs:
            images.append(("cubin", arch, bytes(nvcc.compile_cuda(code, target_format="cubin", arch=arch,
                                                                  options=options, compiler="nvrtc"))))
        if self.ptx:
            newest = max(self.archs, key=cuda_arch_number)
            images.append(("ptx", newest.replace("sm_", "compute_"),
                           bytes(nvcc.compile_cuda(code, target_format="ptx", arch=newest, options=options,
                                                   compiler="nvrtc"))))
        handle = nvfatbin.create([], 0)
        try:
            for kind, arch, data in images:
                number = str(cuda_arch_number(arch))
                if kind == "cubin":
                    nvfatbin.add_cubin(handle, data, len(data), number, "tvm_kernels")
                else:
                    nvfatbin.add_ptx(handle, data, len(data), number, "tvm_kernels", "")
            size = nvfatbin.size(handle)
            out = bytearray(size)
            nvfatbin.get(handle, out)
        finally:
            nvfatbin.destroy(handle)
        self.images.extend({"kind": kind, "arch": arch, "bytes": len(data)} for kind, arch, data in images)
        self.fatbin_bytes += size
        return bytes(out)

    def describe(self) -> dict:
        """What the manifest says of the device code: which GPUs run it and what they need."""
        from cuda.bindings import nvrtc

        _, major, minor = nvrtc.nvrtcVersion()
        cuda_version = f"{major}.{minor}"
        return {"archs": list(self.archs), "ptx": self.ptx, "images": list(self.images),
                "fatbin_bytes": self.fatbin_bytes, "cuda_version": cuda_version,
                "min_driver": MIN_DRIVER.get(cuda_version), "compiler": versions()}

    @contextlib.contextmanager
    def installed(self):
        """This compiler as TVM's callback for the ``with`` block; TVM's own afterwards."""
        import tvm_ffi

        previous = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
        tvm_ffi.register_global_func("tvm_callback_cuda_compile", self.compile, override=True)
        try:
            yield self
        finally:
            if previous is not None:
                tvm_ffi.register_global_func("tvm_callback_cuda_compile", previous, override=True)


def explain_failure(exc: Exception) -> str:
    """``relax.build``'s failure for a CUDA target in words: a kernel that TVM's default GPU
    schedules leave unbound to GPU threads is named as such (the operator to exclude or report)."""
    import re

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, UnscheduledKernel) or "UnscheduledKernel" in text:
        name = exc.args[0] if isinstance(exc, UnscheduledKernel) else text.rsplit("UnscheduledKernel:", 1)[-1].strip()
        return (f"none of TVM's default GPU schedules covers kernel {name!r}; build this model for a CPU "
                "target, or exclude it from the CUDA entries")
    if "forget to bind" in text or "Memory verification failed" in text:
        names = re.findall(r"PrimFunc[^\n]*?(?:name|global_symbol)[\"':= ]+([A-Za-z_][A-Za-z0-9_]*)", text)
        names += re.findall(r"in function[: ]+([A-Za-z_][A-Za-z0-9_]*)", text)
        which = f"kernel {names[0]!r}" if names else "a kernel"
        return (f"TVM's default GPU schedules do not cover {which}: it is not bound to GPU threads, so CUDA "
                f"cannot run it; build this model for a CPU target, or exclude it from the CUDA entries "
                f"(TVM said: {text[-1200:]})")
    return f"relax.build for CUDA failed: {text[-2000:]}"


def gpu_pipeline(target, scheduled: dict):
    """TVM's CUDA pipeline (``relax.backend.cuda``) with its default GPU schedules (dlight) applied
    kernel by kernel: a rule that fails on a kernel (dlight's Reduction asserts on the detectors'
    data-dependent ones) is skipped for that kernel and the next rule tried, instead of failing the
    build; a kernel no rule covers fails the build, named. ``scheduled`` gets kernel -> rule."""
    import logging

    import tvm
    from tvm import relax, tirx
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight as dl

    rules = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]

    @tvm.transform.module_pass(opt_level=0, name="buildsys.GPUSchedules")
    def schedule(mod, _ctx):
        for gvar, func in list(mod.functions_items()):
            if not isinstance(func, tirx.PrimFunc) or func.attrs is not None and func.attrs.get("tirx.is_scheduled"):
                continue
            for rule in rules:
                try:
                    space = rule.apply(func, target, False)
                except Exception as exc:  # noqa: BLE001 - a rule's own bug; the next rule may cover the kernel
                    logging.getLogger(__name__).warning("dlight %s failed on %s (%s: %s); trying the next rule",
                                                        type(rule).__name__, gvar.name_hint, type(exc).__name__, exc)
                    continue
                if space is None:
                    continue
                space = space[0] if isinstance(space, list) else space
                mod[gvar] = space.mod["main"].with_attr("tirx.is_scheduled", True)
                scheduled[gvar.name_hint] = type(rule).__name__
                break
            else:
                raise UnscheduledKernel(gvar.name_hint)
        return mod

    legalize = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
                relax.transform.FuseOps(), relax.transform.FuseTIR(), schedule]

    @tvm.transform.module_pass(opt_level=0, name="buildsys.CUDAPipeline")
    def pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential(cuda.library_dispatch_passes(target) + legalize
                                            + cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target))(mod)

    return pipeline


class UnscheduledKernel(Exception):
    """A kernel none of TVM's default GPU schedules covers."""
