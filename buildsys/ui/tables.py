"""The rows of the CLI's tables (``buildsys ls``, ``buildsys bench``), a tuple of cells each."""

from __future__ import annotations


ARTIFACT_HEADER = ("KEY", "MODEL", "SIZE", "BATCH", "TARGET", "OPT", "STATUS", "MAX_REL", "VS_EAGER", "VS_ORT", "ALIASES")
BENCH_HEADER = ("ARTIFACT", "EAGER ms", "TVM ms", "TVM/EAGER", "COMPILE ms", "ORT ms", "ORT/EAGER", "TVM/ORT",
                "TVM max_rel")
BATCH_HEADER = ("ARTIFACT", "BATCH", "TVM ms", "TVM items/s", "EAGER items/s", "ORT items/s", "TVM/EAGER", "TVM/ORT")


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def artifact_row(record) -> tuple[str, ...]:
    """A registry record: its ratio to eager from ``buildsys bench`` when there is one, else the
    build-time estimate, marked ~."""
    ratio = record.metrics.get("bench_ratio_vs_eager")
    estimate = record.metrics.get("ratio_vs_eager")
    shown = _fmt(ratio, ".2f", "x") if ratio is not None else ("-" if estimate is None else f"~{estimate:.1f}x")
    return (record.key[:12], record.model, record.input_size, batch_label(record.spec.get("batch", 1)),
            record.target.cli(),
            f"O{record.opt_level}", record.status, _fmt(record.parity_max_rel, ".1e"), shown,
            _fmt(record.metrics.get("bench_ratio_vs_onnxruntime"), ".2f", "x"), ",".join(record.aliases))


def batch_label(batch) -> str:
    """A spec's ``batch`` (``Batch.to_dict``): 8, or 1-32 for a range."""
    return f"{batch['min']}-{batch['max']}" if isinstance(batch, dict) else str(batch)


def bench_row(result) -> tuple[str, ...]:
    def cell(name: str, field: str = "ms", spec: str = ".2f", suffix: str = "") -> str:
        return _fmt(result.runners.get(name, {}).get(field), spec, suffix)

    return (result.label, cell("torch_eager"), cell("artifact"), cell("artifact", "ratio_vs_eager", suffix="x"),
            cell("torch_compile"), cell("onnxruntime"), cell("onnxruntime", "ratio_vs_eager", suffix="x"),
            cell("artifact", "ratio_vs_onnxruntime", suffix="x"),
            cell("artifact", "max_rel_vs_eager" if "max_rel_vs_eager" in result.runners.get("artifact", {})
                 else "max_rel_vs_onnxruntime", ".1e"))  # an ONNX file's reference is onnxruntime


PROFILE_HEADER = ("KERNEL", "CALLS", "ms", "SHARE", "GFLOP/s")


def profile_rows(profile, top: int = 25) -> list[tuple[str, ...]]:
    rows = [(k.name, str(k.calls), f"{k.ms:.3f}", f"{k.share:.1%}", _fmt(k.gflops, ".1f"))
            for k in profile.kernels[:top]]
    rest = profile.kernels[top:]
    if rest:
        rows.append((f"({len(rest)} more)", str(sum(k.calls for k in rest)), f"{sum(k.ms for k in rest):.3f}",
                     f"{sum(k.share for k in rest):.1%}", "-"))
    return rows


def batch_rows(result) -> list[tuple[str, ...]]:
    """One row per batch size a bench timed: latency and items per second of each runner."""
    rows = []
    for entry in result.batches:
        runners = entry["runners"]

        def cell(name: str, field: str, spec: str, suffix: str = "", runners=runners) -> str:
            return _fmt(runners.get(name, {}).get(field), spec, suffix)

        rows.append((result.label, str(entry["batch"]), cell("artifact", "ms", ".2f"),
                     cell("artifact", "items_per_s", ".1f"), cell("torch_eager", "items_per_s", ".1f"),
                     cell("onnxruntime", "items_per_s", ".1f"), cell("artifact", "ratio_vs_eager", ".2f", "x"),
                     cell("artifact", "ratio_vs_onnxruntime", ".2f", "x")))
    return rows
