"""bench, report, passes: how artifacts perform, on a page, and what TVM offers."""

from __future__ import annotations

import click

from buildsys.cli.app import cli, echo_table, json_option, only_option, pass_ws
from buildsys.workspace import Workspace


@cli.command()
@click.argument("refs", nargs=-1)
@only_option
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Threads for every runner (TVM, torch, onnxruntime).")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--number", default=10, show_default=True, type=click.IntRange(1, 100000),
              help="Runs per round and runner (fewer when the rounds would pass --budget).")
@click.option("--budget", "budget_s", default=120.0, show_default=True, type=click.FloatRange(1),
              help="Seconds of timed runs per artifact, judged from the warm-up.")
@click.option("--compile/--no-compile", "with_compile", default=None,
              help="torch.compile too [default: classifiers only].")
@click.option("--ort/--no-ort", "with_ort", default=True, show_default=True, help="onnxruntime too.")
@click.option("--batch", "batches", default=None, metavar="N[,N...]",
              help="Batch sizes to time, within the artifact's range [default: a static batch, or a range's "
                   "min, opt and max].")
@click.option("--alone", is_flag=True,
              help="Time each runner alone (its process the only one, all its rounds in a row) instead of in "
                   "interleaved rounds: the reference for the interleaved figures; not recorded.")
@json_option
@pass_ws
@click.pass_context
def bench(ctx, ws: Workspace, refs, filters, threads, rounds, number, budget_s, with_compile, with_ort, batches,
          alone, as_json):
    """Time artifacts against PyTorch eager, torch.compile and onnxruntime (interleaved).

    REFS are keys, prefixes or aliases; without them, the built entries of the matrix.
    Each runner runs in a process of its own; one waiting for its turn is stopped.
    Results are recorded in the registry with the CPU model; `buildsys ls` shows the ratio.
    Exits 1 when an artifact could not be timed (its error is printed).
    """
    from buildsys.ops.bench import bench_refs, parse_batches

    results = bench_refs(ws, refs, filters=filters, threads=threads, rounds=rounds, number=number,
                         budget_s=budget_s, with_compile=with_compile, with_ort=with_ort,
                         batches=parse_batches(batches), mode="alone" if alone else "interleaved",
                         record=not alone, on_status=None if as_json else click.echo)
    artifact_failed = any("ms" not in r.runners.get("artifact", {}) for r in results)
    if as_json:
        from buildsys.ui import jsonout

        click.echo(jsonout.dumps("bench", {"results": [r.to_dict() for r in results]}))
        ctx.exit(1 if artifact_failed else 0)
    from buildsys.ui.tables import BATCH_HEADER, BENCH_HEADER, batch_rows, bench_row

    how = "each runner alone, its rounds in a row" if alone else "interleaved rounds, one process per runner"
    click.echo(f"\nCPU: {results[0].cpu_model}; {threads} thread(s) for every runner; medians of {rounds} "
               f"rounds ({how}); ratios per round, then median")
    echo_table([BENCH_HEADER, *map(bench_row, results)])
    if any(len(r.batches) > 1 or r.batch != 1 for r in results):
        click.echo("\nper batch size (items/s = batch / latency):")
        echo_table([BATCH_HEADER, *(row for r in results for row in batch_rows(r))])
    for r in results:
        for name, figures in r.runners.items():
            if "error" in figures:
                click.echo(f"{r.label}: {name}: {figures['error']}")
    ctx.exit(1 if artifact_failed else 0)


@cli.command()
@click.option("-o", "--out", "out_path", default="report.html", show_default=True, type=click.Path(dir_okay=False))
@click.option("--photo", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Reference photo for detectors [default: scikit-image's astronaut, when installed].")
@click.option("--photo-budget", "photo_budget_s", default=30.0, show_default=True, type=click.FloatRange(0),
              help="Skip the photo for detectors whose one inference takes longer (seconds, build-time estimate).")
@only_option
@pass_ws
def report(ws: Workspace, out_path, photo, photo_budget_s, filters):
    """One static HTML page: the matrix as a table, a latency plot, detectors on a photo."""
    from buildsys.ui.report import make_report

    path, entries, images = make_report(ws, out_path, photo=photo, photo_budget_s=photo_budget_s, filters=filters)
    click.echo(f"{path}: {entries} entries, {images} images")


@cli.command()
@click.argument("pattern", required=False)
def passes(pattern):
    """List the pass names this TVM has (for disabled_passes)."""
    from buildsys.config.passes import matching_pass_names

    for name in matching_pass_names(pattern):
        click.echo(name)


@cli.command()
@click.argument("ref")
@click.option("--runs", default=10, show_default=True, type=click.IntRange(1, 10000),
              help="Instrumented runs; each kernel's fastest run is kept.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="TVM runtime threads.")
@click.option("--top", default=25, show_default=True, type=click.IntRange(1), help="Kernels to print.")
@json_option
@pass_ws
def profile(ws: Workspace, ref, runs, threads, top, as_json):
    """Where REF's time goes: its kernels with calls, time, share and GFLOP/s (thin runtime)."""
    import json

    from buildsys.ops.profile import profile_artifact

    result = profile_artifact(ref, ws.registry, ws.store, runs=runs, threads=threads)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
        return
    from buildsys.ui.tables import PROFILE_HEADER, profile_rows

    click.echo(f"{result.label} ({result.key[:12]}): {result.total_ms:.2f} ms a run (fastest of {runs}, "
               f"instrumented), {result.kernel_ms:.2f} ms in {len(result.kernels)} kernels")
    echo_table([PROFILE_HEADER, *profile_rows(result, top)])
