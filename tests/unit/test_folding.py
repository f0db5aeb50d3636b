"""Batch norm folded into the convolution before it at build time (buildsys/compiler/folding.py)."""

import numpy as np
import pytest

from tests.fixtures.capabilities import need_module, runnable_here

tvm = need_module("tvm", "make venv (the build extra)")
torch = need_module("torch", "make venv (the build extra)")

from tvm import relax  # noqa: E402


def _conv_bn_module(channels, filters, size, kernel, stride, padding, groups, mean, var, reuse=False):
    """main(x; w, gamma, beta) -> relu(batch_norm(conv2d(x, w))), statistics as constants (as
    torch.export imports a BatchNorm2d's buffers); with ``reuse`` the convolution's output is also
    added to the result (then it must not be folded)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, channels, size, size + 2], "float32"))
    w = relax.Var("w", relax.TensorType([filters, channels // groups, kernel, kernel], "float32"))
    gamma = relax.Var("gamma", relax.TensorType([filters], "float32"))
    beta = relax.Var("beta", relax.TensorType([filters], "float32"))
    with bb.function("main", [x, w, gamma, beta], attrs={"num_input": 1}):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, strides=stride, padding=padding, groups=groups))
            norm = bb.emit(relax.op.nn.batch_norm(y, gamma, beta, relax.const(mean), relax.const(var), axis=1,
                                                  epsilon=1e-3, training=False))
            out = bb.emit(relax.op.nn.relu(relax.TupleGetItem(norm, 0)))
            if reuse:
                out = bb.emit(relax.op.add(out, y))
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("mcpu, channels, filters, size, kernel, stride, padding, groups", [
    (None, 5, 12, 9, 3, 1, 1, 1),  # SSE, 12 filters
    ("x86-64-v3", 7, 19, 19, 1, 1, 0, 1),  # 19 filters: padded blocks; width 19
    ("x86-64-v3", 24, 24, 7, 3, 2, 1, 24),  # depthwise, stride 2, width 7
    ("skylake-avx512", 20, 20, 1, 5, 1, 2, 20),  # depthwise 5x5 on a 1-pixel-high map
    ("skylake-avx512", 12, 18, 8, 3, 1, 1, 3),  # groups 3
])
@pytest.mark.parametrize("reuse", [False, True])
def test_batch_norm_is_folded_into_the_convolution_and_computes_the_same(mcpu, channels, filters, size, kernel,
                                                                         stride, padding, groups, reuse):
    from buildsys.compiler.compile import compile_for_target

    rng = np.random.default_rng(filters)
    mean = rng.standard_normal(filters, dtype=np.float32)
    var = rng.uniform(0.1, 2.0, filters).astype(np.float32)
    mod = _conv_bn_module(channels, filters, size, kernel, stride, padding, groups, mean, var, reuse)
    compiled = compile_for_target(mod, {"kind": "llvm", **({"mcpu": mcpu} if runnable_here(mcpu) else {})})
    assert compiled.transforms_params or reuse
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    w = rng.standard_normal((filters, channels // groups, kernel, kernel), dtype=np.float32)
    gamma, beta = (rng.standard_normal(filters, dtype=np.float32) for _ in range(2))
    params = [tvm.runtime.tensor(a) for a in (w, gamma, beta)]
    if compiled.transforms_params:
        params = list(vm["main_transform_params"](params))
    x = rng.standard_normal((1, channels, size, size + 2), dtype=np.float32)
    out = vm["main"](tvm.runtime.tensor(x), *params).numpy()
    conv = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride, padding=padding,
                                      groups=groups)
    expected = torch.relu(torch.nn.functional.batch_norm(conv, torch.from_numpy(mean), torch.from_numpy(var),
                                                         torch.from_numpy(gamma), torch.from_numpy(beta),
                                                         eps=1e-3))
    if reuse:
        expected = expected + conv
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_only_a_convolution_read_by_its_batch_norm_alone_is_folded():
    from buildsys.compiler.folding import fold_batch_norms

    mean, var = np.zeros(8, np.float32), np.ones(8, np.float32)
    assert fold_batch_norms(_conv_bn_module(4, 8, 6, 3, 1, 1, 1, mean, var))[1] == 1
    assert fold_batch_norms(_conv_bn_module(4, 8, 6, 3, 1, 1, 1, mean, var, reuse=True))[1] == 0
