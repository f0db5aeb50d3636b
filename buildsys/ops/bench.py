"""``buildsys bench``: the artifact next to PyTorch eager, torch.compile and onnxruntime.

Same input, same thread count for every runner, interleaved rounds (each round
times every runner in turn, so a noisy neighbour hits them alike), medians, and
the ratio to eager taken within each round before the median. Outputs are
compared with eager on the same input, so a fast wrong artifact shows as wrong.

An artifact with a batch range is timed at several batch sizes (its min, opt and max, or
``--batch``), each runner on the same inputs: onnxruntime runs one model exported with the same
dynamic batch axis, torch.compile one compiled function (it recompiles per size, during warm-up).
Each size reports latency and items per second.

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
    batch: int = 1  # the size ``runners`` were timed at (a range: its opt when timed, else the first)
    batches: list[dict] = field(default_factory=list)  # [{batch, runners}] per size timed, items_per_s included

    def to_dict(self) -> dict:
        return {"key": self.key, "label": self.label, "threads": self.threads, "rounds": self.rounds,
                "number": self.number, "cpu_model": self.cpu_model, "runners": self.runners,
                "batch": self.batch, "batches": self.batches}


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


def _onnx_session(reference, examples: tuple, threads: int, names: list[str], dynamic_batch: bool = False):
    """onnxruntime on the reference exported to ONNX, its inputs named as the artifact's; with
    ``dynamic_batch`` the first dimension of every input and output is a dynamic axis."""
    import onnxruntime as ort
    import torch

    from buildsys.pipeline.parity import flatten_outputs

    buffer = io.BytesIO()
    output_names = axes = None
    if dynamic_batch:
        with torch.no_grad():
            output_names = [f"output{i}" for i in range(len(flatten_outputs(reference(*examples))))]
        axes = {name: {0: "batch"} for name in [*names, *output_names]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(reference, tuple(examples), buffer, dynamo=False, opset_version=17,
                          input_names=names, output_names=output_names, dynamic_axes=axes,
                          do_constant_folding=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def parse_batches(text: str | None) -> tuple[int, ...] | None:
    """``--batch 1,8,32`` -> (1, 8, 32)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and 0 < int(p) <= 1 << 20 for p in parts):
        raise UsageError(f"--batch takes batch sizes separated by commas (e.g. 1,8,32), got {text!r}")
    return tuple(int(p) for p in parts)


def batch_sizes(spec, wanted: tuple[int, ...] | None = None) -> list[int]:
    """The sizes to time: ``wanted`` (each within the artifact's range), else a static batch, or a
    range's min, opt and max."""
    batch = spec.batch
    if not wanted:
        return list(batch.parity_sizes)
    outside = [b for b in wanted if not batch.min <= b <= batch.max]
    if outside:
        raise UsageError(f"--batch {','.join(map(str, outside))}: {spec.describe()} takes batch "
                         f"{batch.min if not batch.dynamic else f'{batch.min} to {batch.max}'}")
    return sorted(set(wanted))


