"""``buildsys bench``: the artifact next to PyTorch eager, torch.compile and onnxruntime.

Same input, same thread count for every runner, interleaved rounds (each round
times every runner in turn, so a noisy neighbour hits them alike), medians, and
the ratio to eager taken within each round before the median. Outputs are
compared with eager on the same input, so a fast wrong artifact shows as wrong.

Thread counts must be fixed before the runtimes start: ``configure_threads``
sets ``TVM_NUM_THREADS`` (read once when TVM's thread pool starts), torch's
intra-op threads, and onnxruntime's session options.
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from buildsys.errors import UsageError

RUNNERS = ("artifact", "torch_eager", "torch_compile", "onnxruntime")


@dataclass
class BenchResult:
    key: str
    label: str
    threads: int
    rounds: int
    number: int
    cpu_model: str
    runners: dict[str, dict] = field(default_factory=dict)  # name -> {ms, min_ms, ratio_vs_eager, max_rel | error}

    def to_dict(self) -> dict:
        return {"key": self.key, "label": self.label, "threads": self.threads, "rounds": self.rounds,
                "number": self.number, "cpu_model": self.cpu_model, "runners": self.runners}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def configure_threads(threads: int) -> None:
    """Before TVM or torch start their pools: one count for all runners."""
    if "tvm" in sys.modules and os.environ.get("TVM_NUM_THREADS") != str(threads):
        raise UsageError("the thread count must be set before TVM is loaded (start a fresh process)")
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _time_ms(fn: Callable[[], object], number: int) -> float:
    times = []
    for _ in range(number):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def interleave(runners: dict[str, Callable[[], object]], rounds: int, number: int,
               budget_s: float | None = None) -> tuple[dict[str, dict], int]:
    """Each round times every runner ``number`` times (median); per runner: the median over
    rounds, its minimum, and the median of per-round ratios to eager and to onnxruntime.
    With ``budget_s``, ``number`` shrinks (to 1 at least) so the rounds fit in it, judged
    from the warm-up. Returns (results, number used)."""
    warm = 0.0
    for fn in runners.values():  # warm-up: lazy allocations, caches, JIT
        start = time.perf_counter()
        fn()
        warm += time.perf_counter() - start
    if budget_s is not None and warm > 0:
        number = max(1, min(number, int(budget_s / (rounds * warm))))
    per_round: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            per_round[name].append(_time_ms(fn, number))
    results = {}
    for name, times in per_round.items():
        entry = {"ms": statistics.median(times), "min_ms": min(times), "rounds_ms": [round(t, 3) for t in times]}
        for reference, label in (("torch_eager", "ratio_vs_eager"), ("onnxruntime", "ratio_vs_onnxruntime")):
            if reference in per_round:
                entry[label] = statistics.median(a / b for a, b in zip(times, per_round[reference]))
        results[name] = entry
    return results, number


def _max_rel(reference: list[np.ndarray], actual: list[np.ndarray]) -> float | None:
    """Largest relative error over outputs of equal shape (detections of different count are skipped)."""
    worst = None
    for ref, out in zip(reference, actual):
        if ref.shape != out.shape or ref.size == 0:
            continue
        scale = float(np.abs(ref.astype(np.float64)).max()) or 1.0
        rel = float(np.abs(ref.astype(np.float64) - out.astype(np.float64)).max()) / scale
        worst = rel if worst is None else max(worst, rel)
    return worst


def _onnx_session(reference, example, threads: int):
    import onnxruntime as ort
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(reference, (example,), buffer, dynamo=False, opset_version=17,
                          input_names=["input0"], do_constant_folding=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def bench_artifact(record, spec, predictor, *, threads: int, rounds: int, number: int,
                   budget_s: float | None = 120.0, with_compile: bool | None = None, with_ort: bool = True,
                   on_status: Callable[[str], None] | None = None) -> BenchResult:
    """Time one artifact against the model it was built from (rebuilt from its spec)."""
    import torch

    from buildsys.pipeline.samples import export_examples
    from buildsys.models import instantiate
    from buildsys.pipeline.parity import flatten_outputs

    status = on_status or (lambda _text: None)
    torch.set_num_threads(threads)
    module = instantiate(spec.model)
    x = export_examples(spec)[0]
    x_np = x.numpy()
    if spec.model.task == "detection":
        from buildsys.pipeline.importers.onnx_route import _detector_wrapper

        reference = _detector_wrapper(module)  # what the artifact computes, outputs in the same order
    else:
        reference = module
    with torch.no_grad():
        expected = flatten_outputs(reference(x))
    runners: dict[str, Callable[[], object]] = {"artifact": lambda: predictor.run(x_np)}
    runners["torch_eager"] = lambda: _no_grad(reference, x)
    result = BenchResult(key=record.key, label=spec.describe(), threads=threads, rounds=rounds, number=number,
                         cpu_model=cpu_model())
    checks = {"artifact": lambda: predictor.run(x_np)}
    if with_compile is None:
        with_compile = spec.model.task != "detection"
    if with_compile:
        status("torch.compile ...")
        try:
            compiled = torch.compile(reference)
            start = time.perf_counter()
            _no_grad(compiled, x)
            result.runners["torch_compile"] = {"compile_s": time.perf_counter() - start}
            runners["torch_compile"] = lambda: _no_grad(compiled, x)
            checks["torch_compile"] = lambda: flatten_outputs(_no_grad(compiled, x))
        except Exception as exc:  # noqa: BLE001 - recorded as the runner's result
            result.runners["torch_compile"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    else:
        result.runners["torch_compile"] = {"error": "not run (detectors: data-dependent shapes recompile; "
                                                    "pass --compile to try)"}
    if with_ort:
        status("onnxruntime ...")
        try:
            session = _onnx_session(reference, x, threads)
            feed = {session.get_inputs()[0].name: x_np}
            runners["onnxruntime"] = lambda: session.run(None, feed)
            checks["onnxruntime"] = lambda: session.run(None, feed)
        except Exception as exc:  # noqa: BLE001
            result.runners["onnxruntime"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    status(f"{rounds} rounds x {number} runs ...")
    timed, result.number = interleave(runners, rounds, number, budget_s)
    for name, figures in timed.items():
        result.runners[name] = {**result.runners.get(name, {}), **figures}
    for name, check in checks.items():
        result.runners[name]["max_rel_vs_eager"] = _max_rel(expected, [np.asarray(a) for a in check()])
    return result


def _no_grad(fn, x):
    import torch

    with torch.no_grad():
        return fn(x)


def metrics_of(result: BenchResult) -> dict[str, tuple[float, str]]:
    """What the registry keeps per artifact from the latest bench (for `ls`)."""
    out: dict[str, tuple[float, str]] = {"bench_threads": (float(result.threads), "count")}
    for name in RUNNERS:
        figures = result.runners.get(name, {})
        if "ms" in figures:
            out[f"bench_{name}_ms"] = (figures["ms"], "ms")
    artifact = result.runners.get("artifact", {})
    if "ratio_vs_eager" in artifact:
        out["bench_ratio_vs_eager"] = (artifact["ratio_vs_eager"], "x")
    if "ratio_vs_onnxruntime" in artifact:
        out["bench_ratio_vs_onnxruntime"] = (artifact["ratio_vs_onnxruntime"], "x")
    return out


def bench_refs(ws, refs, *, filters=(), threads: int = 1, rounds: int = 5, number: int = 10,
               budget_s: float | None = 120.0, with_compile: bool | None = None, with_ort: bool = True,
               on_status: Callable[[str], None] | None = None) -> list[BenchResult]:
    """``buildsys bench``: each artifact named by ``refs`` (default: the matrix's built entries),
    timed and recorded in the registry (its ``benchmarks`` rows and the metrics ``ls`` shows)."""
    from buildsys.errors import UsageError

    configure_threads(threads)  # before TVM's thread pool or torch's start
    from buildsys.runtime import load_artifact

    matrix = ws.matrix_specs(filters=filters, cached_only=True) if not refs or filters else {}
    records = [ws.registry.resolve(ref) for ref in refs] if refs else [ws.registry.get(k) for k in matrix]
    if not records:
        raise UsageError("nothing to benchmark: build first, or name artifacts (KEY, prefix or alias)")
    results = []
    for record in records:
        spec = ws.spec_of(record, matrix)
        label = f"{spec.describe()} ({record.key[:12]})"
        status = (lambda text, label=label: on_status(f"{label}: {text}")) if on_status else None
        if status:
            status("loading ...")
        predictor = load_artifact(record.key, registry=ws.registry, store=ws.store)
        result = bench_artifact(record, spec, predictor, threads=threads, rounds=rounds, number=number,
                                budget_s=budget_s, with_compile=with_compile, with_ort=with_ort, on_status=status)
        ws.registry.add_benchmark(record.key, cpu_model=result.cpu_model, threads=threads, rounds=rounds,
                                  results=result.to_dict())
        ws.registry.add_metrics(record.key, metrics_of(result))
        results.append(result)
    return results
