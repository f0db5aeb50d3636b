"""ls, show, run, verify, gc, diff, alias, db: what is in the store and the registry."""

from __future__ import annotations

import json

import click

from buildsys.cli.app import cli, echo_table, json_option, pass_ws
from buildsys.workspace import Workspace


@cli.command(name="ls")
@json_option
@pass_ws
def list_artifacts(ws: Workspace, as_json):
    """List the registered artifacts."""
    records = ws.registry.list()
    if as_json:
        from buildsys.ui import jsonout

        click.echo(jsonout.dumps("ls", {"artifacts": [jsonout.artifact(r) for r in records]}))
        return
    if not records:
        click.echo("no artifacts yet; run `make build-all` or `buildsys build`")
        return
    from buildsys.ui.tables import ARTIFACT_HEADER, artifact_row

    echo_table([ARTIFACT_HEADER, *map(artifact_row, records)])


@cli.command()
@click.argument("ref")
@json_option
@pass_ws
def show(ws: Workspace, ref, as_json):
    """Print an artifact's manifest (KEY, key prefix or alias), with what the registry adds.

    Without --json: the manifest with a "registry" field; with it: {schema, manifest, registry}."""
    from buildsys.artifacts import manifest as manifest_format

    record = ws.registry.resolve(ref)
    manifest = manifest_format.read_stored(ws.store, record)
    registry = {"aliases": list(record.aliases), "status": record.status,
                "created_at": record.created_at.isoformat(timespec="seconds"), "metrics": dict(record.metrics)}
    if as_json:
        from buildsys.ui import jsonout

        click.echo(jsonout.dumps("show", {"manifest": manifest, "registry": registry}))
        return
    click.echo(json.dumps({**manifest, "registry": registry}, indent=2, sort_keys=True))


@cli.command()
@click.argument("ref")
@click.option("--input", "input_paths", multiple=True, metavar="[NAME=]PATH",
              help="A .npy array per input, in the signature's order or as NAME=PATH; repeat for each input "
                   "(default: seeded random inputs).")
@click.option("--image", "image_path", type=click.Path(exists=True, dir_okay=False),
              help="A photo (any format Pillow reads) for a detector: resized to the input, detections printed.")
@click.option("--score-threshold", default=0.9, show_default=True, type=click.FloatRange(0, 1),
              help="Keep detections scoring above this.")
@click.option("--max-detections", default=100, show_default=True, type=click.IntRange(1))
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="With --image: save an annotated copy.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random input when neither is given.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="TVM runtime threads.")
@click.option("--top", default=5, show_default=True, help="Top classes to print for classifiers.")
@pass_ws
def run(ws: Workspace, ref, input_paths, image_path, score_threshold, max_detections, out_path, seed, threads, top):
    """Load an artifact with the thin runtime and print its outputs (or detections on a photo)."""
    from buildsys.errors import UsageError
    from buildsys.ui.runs import describe_detections, describe_outputs, run_artifact

    if out_path and not image_path:
        raise UsageError("--out draws on the photo given with --image")
    result = run_artifact(ref, ws.registry, ws.store, threads=threads, input_paths=input_paths, image_path=image_path,
                          seed=seed, score_threshold=score_threshold, max_detections=max_detections)
    lines = (describe_detections(result, image_path, score_threshold) if image_path
             else describe_outputs(result, top))
    for line in lines:
        click.echo(line)
    if out_path:
        from buildsys.ui.annotate import draw_detections

        draw_detections(result.image, result.detections, out_path)
        click.echo(f"annotated image: {out_path}")


@cli.command()
@json_option
@pass_ws
def verify(ws: Workspace, as_json):
    """Re-hash every stored file against the registry (exit 5 on any problem)."""
    from buildsys.ops.audit import audit_store

    audit = audit_store(ws.registry, ws.store)
    if as_json:
        from buildsys.ui import jsonout

        click.echo(jsonout.dumps("verify", audit.to_dict()))
    else:
        for p in audit.problems:
            found = f"found {p['found']}" if p["found"] else f"missing {ws.store.object_path(p['expected'])}"
            click.echo(f"BAD  {p['key'][:12]} {p['file']}: expected {p['expected']}, {found}", err=True)
        click.echo(f"checked {audit.checked} files: {len(audit.problems)} problems; "
                   f"{audit.unreferenced} unreferenced objects")
    audit.raise_for_problems()


