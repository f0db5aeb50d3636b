"""The thin runtime registers two VM builtins TVM otherwise registers from Python (tvm.relax); a
process that loads an artifact first and imports the compiler afterwards (a builder, a service,
a test session) must still get TVM's own. Found when a test loaded an artifact in-process before
any build: the next in-process build failed with "relax.run.shape_to_tensor is already registered"."""

import subprocess
import sys
import textwrap


def test_importing_tvm_relax_after_the_thin_runtime_takes_the_builtins_back():
    code = textwrap.dedent("""
        import sys
        from buildsys.runtime.ffi import runtime_ffi
        ffi = runtime_ffi()
        assert "tvm" not in sys.modules
        thin = ffi.get_global_func("relax.run.shape_to_tensor")
        assert thin is not None
        import tvm.relax  # registers TVM's own builtins; refused if ours were still there
        import tvm
        ours = ffi.get_global_func("relax.run.shape_to_tensor")
        print(ours(tvm.runtime.ShapeTuple([2, 3])).numpy().tolist())
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[2, 3]"


def test_the_thin_runtime_imports_neither_torch_nor_ml_dtypes():
    """tvm_ffi imports both when it can: torch costs 2 s, ml_dtypes 0.5-1 s (numpy registers its
    ufunc loops one by one); an artifact's tensors need neither. A process that has them keeps them."""
    code = textwrap.dedent("""
        import sys
        from buildsys.runtime.ffi import runtime_ffi, to_device, to_numpy
        import numpy as np
        runtime_ffi()
        print(sorted(m for m in ("torch", "ml_dtypes", "tvm") if m in sys.modules))
        print(to_numpy(to_device(np.arange(3, dtype=np.float32))).tolist())
        import ml_dtypes  # still importable afterwards
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines() == ["[]", "[0.0, 1.0, 2.0]"]
