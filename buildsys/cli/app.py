"""The ``buildsys`` group, the options its commands share, and ``main``: errors -> exit codes."""

from __future__ import annotations

import click

from buildsys.errors import BuildsysError, Interrupted, StoreError
from buildsys.workspace import Workspace

pass_ws = click.make_pass_decorator(Workspace)

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON document (schema: buildsys/schemas/); progress goes to stderr.")

only_option = click.option("--only", "filters", multiple=True, metavar="FIELD=VALUE",
                           help="Keep matching entries (model, input_size, target, opt_level, task, batch, key prefix); "
                                "repeat a field for OR. Model and target accept globs.")

shard_option = click.option("--shard", default=None, metavar="I/N",
                            help="Only the I-th of N deterministic slices of the matrix (by entry key), "
                                 "for CI jobs that split a release.")


def progress_options(command):
    command = click.option("--quiet", "-q", "quiet", is_flag=True,
                           help="Failures and the summary only (same as --progress quiet).")(command)
    return click.option("--progress", "progress_mode", type=click.Choice(["auto", "rich", "plain", "quiet"]),
                        default="auto", show_default=True,
                        help="rich: a live view; plain: a line per event; auto: rich on a terminal, plain "
                             "elsewhere (CI, pipes). Each build's full output goes to its log file.")(command)


def echo_table(rows: list[tuple[str, ...]]) -> None:
    """Rows of cells, left-aligned in columns; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", default="builds.yaml", show_default=True, help="The build matrix.")
@click.option("--store", default=None, help="Store directory [env BUILDSYS_STORE; default artifacts/].")
@click.option("--registry", default=None, help="SQLAlchemy URL [env BUILDSYS_REGISTRY; default SQLite in the store].")
@click.option("--remote", default=None, metavar="s3://BUCKET/PREFIX",
              help="S3-compatible object storage behind the store [env BUILDSYS_REMOTE; endpoint: "
                   "BUILDSYS_S3_ENDPOINT].")
@click.version_option(package_name="buildsys")
@click.pass_context
def cli(ctx, config, store, registry, remote):
    """Build PyTorch models into prebuilt TVM executables and load them by key."""
    ctx.obj = Workspace(config, store, registry, remote)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="buildsys", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return Interrupted.exit_code
    except click.ClickException as exc:
        exc.show()
        return 2
    except BuildsysError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except OSError as exc:
        from buildsys.artifacts.space import describe_os_error, is_storage_error

        if not is_storage_error(exc):
            raise
        # a last resort: every store and registry write words its own failure first
        click.echo(f"error: {describe_os_error(exc)}", err=True)
        return StoreError.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    return 0
