"""The default-scheduled matmul and convolution kernels against numpy (and torch) on the hot shapes
of resnet18 224, mobilenet_v3_large 224 and Mask R-CNN at 300 px.

Each kernel is built the way the product builds a model (``compile.compile_for_target``: TVM's CPU
pipeline with buildsys' default schedules, weights as parameters, prepacked when the build says
so), run on random inputs, checked against numpy (a wrong fast kernel fails the run), then timed.
Timings are best-of-a-few on a shared machine: read the ratio column, taken in the same run.

    python benchmarks/kernels.py [--target "llvm -mcpu=native"] [--threads 2] [--only box]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class MatmulCase:
    """``x[rows, k] @ w.T`` with ``w[n, k]`` a weight (torch's Linear), rows known only at run time."""

    label: str
    rows: int
    k: int
    n: int
    transposed: bool = True  # weight stored [n, k] (Linear) rather than [k, n]

    @property
    def flops(self) -> float:
        return 2.0 * self.rows * self.k * self.n

    @property
    def shape(self) -> str:
        return f"{self.rows}x{self.k} @ {self.k}x{self.n}{'' if self.transposed else ' (w not transposed)'}"


@dataclass(frozen=True)
class ConvCase:
    """NCHW ``conv2d(x[batch, c, size, size], w[f, c/groups, kernel, kernel])``; with ``dynamic`` the
    batch is known only at run time (the mask head's detection count)."""

    label: str
    batch: int
    channels: int
    filters: int
    size: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    dynamic: bool = False
    transposed: bool = False  # conv2d_transpose (no padding), w[c, f, kernel, kernel]

    @property
    def out_size(self) -> int:
        if self.transposed:
            return (self.size - 1) * self.stride + self.kernel
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def flops(self) -> float:
        if self.transposed:  # the useful work: each input pixel times each kernel tap
            return 2.0 * self.batch * self.channels * self.size ** 2 * self.filters * self.kernel ** 2
        return 2.0 * self.batch * self.filters * self.out_size ** 2 * self.channels // self.groups * self.kernel ** 2

    @property
    def shape(self) -> str:
        group = f" g{self.groups}" if self.groups > 1 else ""
        kind = " transposed" if self.transposed else ""
        return (f"{self.batch}x{self.channels}x{self.size}x{self.size} -> {self.filters} "
                f"k{self.kernel} s{self.stride}{group}{kind}")


CASES = (
    ConvCase("resnet18 stem", 1, 3, 64, 224, 7, 2, 3),
    ConvCase("resnet18 3x3 @56", 1, 64, 64, 56, 3, 1, 1),
    ConvCase("resnet18 3x3 @28", 1, 128, 128, 28, 3, 1, 1),
    ConvCase("resnet18 3x3 @14", 1, 256, 256, 14, 3, 1, 1),
    ConvCase("resnet18 3x3 @7", 1, 512, 512, 7, 3, 1, 1),
    ConvCase("mobilenet_v3 1x1 @56", 1, 24, 72, 56, 1),
    ConvCase("mobilenet_v3 1x1 16 @112", 1, 16, 16, 112, 1),
    ConvCase("mobilenet_v3 1x1 16->64 @112", 1, 16, 64, 112, 1),
    ConvCase("mobilenet_v3 1x1 112->672 @14", 1, 112, 672, 14, 1),
    ConvCase("mobilenet_v3 dw3x3 @56", 1, 72, 72, 56, 3, 1, 1, groups=72),
    ConvCase("mobilenet_v3 dw3x3 s2 @112", 1, 64, 64, 112, 3, 2, 1, groups=64),
    ConvCase("mobilenet_v3 dw5x5 s2 @56", 1, 72, 72, 56, 5, 2, 2, groups=72),
    ConvCase("mobilenet_v3 dw5x5 @7", 1, 960, 960, 7, 5, 1, 2, groups=960),
    MatmulCase("maskrcnn box fc6", 1000, 12544, 1024),
    MatmulCase("maskrcnn box fc7", 1000, 1024, 1024),
    ConvCase("maskrcnn mask 3x3", 100, 256, 256, 14, 3, 1, 1, dynamic=True),
    ConvCase("maskrcnn mask upsample", 100, 256, 256, 14, 2, 2, dynamic=True, transposed=True),
    ConvCase("maskrcnn mask logits 1x1", 100, 256, 91, 28, 1, dynamic=True),
)


def relax_module(case):
    """``main(x, w)`` with one matmul or conv2d; ``w`` is a weight parameter (``num_input`` 1), as
    in an imported model."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    if isinstance(case, MatmulCase):
        rows = tvm.tirx.Var("rows", "int64")
        x = relax.Var("x", relax.TensorType([rows, case.k], "float32"))
        w = relax.Var("w", relax.TensorType([case.n, case.k] if case.transposed else [case.k, case.n], "float32"))
    else:
        batch = tvm.tirx.Var("batch", "int64") if case.dynamic else case.batch
        x = relax.Var("x", relax.TensorType([batch, case.channels, case.size, case.size], "float32"))
        w = relax.Var("w", relax.TensorType(_conv_weight_shape(case), "float32"))
    with bb.function("main", [x, w], attrs={"num_input": 1}):
        with bb.dataflow():
            if isinstance(case, MatmulCase):
                y = relax.op.matmul(x, relax.op.permute_dims(w) if case.transposed else w)
            elif case.transposed:
                y = relax.op.nn.conv2d_transpose(x, w, strides=case.stride)
            else:
                y = relax.op.nn.conv2d(x, w, strides=case.stride, padding=case.padding, groups=case.groups)
            out = bb.emit_output(bb.emit(y))
        bb.emit_func_output(out)
    return bb.get()


def _conv_weight_shape(case: ConvCase) -> tuple:
    if case.transposed:
        return (case.channels, case.filters, case.kernel, case.kernel)
    return (case.filters, case.channels // case.groups, case.kernel, case.kernel)


def inputs(case, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    if isinstance(case, MatmulCase):
        shapes = [(case.rows, case.k), (case.n, case.k) if case.transposed else (case.k, case.n)]
    else:
        shapes = [(case.batch, case.channels, case.size, case.size), _conv_weight_shape(case)]
    return [rng.standard_normal(s, dtype=np.float32) for s in shapes]


def numpy_kernel(case):
    """The numpy version of the kernel: ``f(x, w) -> result`` (matmul: np.matmul; convolution:
    im2col + np.matmul, or a sum of shifted products for a depthwise one)."""
    import numpy as np

    if isinstance(case, MatmulCase):
        return lambda x, w: x @ (w.T if case.transposed else w)

    def transposed(x, w):  # kernel == stride: each input pixel spreads over its own output block
        if case.kernel != case.stride or case.padding:
            raise ValueError("only transposed convolutions with kernel == stride are benchmarked")
        n, c, h, wd = x.shape
        taps = x.transpose(0, 2, 3, 1).reshape(-1, c) @ w.reshape(c, -1)
        blocks = taps.reshape(n, h, wd, case.filters, case.kernel, case.kernel).transpose(0, 3, 1, 4, 2, 5)
        return blocks.reshape(n, case.filters, h * case.kernel, wd * case.kernel)

    if case.transposed:
        return transposed

    def conv(x, w):
        p, s, kk, out = case.padding, case.stride, case.kernel, case.out_size
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
        windows = np.lib.stride_tricks.sliding_window_view(padded, (kk, kk), axis=(2, 3))[:, :, ::s, ::s]
        if case.groups == case.channels == case.filters:  # depthwise
            result = np.zeros((x.shape[0], case.filters, out, out), np.float32)
            for r in range(kk):
                for q in range(kk):
                    result += windows[..., r, q] * w[None, :, 0, r, q, None, None]
            return result
        if case.groups != 1:
            raise ValueError("grouped convolutions other than depthwise are not benchmarked")
        cols = windows.transpose(0, 1, 4, 5, 2, 3).reshape(x.shape[0], case.channels * kk * kk, out * out)
        return (w.reshape(case.filters, -1) @ cols).reshape(x.shape[0], case.filters, out, out)

    return conv


def torch_kernel(case):
    """torch's kernel for the same work (its own threads), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    if isinstance(case, MatmulCase):
        return lambda x, w: torch.nn.functional.linear(x, w) if case.transposed else x @ w
    if case.transposed:
        return lambda x, w: torch.nn.functional.conv_transpose2d(x, w, stride=case.stride)
    return lambda x, w: torch.nn.functional.conv2d(x, w, stride=case.stride, padding=case.padding,
                                                   groups=case.groups)


@dataclass(frozen=True)
class BuiltKernel:
    run: object  # () -> tvm Tensor, the module's main on prepared inputs
    scheduled: list  # kernels given the default schedule
    prepacked: bool  # weights transformed at build time (main_transform_params)
    compile_s: float


def build(case, target: dict, x, w) -> BuiltKernel:
    """The case's module compiled the product's way, with its arguments prepared as the builder
    prepares a model's (weights through ``main_transform_params`` when there is one)."""
    import tvm
    from tvm import relax

    from buildsys.compiler.compile import compile_for_target

    compiled = compile_for_target(relax_module(case), target)
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    params = [tvm.runtime.tensor(w)]
    if compiled.transforms_params:
        params = list(vm["main_transform_params"](params))
    args = [tvm.runtime.tensor(x)] + params
    main = vm["main"]
    return BuiltKernel(lambda: main(*args), list(compiled.default_scheduled or []), compiled.transforms_params,
                       compiled.seconds)


def check(case, built: BuiltKernel, x, w):
    """The kernel's result against numpy's; raises AssertionError on a mismatch."""
    import numpy as np

    out = built.run()
    out = (out[0] if not hasattr(out, "numpy") else out).numpy()
    expected = numpy_kernel(case)(x, w)
    assert out.shape == expected.shape, f"{case.label}: shape {out.shape}, numpy {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5 * scale, err_msg=case.label)


# OpenBLAS and OpenMP workers spin for a while after a call before they sleep; on a machine with
# few cores they would slow whichever library is timed next.
SETTLE_S = 0.2
ROUNDS = 3  # libraries take turns, so a burst of someone else's work does not hit only one of them


def best_seconds(functions: dict, budget_s: float = 1.0, max_runs: int = 20) -> dict:
    """Fastest run of each function: one warm-up each, then ``ROUNDS`` turns of up to
    ``budget_s / ROUNDS`` seconds (at least one run) per function."""
    best = {}
    for name, fn in functions.items():
        fn()
        best[name] = float("inf")
    for _ in range(ROUNDS):
        for name, fn in functions.items():
            time.sleep(SETTLE_S)
            spent, runs = 0.0, 0
            while runs < 1 or (spent < budget_s / ROUNDS and runs < max_runs):
                start = time.perf_counter()
                fn()
                seconds = time.perf_counter() - start
                best[name] = min(best[name], seconds)
                spent, runs = spent + seconds, runs + 1
    return best


def measure(case, target: dict, threads: int, budget_s: float = 1.0) -> dict:
    """Build, check and time one case; GFLOP/s of the generated kernel, numpy and torch."""
    x, w = inputs(case)
    built = build(case, target, x, w)
    check(case, built, x, w)
    reference = numpy_kernel(case)
    functions = {"generated": built.run, "numpy": lambda: reference(x, w)}
    torch_fn = torch_kernel(case)
    if torch_fn is not None:
        import torch

        torch.set_num_threads(threads)
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)

        def torch_run():
            with torch.no_grad():
                torch_fn(tx, tw)

        functions["torch"] = torch_run
    seconds = best_seconds(functions, budget_s)
    return {"label": case.label, "shape": case.shape, "scheduled": bool(built.scheduled),
            "prepacked": built.prepacked, "compile_s": built.compile_s,
            **{name: case.flops / s / 1e9 for name, s in seconds.items()}}


