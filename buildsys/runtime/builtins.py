"""VM builtins that TVM's runtime library lacks, supplied without the compiler.

With ``TVM_USE_RUNTIME_LIB=1`` only ``libtvm_runtime.so`` is loaded, but a
detector's executable also calls

- ``tvm.contrib.sort.*`` (sort/argsort/top-k kernels), which live in
  ``libtvm_runtime_extra.so`` beside it: we load that library too;
- ``relax.run.nonzero`` and ``relax.run.shape_to_tensor``, which TVM
  registers from Python in ``tvm.relax.op`` (importing that pulls in the
  compiler): we register numpy versions with the same semantics.

Each is added only when missing, so a process that already imported the
compiler keeps TVM's own.
"""

from __future__ import annotations

import numpy as np

_installed = False


def install_runtime_builtins(runtime) -> None:
    global _installed
    if _installed:
        return
    import tvm.base
    import tvm.libinfo
    import tvm_ffi

    if "tvm_runtime_extra" not in tvm.base._LOADED_LIBS and tvm.base._RUNTIME_ONLY:
        tvm.base._LOADED_LIBS["tvm_runtime_extra"] = tvm.base.load_lib_ctypes(
            "tvm", "tvm_runtime_extra", "RTLD_GLOBAL", extra_lib_paths=tvm.libinfo.package_lib_paths())

    def register(name, func):
        if tvm_ffi.get_global_func(name, allow_missing=True) is None:
            tvm_ffi.register_global_func(name, func)

    def nonzero(x):
        return runtime.tensor(np.stack(np.atleast_1d(x.numpy()).nonzero(), axis=0).astype("int64"))

    def shape_to_tensor(shape):
        return runtime.tensor(np.array([int(v) for v in shape], dtype="int64"))

    register("relax.run.nonzero", nonzero)
    register("relax.run.shape_to_tensor", shape_to_tensor)
    _installed = True
