"""plan, build, tune, log: the matrix and its builds."""

from __future__ import annotations

import json

import click

from buildsys.cli.app import cli, json_option, only_option, pass_ws, progress_options, shard_option
from buildsys.workspace import Workspace


@cli.command()
@only_option
@click.option("--force", is_flag=True, help="Plan to rebuild even what is cached.")
@click.option("--all", "include_skipped", is_flag=True, help="Include entries whose model is marked skip.")
@shard_option
@click.option("--deep", is_flag=True,
              help="Also re-export each cached entry (imports torch and TVM; seconds per model) and compare "
                   "the exported graph and weights with the artifact's: says which entries drifted.")
@json_option
@pass_ws
def plan(ws: Workspace, filters, force, include_skipped, shard, deep, as_json):
    """Print what would build and why."""
    from buildsys.format.status import Action

    jobs = ws.plan(filters=filters, force=force, include_skipped=include_skipped, shard=shard)
    if deep:
        from buildsys.pipeline.drift import find_drift

        jobs = find_drift(jobs, ws.store, ws.registry,
                          on_job=lambda job: click.echo(f"checking {job.spec.describe()} ...", err=True))
    counts = {a.value: sum(1 for job in jobs if job.action == a) for a in Action}
    if as_json:
        from buildsys.ui import jsonout

        click.echo(jsonout.dumps("plan", {"entries": [jsonout.plan_entry(job) for job in jobs], "counts": counts}))
        return
    width = max((len(job.spec.describe()) for job in jobs), default=0)
    for job in jobs:
        click.echo(f"{job.action:6}  {job.key[:12]}  {job.spec.describe():{width}}  {job.reason}")
    click.echo(f"{len(jobs)} entries: {counts['build']} to build, {counts['cached']} cached, "
               f"{counts['skip']} skipped")


@cli.command()
@only_option
@click.option("--force", is_flag=True, help="Rebuild even what is cached.")
@click.option("--all", "include_skipped", is_flag=True, help="Also build entries whose model is marked skip.")
@click.option("--jobs", "-j", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Build this many entries at once, each in its own process.")
@shard_option
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              envvar="BUILDSYS_BUILD_TIMEOUT", show_envvar=True,
              help="Stop an entry's build after this long and record it as failed (default 7200).")
@click.option("--check-repro", "repro_ref", default=None, metavar="REF",
              help="Rebuild REF (key, prefix or alias) aside, publish nothing, and compare it byte for byte.")
@progress_options
@json_option
@pass_ws
def build(ws: Workspace, filters, force, include_skipped, jobs, shard, timeout_s, repro_ref, progress_mode, quiet,
          as_json):
    """Build the matrix (what is cached is not rebuilt).

    Each build writes a log file under the store's logs/ (its path is on the run's registry
    row: `buildsys log KEY`)."""
    if repro_ref is not None:
        _check_repro(ws, repro_ref, as_json)
        return
    from buildsys.format.status import Outcome
    from buildsys.pipeline.runner import run_builds
    from buildsys.ui.progress import make_display

    planned = ws.plan(filters=filters, force=force, include_skipped=include_skipped, shard=shard)
    with make_display("quiet" if quiet else progress_mode, planned, err=as_json) as display:
        report = run_builds(planned, ws.store, ws.registry, jobs=jobs, on_event=display,
                            **({"timeout_s": timeout_s} if timeout_s is not None else {}))
    summary = ("done: " + ", ".join(f"{report.count(o)} {o}" for o in Outcome))
    if as_json:
        from buildsys.ui import jsonout

        click.echo(summary, err=True)
        click.echo(jsonout.dumps("build", {"results": [jsonout.build_result(r) for r in report.results],
                                           "counts": {o.value: report.count(o) for o in Outcome}}))
    else:
        click.echo(summary)
    report.raise_for_failures()


def _check_repro(ws: Workspace, ref: str, as_json: bool) -> None:
    from buildsys.ops.repro import check_repro_ref

    report = check_repro_ref(ws, ref, on_start=lambda text: click.echo(text, err=as_json))
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        for name, entry in report["files"].items():
            click.echo(f"  {name}: {'identical' if entry['identical'] else 'DIFFERS: ' + entry['why']}")
        volatile = ", ".join(f"{k} ({why})" for k, why in report["manifest"]["volatile"].items())
        click.echo(f"  manifest.json: differs in volatile fields only: {volatile}" if not report["manifest"]["differing"]
                   else f"  manifest.json: DIFFERS in {', '.join(report['manifest']['differing'])}; volatile: {volatile}")
        click.echo("reproducible" if report["reproducible"] else "NOT reproducible")
    if not report["reproducible"]:
        from buildsys.errors import BuildError

        raise BuildError(f"{report['key'][:12]} is not reproducible: see above")


@cli.command()
@only_option
@click.option("--list", "list_only", is_flag=True, help="List the tuning databases and stop.")
@progress_options
@pass_ws
def tune(ws: Workspace, filters, list_only, progress_mode, quiet):
    """Tune the entries that set `tuning` (resumable; what is tuned is not tuned again).

    Builds apply the records without tuning; `make tune` runs this for the default matrix.
    """
    if list_only:
        from buildsys.format.target import Target

        rows = ws.registry.tuning_databases()
        if not rows:
            click.echo("no tuning databases yet")
        for r in rows:
            click.echo(f"{r.scope}  {Target(r.target).cli()}  tvm {r.tvm_version}  {r.workloads} workloads  "
                       f"{r.records} records  {r.digest[:19]}  updated {r.updated_at:%Y-%m-%d %H:%M}")
        return
    from buildsys.pipeline.runner import tune_entries
    from buildsys.ui.progress import make_display

    tuned = [job for job in ws.plan(filters=filters) if job.spec.tuning is not None]
    if not tuned:
        click.echo("no matrix entry sets `tuning` (see README: tuning)")
        return
    for job in tuned:
        if not job.tune_first:
            click.echo(f"{job.spec.describe()}: tuned already ({job.key[:12]} is its key)")
    todo = [job for job in tuned if job.tune_first]
    with make_display("quiet" if quiet else progress_mode, todo, tune_only=True) as display:
        report = tune_entries(todo, ws.store, ws.registry, on_event=display)
    report.raise_for_failures(tuning=True)


@cli.command("log")
@click.argument("ref")
@click.option("--path", "path_only", is_flag=True, help="Print the log file's path only.")
@click.option("--tail", "-n", "lines", default=None, type=click.IntRange(1), help="Only the last N lines.")
@pass_ws
def log_(ws: Workspace, ref, path_only, lines):
    """Print the log of REF's latest build run (alias, key or key prefix; failed builds too)."""
    from buildsys.pipeline.runlog import read_run_log

    run = ws.registry.last_run(ref)
    if path_only:
        click.echo(read_run_log(run, path_only=True))
        return
    for line in read_run_log(run, lines=lines):
        click.echo(line, nl=False)