@cli.command()
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@click.option("--grace", default=3600, show_default=True, type=click.IntRange(0),
              help="Seconds an unreferenced object is kept (a running build writes its row last).")
@click.option("--older-than", "older_than", default=None, metavar="AGE",
              help="Also remove artifacts built longer ago than AGE (e.g. 30d, 12h), unless an alias names them.")
@click.option("--not-in-matrix", is_flag=True,
              help="Also remove artifacts the current builds.yaml does not produce, unless an alias names them.")
@pass_ws
def gc(ws: Workspace, dry_run, grace, older_than, not_in_matrix):
    """Clean up: staging dirs and unfinished runs of crashed builds, unreferenced objects; with
    --older-than / --not-in-matrix, artifacts past retention (never an aliased one)."""
    from buildsys.ops.retention import collect_garbage

    for line in collect_garbage(ws, dry_run=dry_run, grace_s=grace, older_than=older_than,
                                not_in_matrix=not_in_matrix):
        click.echo(line)


@cli.command()
@click.argument("first")
@click.argument("second")
@json_option
@pass_ws
def diff(ws: Workspace, first, second, as_json):
    """What differs between two artifacts: spec, versions, tuning, pass trace, digests, parity, latency."""
    from buildsys.ops.diff import SECTIONS, diff_refs

    (ra, rb), differences = diff_refs(ws, first, second)
    if as_json:
        click.echo(json.dumps({"a": ra.key, "b": rb.key, "differences": {
            section: [{"field": f, "a": x, "b": y} for f, x, y in rows] for section, rows in differences.items()}},
            indent=2, sort_keys=True, default=str))
        return
    click.echo(f"A {ra.key[:12]} {ra.model} {ra.input_size}\nB {rb.key[:12]} {rb.model} {rb.input_size}")
    for section in SECTIONS:
        rows = differences.get(section)
        if not rows:
            click.echo(f"{section}: same")
            continue
        click.echo(f"{section}:")
        for field, x, y in rows:
            click.echo(f"  {field}: {x!r} -> {y!r}")


@cli.group()
def alias():
    """Name artifacts (name -> key)."""


@alias.command(name="set")
@click.argument("name")
@click.argument("ref")
@pass_ws
def alias_set(ws: Workspace, name, ref):
    """Point NAME at REF (key, prefix or another alias)."""
    record = ws.registry.set_alias(name, ref)
    click.echo(f"{record.name} -> {record.key}")


@alias.command(name="rm")
@click.argument("name")
@pass_ws
def alias_rm(ws: Workspace, name):
    """Remove alias NAME."""
    ws.registry.remove_alias(name)
    click.echo(f"removed {name}")


@alias.command(name="ls")
@pass_ws
def alias_ls(ws: Workspace):
    """List aliases."""
    for a in ws.registry.aliases():
        click.echo(f"{a.name} -> {a.key}")


@cli.group()
def db():
    """The registry database: schema migrations (Alembic)."""


@db.command(name="upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_ws
def db_upgrade(ws: Workspace, revision):
    """Apply the registry's migrations (SQLite or any SQLAlchemy URL, e.g. PostgreSQL)."""
    from buildsys.artifacts.registry.db import upgrade_url

    url, before, after = upgrade_url(ws.locations.registry_url, revision)
    click.echo(f"{url}: {before or 'empty'} -> {after}")


@db.command(name="current")
@pass_ws
def db_current(ws: Workspace):
    """Print the registry's schema revision and the newest this buildsys knows."""
    from buildsys.artifacts.registry.db import HEAD_REVISION, current_revision_of

    url, revision = current_revision_of(ws.locations.registry_url)
    click.echo(f"{url}: {revision or 'empty'} (newest: {HEAD_REVISION})")
