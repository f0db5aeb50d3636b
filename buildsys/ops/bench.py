"""``buildsys bench``: the artifact next to PyTorch eager, torch.compile and onnxruntime.

Same input, same thread count for every runner, interleaved rounds (each round
times every runner in turn, so a noisy neighbour hits them alike), medians, and
the ratio to eager taken within each round before the median. Outputs are
compared with eager on the same input, so a fast wrong artifact shows as wrong.

Each runner runs in a process of its own (``bench_worker``): the artifact through the thin
runtime (no torch in that process), eager, torch.compile, onnxruntime (no torch either, on an
ONNX file exported here). In one process their three thread pools (TVM's, torch's OpenMP,
onnxruntime's) each spun after their work into the next runner's turn: mobilenet_v3_large read
0.81x onnxruntime there, 1.34x with pauses between runners. A runner waiting for its turn is
stopped (SIGSTOP), so nothing of it runs while another is timed; each times its own calls, so
the figures hold no pickling or pipe. ``mode="alone"`` times one runner at a time, its process
the only one, all its rounds in a row: the reference the interleaved figures are checked against.

An artifact with a batch range is timed at several batch sizes (its min, opt and max, or
``--batch``), each runner on the same inputs: onnxruntime runs one model exported with the same
dynamic batch axis, torch.compile one compiled function (it recompiles per size, during warm-up).
Each size reports latency and items per second.

Thread counts are fixed before the runtimes start: each process gets ``TVM_NUM_THREADS`` and
``OMP_NUM_THREADS`` (read once when the pools start), torch's intra-op threads and onnxruntime's
session options (intra-op ``threads``, inter-op 1); what each process ended up with is in its
runner's ``process`` entry.
"""

from __future__ import annotations

