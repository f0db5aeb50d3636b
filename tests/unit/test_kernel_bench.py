"""benchmarks/kernels.py: its kernels are built the product's way and checked against numpy (no
timing here: only that the figures it would print come from correct kernels)."""

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.fixtures.capabilities import need_module

need_module("tvm", "make venv (the build extra)")

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels.py"


@pytest.fixture(scope="module")
def kernels():
    spec = importlib.util.spec_from_file_location("kernel_bench", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("make", [
    lambda k: k.MatmulCase("tiny matmul", rows=7, k=33, n=91),
    lambda k: k.MatmulCase("tiny matmul, w as is", rows=5, k=20, n=24, transposed=False),
    lambda k: k.ConvCase("tiny conv", 2, 5, 12, 9, 3, stride=2, padding=1, dynamic=True),
    lambda k: k.ConvCase("tiny depthwise", 1, 6, 6, 8, 3, padding=1, groups=6),
    lambda k: k.ConvCase("tiny upsample", 3, 5, 8, 6, 2, stride=2, dynamic=True, transposed=True),
    lambda k: k.ConvCase("tiny upsample, static batch", 2, 4, 8, 5, 3, stride=3, transposed=True),
])
def test_the_benchmarks_kernels_match_numpy(kernels, make):
    case = make(kernels)
    x, w = kernels.inputs(case)
    built = kernels.build(case, {"kind": "llvm"}, x, w)
    assert built.scheduled, "the product's default schedule should take this kernel"
    kernels.check(case, built, x, w)


def test_a_wrong_kernel_fails_the_check(kernels):
    import tvm

    case = kernels.MatmulCase("tiny matmul", rows=3, k=8, n=16)
    x, w = kernels.inputs(case)
    wrong = kernels.numpy_kernel(case)(x, w)
    wrong[2, 15] += 0.5
    built = kernels.BuiltKernel(lambda: tvm.runtime.tensor(wrong), ["matmul"], False, 0.0)
    with pytest.raises(AssertionError):
        kernels.check(case, built, x, w)
    assert case.flops == 2 * 3 * 8 * 16
