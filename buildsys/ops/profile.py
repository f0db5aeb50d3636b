"""``buildsys profile REF``: where an artifact's time goes, kernel by kernel.

The artifact runs through the thin runtime (the library that ships, nothing rebuilt) with the
Relax VM's instrument hook, which the VM calls before and after every kernel: each kernel's
calls and time are summed over a run, and the fastest of ``runs`` runs is kept per kernel
(a busy machine inflates a run, never shortens one). GFLOP/s divides the floating-point
operations the builder recorded per kernel (manifest ``kernels.flops``, estimated by TVM from
the kernel before scheduling, as computed: small odd maps count their padded tiles; none for a kernel whose shapes are known only at run time) by that time.
The VM's builtins it calls the same way (``vm.builtin.alloc_tensor``, shape checks...) are
listed beside the kernels; what is left (the interpreter's own dispatch) is the difference
between the run and the sum.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class KernelTime:
    name: str
    calls: int
    ms: float
    share: float  # of all kernel time
    gflops: float | None  # None when the builder could not count its operations


@dataclass
class Profile:
    key: str
    label: str
    runs: int
    total_ms: float  # the fastest whole run, instrumented
    kernels: list[KernelTime] = field(default_factory=list)

    @property
    def kernel_ms(self) -> float:
        return sum(k.ms for k in self.kernels)

    def to_dict(self) -> dict:
        return {"key": self.key, "label": self.label, "runs": self.runs, "total_ms": round(self.total_ms, 4),
                "kernel_ms": round(self.kernel_ms, 4),
                "kernels": [{"name": k.name, "calls": k.calls, "ms": round(k.ms, 4), "share": round(k.share, 4),
                             "gflops": None if k.gflops is None else round(k.gflops, 2)} for k in self.kernels]}


def _recorded_flops(manifest) -> dict[str, float]:
    """The builder's operations per kernel (``kernels.flops``), what of it is a positive finite
    number: a bundle's manifest comes from outside, and an artifact built before buildsys 0.5
    has none (no GFLOP/s then, the times still)."""
    import math

    kernels = manifest.get("kernels")
    recorded = kernels.get("flops") if isinstance(kernels, dict) else None
    if not isinstance(recorded, dict):
        return {}
    return {name: float(v) for name, v in recorded.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0}


def profile_predictor(predictor, inputs: list[np.ndarray], runs: int = 10) -> Profile:
    """Per-kernel times of ``predictor`` on ``inputs`` (fastest of ``runs`` per kernel)."""
    flops = _recorded_flops(predictor.manifest)
    current: dict[str, list] = {}
    started: list[float] = []

    def instrument(_func, name, before, _ret, *_args):
        if before:
            started.append(time.perf_counter())
        else:
            entry = current.setdefault(str(name), [0.0, 0])
            entry[0] += time.perf_counter() - started.pop()
            entry[1] += 1
        return 0  # go on as usual

    best: dict[str, list] = {}
    totals = []
    predictor.run(*inputs)  # warm-up: first-run allocations and page faults are not the kernels'
    predictor.set_instrument(instrument)
    try:
        for _ in range(runs):
            current.clear()
            start = time.perf_counter()
            predictor.run(*inputs)
            totals.append(time.perf_counter() - start)
            for name, (seconds, calls) in current.items():
                if name not in best or seconds < best[name][0]:
                    best[name] = [seconds, calls]
    finally:
        predictor.set_instrument(None)
    kernel_s = sum(s for s, _ in best.values()) or 1.0
    kernels = []
    for name, (seconds, calls) in sorted(best.items(), key=lambda kv: -kv[1][0]):
        per_call = flops.get(name)
        gflops = per_call * calls / seconds / 1e9 if per_call and seconds > 0 else None
        kernels.append(KernelTime(name, calls, seconds * 1e3, seconds / kernel_s, gflops))
    return Profile(predictor.key, predictor.manifest.get("label", ""), runs, min(totals) * 1e3, kernels)


def profile_artifact(ref: str, registry, store, *, runs: int = 10, threads: int | None = None,
                     seed: int = 0) -> Profile:
    """Load ``ref`` with the thin runtime and profile it on its seeded sample inputs at the
    smallest batch (the same ``buildsys run`` uses)."""
    from buildsys.runtime import load_artifact

    predictor = load_artifact(ref, registry=registry, store=store, num_threads=threads)
    signature = predictor.signature
    return profile_predictor(predictor, signature.sample(signature.batch_min, seed), runs)
