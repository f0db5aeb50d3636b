"""export, import, push, keygen: artifacts leaving this store, and arriving in another."""

from __future__ import annotations

import click

from buildsys.cli.app import cli, pass_ws
from buildsys.workspace import Workspace


@cli.command(name="export")
@click.argument("refs", nargs=-1)
@click.option("--all", "export_all", is_flag=True, help="Every registered artifact.")
@click.option("-o", "--out", "out_path", required=True, type=click.Path(),
              help="A .tar file (a release: artifacts + signed manifest) or a directory (one bundle "
                   "directory per artifact).")
@click.option("--sign-key", default=None, type=click.Path(dir_okay=False),
              help="ed25519 private key (PEM) to sign with [env BUILDSYS_SIGNING_KEY]; see `buildsys keygen`.")
@click.option("--allow-unverified", is_flag=True,
              help="Sign artifacts that were never verified against PyTorch (built for a machine nothing "
                   "here could run); refused without it.")
@pass_ws
def export_cmd(ws: Workspace, refs, export_all, out_path, sign_key, allow_unverified):
    """Copy artifacts out: a release tar for `buildsys import`, or bundle directories to load directly."""
    from buildsys.distribution.outbound import export_artifacts

    for line in export_artifacts(ws, refs, export_all=export_all, out_path=out_path, sign_key=sign_key,
                                 allow_unverified=allow_unverified):
        click.echo(line)


@cli.command(name="import")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--public-key", default=None, type=click.Path(dir_okay=False),
              help="ed25519 public key (hex) the release must be signed with [env BUILDSYS_PUBLIC_KEY].")
@click.option("--no-aliases", is_flag=True, help="Do not set the aliases the release carries.")
@pass_ws
def import_cmd(ws: Workspace, archive, public_key, no_aliases):
    """Verify a release tar and register its artifacts in this store and registry."""
    from buildsys.distribution.release import import_release
    from buildsys.artifacts.signing import load_public_key

    key = load_public_key(public_key)
    imported = import_release(archive, ws.store, ws.registry, key, set_aliases=not no_aliases)
    click.echo(f"{archive}: {len(imported)} artifacts imported"
               + (", signature verified" if key is not None else " (no public key configured: signature not checked)"))
    for k in imported:
        click.echo(f"  {k}")


@cli.command()
@click.argument("refs", nargs=-1)
@pass_ws
def push(ws: Workspace, refs):
    """Upload artifacts' objects to the remote store (default: every registered artifact)."""
    from buildsys.artifacts.remote import push_artifacts

    records = ws.records(refs)
    uploaded, present = push_artifacts(records, ws.store)
    click.echo(f"{ws.store.remote.url}: {uploaded} objects uploaded, {present} already there "
               f"({len(records)} artifacts)")


@cli.command()
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Private key file to create (the public key goes to FILE.pub).")
def keygen(out_path):
    """Create an ed25519 key pair for signing releases."""
    from buildsys.artifacts.signing import generate_keypair

    private, public = generate_keypair(out_path)
    click.echo(f"private key: {private} (keep it secret; BUILDSYS_SIGNING_KEY)\npublic key: {public} "
               "(BUILDSYS_PUBLIC_KEY)")