def bench_artifact(record, spec, predictor, *, threads: int, rounds: int, number: int,
                   budget_s: float | None = 120.0, with_compile: bool | None = None, with_ort: bool = True,
                   batches: tuple[int, ...] | None = None,
                   on_status: Callable[[str], None] | None = None) -> BenchResult:
    """Time one artifact against the model it was built from (rebuilt from its spec), at each
    batch size of ``batch_sizes``; ``budget_s`` is shared among the sizes."""
    import torch

    from buildsys.pipeline.samples import export_examples, sample_inputs
    from buildsys.models import instantiate

    status = on_status or (lambda _text: None)
    torch.set_num_threads(threads)
    module = instantiate(spec.model)
    if spec.model.task == "detection":
        from buildsys.pipeline.importers.onnx_route import _detector_wrapper

        reference = _detector_wrapper(module)  # what the artifact computes, outputs in the same order
    else:
        reference = module
    sizes = batch_sizes(spec, batches)
    result = BenchResult(key=record.key, label=spec.describe(), threads=threads, rounds=rounds, number=number,
                         cpu_model=cpu_model())
    setup: dict[str, dict] = {}  # runner -> what its set-up recorded (compile_s, error)
    compiled = session = None
    if with_compile is None:
        with_compile = spec.model.task != "detection"
    if with_compile:
        status("torch.compile ...")
        try:
            compiled = torch.compile(reference)
            start = time.perf_counter()
            _no_grad(compiled, sample_inputs(spec, sizes[0]))
            setup["torch_compile"] = {"compile_s": time.perf_counter() - start}
        except Exception as exc:  # noqa: BLE001 - recorded as the runner's result
            compiled, setup["torch_compile"] = None, {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    else:
        setup["torch_compile"] = {"error": "not run (--no-compile)" if spec.model.task != "detection" else
                                  "not run (detectors: data-dependent shapes recompile; pass --compile to try)"}
    if with_ort:
        status("onnxruntime ...")
        try:
            session = _onnx_session(reference, export_examples(spec), threads, [i.name for i in spec.inputs],
                                    dynamic_batch=spec.batch.dynamic)
        except Exception as exc:  # noqa: BLE001
            setup["onnxruntime"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    share = None if budget_s is None else budget_s / len(sizes)
    for size in sizes:
        runners = _time_at(size, spec, reference, predictor, compiled, session, rounds, number, share,
                           lambda text, size=size: status(f"batch {size}: {text}" if len(sizes) > 1 else text))
        for name, figures in setup.items():
            runners[name] = {**figures, **runners.get(name, {})}
        result.batches.append({"batch": size, "runners": runners})
        result.number = min(result.number, runners["artifact"].pop("number"))
    shown = spec.batch.opt if spec.batch.opt in sizes else sizes[0]
    result.batch = shown
    result.runners = next(b["runners"] for b in result.batches if b["batch"] == shown)
    return result


def _time_at(size: int, spec, reference, predictor, compiled, session, rounds: int, number: int,
             budget_s: float | None, status: Callable[[str], None]) -> dict[str, dict]:
    """Every runner timed at one batch size on the same seeded inputs, checked against eager."""
    from buildsys.pipeline.parity import flatten_outputs, matched_outputs
    from buildsys.pipeline.samples import sample_inputs

    inputs = sample_inputs(spec, size)
    arrays = [t.numpy() for t in inputs]
    runners: dict[str, Callable[[], object]] = {"artifact": lambda: predictor.run(*arrays),
                                                "torch_eager": lambda: _no_grad(reference, inputs)}
    checks = {"artifact": lambda: predictor.run(*arrays)}
    if compiled is not None:
        runners["torch_compile"] = lambda: _no_grad(compiled, inputs)
        checks["torch_compile"] = lambda: flatten_outputs(_no_grad(compiled, inputs))
    if session is not None:
        feed = {i.name: a for i, a in zip(session.get_inputs(), arrays)}
        runners["onnxruntime"] = checks["onnxruntime"] = lambda: session.run(None, feed)
    with torch_no_grad():
        expected = flatten_outputs(reference(*inputs))
    status(f"{rounds} rounds x {number} runs ...")
    timed, used = interleave(runners, rounds, number, budget_s)
    for name, figures in timed.items():
        figures["items_per_s"] = size * 1e3 / figures["ms"] if figures["ms"] > 0 else None
    final = (predictor.manifest.get("detection") or {}).get("final_outputs")
    for name, check in checks.items():
        got = [np.asarray(a) for a in check()]
        if final:  # detections compared by match, not by position (see parity.matched_outputs)
            got = matched_outputs([np.asarray(e) for e in expected], got, int(final))
        timed[name]["max_rel_vs_eager"] = _max_rel(expected, got)
    timed["artifact"]["number"] = used
    return timed


def torch_no_grad():
    import torch

    return torch.no_grad()


def _no_grad(fn, inputs: tuple):
    with torch_no_grad():
        return fn(*inputs)


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
               batches: tuple[int, ...] | None = None, on_status: Callable[[str], None] | None = None) -> list[BenchResult]:
    """``buildsys bench``: each artifact named by ``refs`` (default: the matrix's built entries),
    timed and recorded in the registry (its ``benchmarks`` rows and the metrics ``ls`` shows)."""
    from buildsys.errors import UsageError

    configure_threads(threads)  # before TVM's thread pool or torch's start
    from buildsys.artifacts import manifest as manifest_format
    from buildsys.runtime import load_artifact
    from buildsys.runtime.loader import foreign_build

    matrix = ws.matrix_specs(filters=filters, cached_only=True) if not refs or filters else {}
    records = [ws.registry.resolve(ref) for ref in refs] if refs else [ws.registry.get(k) for k in matrix]
    if not records:
        raise UsageError("nothing to benchmark: build first, or name artifacts (KEY, prefix or alias)")
    results = []
    for record in records:
        spec = ws.spec_of(record, matrix)
        label = f"{spec.describe()} ({record.key[:12]})"
        status = (lambda text, label=label: on_status(f"{label}: {text}")) if on_status else None
        foreign = foreign_build(manifest_format.read_stored(ws.store, record))
        if foreign is not None:  # no number: emulated time is not latency, and this host cannot run it
            results.append(BenchResult(record.key, label, threads, rounds, number, cpu_model(), runners={
                "artifact": {"error": f"built for {foreign}: this {platform.machine()} host cannot time it, and "
                                      "time under emulation (qemu-user) is not latency; run `buildsys bench` on "
                                      "such a machine (or over TVM's RPC, README \"Other architectures\")"}}))
            continue
        if status:
            status("loading ...")
        predictor = load_artifact(record.key, registry=ws.registry, store=ws.store)
        result = bench_artifact(record, spec, predictor, threads=threads, rounds=rounds, number=number,
                                budget_s=budget_s, with_compile=with_compile, with_ort=with_ort, batches=batches,
                                on_status=status)
        ws.registry.add_benchmark(record.key, cpu_model=result.cpu_model, threads=threads, rounds=rounds,
                                  results=result.to_dict())
        ws.registry.add_metrics(record.key, metrics_of(result))
        results.append(result)
    return results