def format_table(rows: list[dict]) -> str:
    header = ("kernel", "shape", "sched", "GFLOP/s gen", "numpy", "gen/numpy", "torch", "gen/torch")
    lines = [header]
    for r in rows:
        torch_figure = r.get("torch")
        lines.append((r["label"], r["shape"], ("packed" if r["prepacked"] else "yes") if r["scheduled"] else "no",
                      f"{r['generated']:.1f}", f"{r['numpy']:.1f}", f"{r['generated'] / r['numpy']:.2f}",
                      "-" if torch_figure is None else f"{torch_figure:.1f}",
                      "-" if torch_figure is None else f"{r['generated'] / torch_figure:.2f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) if i < 3 else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(line, widths))) for line in lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="llvm -mcpu=native", help='a target string (default "%(default)s")')
    parser.add_argument("--threads", type=int, default=2, help="threads for TVM, numpy and torch (default 2)")
    parser.add_argument("--only", default="", help="run the cases whose label contains this text")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timed runs per kernel and library")
    args = parser.parse_args(argv)
    # Thread pools read these when they start: before numpy, torch or TVM run anything.
    for name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    # TVM's workers spin after each parallel kernel and would steal the cores numpy and torch are
    # timed on next; waking them costs microseconds against kernels of milliseconds.
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

    from buildsys.config.targets import format_cli_target, normalize_target

    target = normalize_target(args.target, where="--target")
    cases = [c for c in CASES if args.only.lower() in c.label.lower()]
    if not cases:
        parser.error(f"no case label contains {args.only!r}")
    print(f"target {format_cli_target(target)}, {args.threads} threads", flush=True)
    rows = []
    start = time.perf_counter()
    for case in cases:
        rows.append(measure(case, target, args.threads, args.budget))
        print(f"  {case.label}: {rows[-1]['generated']:.1f} GFLOP/s (compile {rows[-1]['compile_s']:.1f} s)",
              flush=True)
    print(format_table(rows))
    print(f"all results match numpy; {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