import platform
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from buildsys.errors import UsageError
from buildsys.ops.bench_processes import Timeouts, Session
from buildsys.ops.bench_worker import FACTORIES

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
    mode: str = "interleaved"  # or "alone" (bench_artifact)

    def to_dict(self) -> dict:
        return {"key": self.key, "label": self.label, "threads": self.threads, "rounds": self.rounds,
                "number": self.number, "cpu_model": self.cpu_model, "runners": self.runners,
                "batch": self.batch, "batches": self.batches, "isolation": "process", "mode": self.mode}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def _export_onnx(reference, examples: tuple, path: Path, names: list[str], dynamic_batch: bool = False) -> Path:
    """The reference exported to ONNX at ``path``, its inputs named as the artifact's; with
    ``dynamic_batch`` the first dimension of every input and output is a dynamic axis."""
    import torch

    from buildsys.pipeline.parity import flatten_outputs

    output_names = axes = None
    if dynamic_batch:
        with torch.no_grad():
            output_names = [f"output{i}" for i in range(len(flatten_outputs(reference(*examples))))]
        axes = {name: {0: "batch"} for name in [*names, *output_names]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(reference, tuple(examples), str(path), dynamo=False, opset_version=17,
                          input_names=names, output_names=output_names, dynamic_axes=axes,
                          do_constant_folding=True)
    return path


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


MODES = ("interleaved", "alone")


def bench_artifact(record, spec, *, threads: int, rounds: int, number: int, budget_s: float | None = 120.0,
                   with_compile: bool | None = None, with_ort: bool = True, batches: tuple[int, ...] | None = None,
                   mode: str = "interleaved", freeze: bool = True, final_outputs: int | None = None,
                   env: dict[str, str] | None = None, timeouts: Timeouts | None = None,
                   on_status: Callable[[str], None] | None = None) -> BenchResult:
    """Time one artifact against the model it was built from (rebuilt from its spec), at each
    batch size of ``batch_sizes``; ``budget_s`` is shared among the sizes.

    Each runner runs in a process of its own (``RunnerProcess``) on the same inputs, saved once.
    ``mode`` "interleaved": every round times each runner in turn, the others stopped; "alone":
    one runner at a time, all its rounds, its process the only one there (the reference that the
    interleaved figures should match: ``benchmarks/bench_fairness.py``). ``freeze`` False leaves
    the waiting runners running (their pools spin into the next runner's turn; for comparison)."""
    import tempfile

    import torch

    from buildsys.models import instantiate
    from buildsys.pipeline.samples import export_examples, sample_inputs

    if mode not in MODES:
        raise UsageError(f"mode {mode!r}: one of {', '.join(MODES)}")
    status = on_status or (lambda _text: None)
    sizes = batch_sizes(spec, batches)
    result = BenchResult(key=record.key, label=spec.describe(), threads=threads, rounds=rounds, number=number,
                         cpu_model=cpu_model(), mode=mode)
    if with_compile is None:
        with_compile = spec.model.task != "detection"
    setups: dict[str, dict] = {"artifact": {"key": record.key}, "torch_eager": {"spec": spec}}
    failed: dict[str, str] = {}
    onnx_file = spec.model.file_kind == "onnx"
    if onnx_file:  # onnxruntime runs the file itself and is the reference; there is no PyTorch module
        del setups["torch_eager"]
        failed["torch_eager"] = failed["torch_compile"] = f"not run: the model is an ONNX file ({spec.model.source})"
    elif with_compile:
        setups["torch_compile"] = {"spec": spec}
    else:
        failed["torch_compile"] = ("not run (--no-compile)" if spec.model.task != "detection" else
                                   "not run (detectors: data-dependent shapes recompile; pass --compile to try)")
    with tempfile.TemporaryDirectory(prefix="buildsys-bench-") as tmp:
        workdir = Path(tmp)
        torch.set_num_threads(threads)
        if with_ort and onnx_file:
            setups["onnxruntime"] = {"onnx": str(spec.model.file_path)}
        elif with_ort:
            status("onnxruntime: exporting ...")
            module = instantiate(spec.model)
            if spec.model.task == "detection":
                from buildsys.pipeline.importers.onnx_route import _detector_wrapper

                module = _detector_wrapper(module)
            try:
                onnx = _export_onnx(module, export_examples(spec), workdir / "model.onnx",
                                    [i.name for i in spec.inputs], dynamic_batch=spec.batch.dynamic)
                setups["onnxruntime"] = {"onnx": str(onnx)}
            except Exception as exc:  # noqa: BLE001 - recorded as the runner's result
                failed["onnxruntime"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            del module
        for name in setups:
            setups[name]["factory"] = FACTORIES[name]
        inputs = {}
        for size in sizes:
            inputs[size] = workdir / f"inputs-{size}.npz"
            np.savez(inputs[size], *[t.numpy() for t in sample_inputs(spec, size)])
        share = None if budget_s is None else budget_s / len(sizes)
        session = Session(setups, failed, threads=threads, workdir=workdir, freeze=freeze, status=status,
                           env=env, timeouts=timeouts)
        try:
            per_size = (session.interleaved if mode == "interleaved" else session.alone)(
                sizes, inputs, rounds, number, share)
        finally:
            session.close()
        reference = "onnxruntime" if onnx_file else "torch_eager"  # whose outputs the others are compared with
        for size in sizes:
            timed = per_size[size]
            expected = _load_outputs(session.outputs.get((reference, size)))
            for name in dict.fromkeys([*setups, *failed]):
                entry = timed[name] = {"error": failed[name]} if name in failed else timed.get(name, {})
                if name in session.info:  # a runner that failed later keeps what its process was
                    entry["process"] = session.info[name]
                if name in session.compile_s:
                    entry["compile_s"] = session.compile_s[name]
                if name in failed:
                    continue
                got = _load_outputs(session.outputs.get((name, size)))
                if name != reference and expected is not None and got is not None:
                    if final_outputs:  # detections compared by match, not by position (parity.matched_outputs)
                        from buildsys.pipeline.parity import matched_outputs

                        got = matched_outputs(expected, got, int(final_outputs))
                    entry["max_rel_vs_eager" if reference == "torch_eager" else "max_rel_vs_onnxruntime"] = \
                        _max_rel(expected, got)
            result.batches.append({"batch": size, "runners": timed})
        result.number = min([result.number, *session.numbers]) if session.numbers else result.number
    shown = spec.batch.opt if spec.batch.opt in sizes else sizes[0]
    result.batch = shown
    result.runners = next(b["runners"] for b in result.batches if b["batch"] == shown)
    return result


def _load_outputs(path: Path | None) -> list[np.ndarray] | None:
    if path is None:
        return None
    with np.load(path, allow_pickle=False) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


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
               batches: tuple[int, ...] | None = None, mode: str = "interleaved", record: bool = True,
               freeze: bool = True, on_status: Callable[[str], None] | None = None) -> list[BenchResult]:
    """``buildsys bench``: each artifact named by ``refs`` (default: the matrix's built entries),
    timed and (``record``) recorded in the registry (its ``benchmarks`` rows and the metrics ``ls``
    shows; not when the artifact's own runner failed)."""
    from buildsys.artifacts import manifest as manifest_format
    from buildsys.artifacts.locations import REGISTRY_ENV, STORE_ENV
    from buildsys.runtime.loader import check_compatibility, foreign_build

    matrix = ws.matrix_specs(filters=filters, cached_only=True) if not refs or filters else {}
    records = [ws.registry.resolve(ref) for ref in refs] if refs else [ws.registry.get(k) for k in matrix]
    if not records:
        raise UsageError("nothing to benchmark: build first, or name artifacts (KEY, prefix or alias)")
    env = {STORE_ENV: str(ws.store.root), REGISTRY_ENV: ws.registry.url}  # where the artifact's process loads it
    results = []
    for entry in records:
        spec = ws.spec_of(entry, matrix)
        manifest = manifest_format.read_stored(ws.store, entry)
        label = f"{spec.describe()} ({entry.key[:12]})"
        status = (lambda text, label=label: on_status(f"{label}: {text}")) if on_status else None
        foreign = foreign_build(manifest)
        if foreign is not None:  # no number: emulated time is not latency, and this host cannot run it
            results.append(BenchResult(entry.key, label, threads, rounds, number, cpu_model(), runners={
                "artifact": {"error": f"built for {foreign}: this {platform.machine()} host cannot time it, and "
                                      "time under emulation (qemu-user) is not latency; run `buildsys bench` on "
                                      "such a machine (or over TVM's RPC, README \"Other architectures\")"}}))
            continue
        check_compatibility(manifest, entry.key)  # refused here, as the loader would, before any process starts
        result = bench_artifact(entry, spec, threads=threads, rounds=rounds, number=number, budget_s=budget_s,
                                with_compile=with_compile, with_ort=with_ort, batches=batches, mode=mode, env=env,
                                freeze=freeze, final_outputs=(manifest.get("detection") or {}).get("final_outputs"),
                                on_status=status)
        if record and "ms" in result.runners.get("artifact", {}):
            ws.registry.add_benchmark(entry.key, cpu_model=result.cpu_model, threads=threads, rounds=rounds,
                                      results=result.to_dict())
            ws.registry.add_metrics(entry.key, metrics_of(result))
        results.append(result)
    return results
