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
