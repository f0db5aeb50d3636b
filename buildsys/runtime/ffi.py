"""TVM's runtime through ``tvm_ffi`` alone: no ``tvm`` Python package, no compiler.

Importing ``tvm`` costs 0.5-0.9 s even with ``TVM_USE_RUNTIME_LIB=1`` (it
registers every Python object class) and pulls in torch when torch is
installed. A VM needs none of that: ``libtvm_runtime.so`` (plus
``libtvm_runtime_extra.so`` for the sort/top-k kernels detectors call) loaded
into the process, ``tvm_ffi.load_module`` for the artifact, and DLPack to move
numpy arrays in and out. Where the process already imported ``tvm`` (a
builder verifying its output) its libraries are reused.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import sys
import threading
from pathlib import Path

import numpy as np

_lock = threading.Lock()
_ffi = None

# Registered by TVM from Python (tvm.relax.op), which a runtime-only process never imports.
# Same semantics, numpy inside.
_PYTHON_BUILTINS = ("relax.run.nonzero", "relax.run.shape_to_tensor")


# Optional imports of tvm_ffi that a runtime-only process does without: torch (2 s, 850 MB) and
# ml_dtypes (0.5-1 s: numpy registers its ufunc loops one by one, each a linear search), which only
# maps bfloat16/float8 numpy dtypes; an artifact's inputs, outputs and parameters have none.
_HIDDEN_FROM_TVM_FFI = ("torch", "ml_dtypes")


def _import_tvm_ffi():
    """``tvm_ffi`` without the optional imports it would make eagerly (``_HIDDEN_FROM_TVM_FFI``),
    unless the process already has them: hidden meanwhile."""
    if "tvm_ffi" in sys.modules:
        return sys.modules["tvm_ffi"]
    hidden = [name for name in _HIDDEN_FROM_TVM_FFI if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # makes `import name` raise ImportError
    try:
        import tvm_ffi
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]
    return tvm_ffi


def _tvm_lib_dir() -> Path:
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        from buildsys.errors import CompatibilityError
        raise CompatibilityError("apache-tvm is not installed; `pip install 'buildsys[runtime]'`")
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def runtime_ffi():
    """``tvm_ffi`` with TVM's runtime loaded and the VM builtins available."""
    global _ffi
    with _lock:
        if _ffi is not None:
            return _ffi
        ffi = _import_tvm_ffi()
        if "tvm" not in sys.modules:
            ctypes.CDLL(str(_tvm_lib_dir() / "libtvm_runtime.so"), ctypes.RTLD_GLOBAL)
        if ffi.get_global_func("tvm.contrib.sort.topk", allow_missing=True) is None:
            ctypes.CDLL(str(_tvm_lib_dir() / "libtvm_runtime_extra.so"), ctypes.RTLD_GLOBAL)
        _register_python_builtins(ffi)
        _ffi = ffi
        return ffi


def _register_python_builtins(ffi) -> None:
    def nonzero(x):
        return to_device(np.stack(np.atleast_1d(to_numpy(x)).nonzero(), axis=0).astype("int64"))

    def shape_to_tensor(shape):
        return to_device(np.array([int(v) for v in shape], dtype="int64"))

    ours = []
    for name, func in zip(_PYTHON_BUILTINS, (nonzero, shape_to_tensor)):
        if ffi.get_global_func(name, allow_missing=True) is None:
            ffi.register_global_func(name, func)
            ours.append(name)
    if ours:
        sys.meta_path.insert(0, _YieldToTvm(ffi, ours))


class _YieldToTvm:
    """Hands the builtins back to TVM when the same process later imports ``tvm.relax`` (a builder
    that loaded an artifact first, a test session): TVM registers them at import and refuses a name
    that is taken ("Global Function ... is already registered"). An import hook that removes ours
    just before, then itself; it finds no module."""

    def __init__(self, ffi, names):
        self.ffi, self.names = ffi, names

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "tvm.relax":
            for name in self.names:
                self.ffi.remove_global_func(name)
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self)
        return None


ALIGNMENT = 64  # bytes; TVM's kernels assume it (tuned, vectorized ones load with aligned moves)


def aligned(array: np.ndarray) -> np.ndarray:
    """``array`` itself when C-contiguous and 64-byte aligned, else an aligned copy.

    numpy only promises 16-byte alignment. Untuned kernels happen not to care; tuned
    ones use aligned vector loads and crash (SIGSEGV) on a misaligned weight or input.
    """
    array = np.ascontiguousarray(array)
    if array.ctypes.data % ALIGNMENT == 0:
        return array
    raw = np.empty(array.nbytes + ALIGNMENT, dtype=np.uint8)
    offset = (-raw.ctypes.data) % ALIGNMENT
    copy = raw[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)
    copy[...] = array
    return copy


def to_device(array: np.ndarray):
    """A numpy array as a TVM tensor: zero-copy when already aligned (the array stays alive
    through DLPack), else from a 64-byte aligned copy. An empty array becomes a freshly
    allocated empty tensor: numpy gives it strides such as (0, 0) for shape (1, 0), which
    compiled kernels reject ("expected to be compact array"); a data-dependent part that
    finds nothing (no detection) produces exactly such arrays."""
    ffi = runtime_ffi()
    array = np.asarray(array)
    if array.size == 0:
        alloc = ffi.get_global_func("runtime.TVMTensorAllocWithScope")
        return alloc(ffi.Shape(array.shape), ffi.dtype(str(array.dtype)), ffi.device("cpu", 0), None)
    return ffi.from_dlpack(aligned(array))


def to_numpy(tensor) -> np.ndarray:
    """A TVM CPU tensor as an owned numpy array (copied: the VM may reuse its buffers)."""
    return np.array(np.from_dlpack(tensor), copy=True)


def outputs_to_numpy(value) -> list[np.ndarray]:
    """A VM result (tensor, or nested arrays of tensors) as a flat list of numpy arrays."""
    if isinstance(value, runtime_ffi().Tensor):
        return [to_numpy(value)]
    result: list[np.ndarray] = []
    for item in value:
        result.extend(outputs_to_numpy(item))
    return result
