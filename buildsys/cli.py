"""``buildsys`` command line: argument parsing and printing only; the work is in the library."""

from __future__ import annotations

import json
import sys

import click

from .errors import BuildsysError, UsageError
from .locations import resolve_locations


class Context:
    def __init__(self, config: str, store: str | None, registry: str | None, remote: str | None = None):
        self.config_path = config
        self.locations = resolve_locations(store, registry, remote)
        self._registry = None
        self._store = None

    @property
    def registry(self):
        if self._registry is None:
            from .registry import Registry
            self._registry = Registry(self.locations.registry_url)
        return self._registry

    @property
    def store(self):
        if self._store is None:
            self._store = self.locations.store()
        return self._store

    def specs(self):
        from .spec import load_specs
        return load_specs(self.config_path)


pass_ctx = click.make_pass_decorator(Context)

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON document (schema: buildsys/schemas/); progress goes to stderr.")

only_option = click.option("--only", "filters", multiple=True, metavar="FIELD=VALUE",
                           help="Keep matching entries (model, input_size, target, opt_level, task, key prefix); "
                                "repeat a field for OR. Model and target accept globs.")


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
    ctx.obj = Context(config, store, registry, remote)


def _plan(c: Context, filters, force, include_skipped, shard=None):
    from .plan import parse_shard, plan_builds
    return plan_builds(c.specs(), c.registry, c.store, force=force, filters=filters,
                       include_skipped=include_skipped, shard=parse_shard(shard))


def progress_options(command):
    command = click.option("--quiet", "-q", "quiet", is_flag=True,
                           help="Failures and the summary only (same as --progress quiet).")(command)
    return click.option("--progress", "progress_mode", type=click.Choice(["auto", "rich", "plain", "quiet"]),
                        default="auto", show_default=True,
                        help="rich: a live view; plain: a line per event; auto: rich on a terminal, plain "
                             "elsewhere (CI, pipes). Each build's full output goes to its log file.")(command)


shard_option = click.option("--shard", default=None, metavar="I/N",
                            help="Only the I-th of N deterministic slices of the matrix (by entry key), "
                                 "for CI jobs that split a release.")


@cli.command()
@only_option
@click.option("--force", is_flag=True, help="Plan to rebuild even what is cached.")
@click.option("--all", "include_skipped", is_flag=True, help="Include entries whose model is marked skip.")
@shard_option
@click.option("--deep", is_flag=True,
              help="Also re-export each cached entry (imports torch and TVM; seconds per model) and compare "
                   "the exported graph and weights with the artifact's: says which entries drifted.")
@json_option
@pass_ctx
def plan(c: Context, filters, force, include_skipped, shard, deep, as_json):
    """Print what would build and why."""
    entries = _plan(c, filters, force, include_skipped, shard)
    if deep:
        from .builder import find_drift
        entries = find_drift(entries, c.store, c.registry,
                             on_entry=lambda e: click.echo(f"checking {e.spec.describe()} ...", err=True))
    counts = {a: sum(1 for e in entries if e.action == a) for a in ("build", "cached", "skip")}
    if as_json:
        from . import jsonout
        click.echo(jsonout.dumps("plan", {"entries": [jsonout.plan_entry(e) for e in entries], "counts": counts}))
        return
    width = max((len(e.spec.describe()) for e in entries), default=0)
    for e in entries:
        click.echo(f"{e.action:6}  {e.key[:12]}  {e.spec.describe():{width}}  {e.reason}")
    click.echo(f"{len(entries)} entries: {counts['build']} to build, {counts['cached']} cached, "
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
@pass_ctx
def build(c: Context, filters, force, include_skipped, jobs, shard, timeout_s, repro_ref, progress_mode, quiet,
          as_json):
    """Build the matrix (what is cached is not rebuilt).

    Each build writes a log file under the store's logs/ (its path is on the run's registry
    row: `buildsys log KEY`)."""
    from .builder import run_builds
    from .progress import make_display

    if repro_ref is not None:
        _check_repro(c, repro_ref, as_json)
        return

    entries = _plan(c, filters, force, include_skipped, shard)
    with make_display("quiet" if quiet else progress_mode, entries, err=as_json) as display:
        report = run_builds(entries, c.store, c.registry, jobs=jobs, on_event=display,
                            **({"timeout_s": timeout_s} if timeout_s is not None else {}))
    summary = (f"done: {report.count('built')} built, {report.count('cached')} cached, "
               f"{report.count('skipped')} skipped, {report.count('failed')} failed")
    if as_json:
        from . import jsonout
        click.echo(summary, err=True)
        click.echo(jsonout.dumps("build", {"results": [jsonout.build_result(r) for r in report.results],
                                           "counts": {s: report.count(s) for s in ("built", "cached", "skipped",
                                                                                   "failed")}}))
    else:
        click.echo(summary)
    if report.failed:
        click.echo("failed entries are recorded with their error and log; `buildsys plan` shows them, "
                   "`buildsys log KEY` prints a log", err=True)
        sys.exit(3)


def _check_repro(c: Context, ref: str, as_json: bool) -> None:
    from .plan import plan_builds
    from .repro import check_repro
    from .spec import spec_from_dict

    record = c.registry.resolve(ref)
    matrix = {e.key: e.spec for e in plan_builds(c.specs(), c.registry, c.store, include_skipped=True)}
    spec = matrix.get(record.key) or spec_from_dict(record.spec)
    if spec.model.weights.source == "file" and record.key not in matrix:
        raise UsageError(f"{record.key[:12]} was built from a weights file the current matrix does not name")
    click.echo(f"rebuilding {spec.describe()} ({record.key[:12]}) aside ...", err=as_json)
    report = check_repro(record, spec, c.store)
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
        sys.exit(3)


@cli.command()
@only_option
@click.option("--list", "list_only", is_flag=True, help="List the tuning databases and stop.")
@progress_options
@pass_ctx
def tune(c: Context, filters, list_only, progress_mode, quiet):
    """Tune the entries that set `tuning` (resumable; what is tuned is not tuned again).

    Builds apply the records without tuning; `make tune` runs this for the default matrix.
    """
    if list_only:
        rows = c.registry.tuning_databases()
        if not rows:
            click.echo("no tuning databases yet")
        for r in rows:
            from .targets import format_cli_target
            click.echo(f"{r.scope}  {format_cli_target(r.target)}  tvm {r.tvm_version}  {r.workloads} workloads  "
                       f"{r.records} records  {r.digest[:19]}  updated {r.updated_at:%Y-%m-%d %H:%M}")
        return
    from .builder import tune_entries
    from .plan import plan_builds
    from .progress import make_display

    entries = [e for e in plan_builds(c.specs(), c.registry, c.store, filters=filters) if e.spec.tuning is not None]
    if not entries:
        click.echo("no matrix entry sets `tuning` (see README: tuning)")
        return
    for entry in entries:
        if not entry.tune_first:
            click.echo(f"{entry.spec.describe()}: tuned already ({entry.key[:12]} is its key)")
    todo = [e for e in entries if e.tune_first]
    with make_display("quiet" if quiet else progress_mode, todo, tune_only=True) as display:
        report = tune_entries(todo, c.store, c.registry, on_event=display)
    if report.failed:
        click.echo("tuning failed for some entries; the records made so far are kept (run again to resume)",
                   err=True)
        sys.exit(3)


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
@json_option
@pass_ctx
def bench(c: Context, refs, filters, threads, rounds, number, budget_s, with_compile, with_ort, as_json):
    """Time artifacts against PyTorch eager, torch.compile and onnxruntime (interleaved).

    REFS are keys, prefixes or aliases; without them, the built entries of the matrix.
    Results are recorded in the registry with the CPU model; `buildsys ls` shows the ratio.
    """
    from .bench import configure_threads

    configure_threads(threads)  # before TVM's thread pool or torch's start
    from .bench import bench_artifact, metrics_of
    from .plan import CACHED, plan_builds
    from .runtime import load_artifact
    from .spec import spec_from_dict

    matrix = {}
    if not refs or filters:
        matrix = {e.key: e.spec for e in plan_builds(c.specs(), c.registry, c.store, filters=filters)
                  if e.action == CACHED}
    records = [c.registry.resolve(ref) for ref in refs] if refs else [c.registry.get(k) for k in matrix]
    if not records:
        raise UsageError("nothing to benchmark: build first, or name artifacts (KEY, prefix or alias)")
    results = []
    for record in records:
        spec = matrix.get(record.key)
        if spec is None:
            spec = spec_from_dict(record.spec)
            if spec.model.weights.source == "file":
                raise UsageError(f"{record.key[:12]} was built from a weights file that the current matrix "
                                 "does not name; bench it with the builds.yaml that built it")
        label = f"{spec.describe()} ({record.key[:12]})"
        if not as_json:
            click.echo(f"{label}: loading ...")
        predictor = load_artifact(record.key, registry=c.registry, store=c.store)
        result = bench_artifact(record, spec, predictor, threads=threads, rounds=rounds, number=number,
                                budget_s=budget_s, with_compile=with_compile, with_ort=with_ort,
                                on_status=None if as_json else (lambda text, l=label: click.echo(f"{l}: {text}")))
        c.registry.add_benchmark(record.key, cpu_model=result.cpu_model, threads=threads, rounds=rounds,
                                 results=result.to_dict())
        c.registry.add_metrics(record.key, metrics_of(result))
        results.append(result)
    if as_json:
        from . import jsonout
        click.echo(jsonout.dumps("bench", {"results": [r.to_dict() for r in results]}))
        return
    click.echo(f"\nCPU: {results[0].cpu_model}; {threads} thread(s) for every runner; medians of {rounds} "
               f"interleaved rounds; ratios per round, then median")
    rows = [("ARTIFACT", "EAGER ms", "TVM ms", "TVM/EAGER", "COMPILE ms", "ORT ms", "ORT/EAGER", "TVM/ORT",
             "TVM max_rel")]
    for r in results:
        def cell(name, field="ms", fmt=".2f", runners=r.runners):
            value = runners.get(name, {}).get(field)
            return "-" if value is None else format(value, fmt)
        rows.append((r.label, cell("torch_eager"), cell("artifact"), cell("artifact", "ratio_vs_eager", ".2f") + "x",
                     cell("torch_compile"), cell("onnxruntime"), cell("onnxruntime", "ratio_vs_eager", ".2f") + "x",
                     cell("artifact", "ratio_vs_onnxruntime", ".2f") + "x", cell("artifact", "max_rel_vs_eager", ".1e")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for r in results:
        for name, figures in r.runners.items():
            if "error" in figures:
                click.echo(f"{r.label}: {name}: {figures['error']}")


def _fmt(value, spec):
    return format(value, spec) if value is not None else "-"


@cli.command(name="ls")
@json_option
@pass_ctx
def list_artifacts(c: Context, as_json):
    """List the registered artifacts."""
    from .targets import format_cli_target
    if as_json:
        from . import jsonout
        click.echo(jsonout.dumps("ls", {"artifacts": [jsonout.artifact(r) for r in c.registry.list()]}))
        return
    rows = [("KEY", "MODEL", "SIZE", "TARGET", "OPT", "STATUS", "MAX_REL", "VS_EAGER", "VS_ORT", "ALIASES")]
    for r in c.registry.list():
        # a `buildsys bench` figure when there is one; else the build-time estimate, marked ~
        ratio = r.metrics.get("bench_ratio_vs_eager")
        shown = f"{ratio:.2f}x" if ratio is not None else (
            f"~{r.metrics['ratio_vs_eager']:.1f}x" if r.metrics.get("ratio_vs_eager") is not None else "-")
        vs_ort = r.metrics.get("bench_ratio_vs_onnxruntime")
        rows.append((r.key[:12], r.model, r.input_size, format_cli_target(r.target), f"O{r.opt_level}", r.status,
                     _fmt(r.parity_max_rel, ".1e"), shown, f"{vs_ort:.2f}x" if vs_ort is not None else "-",
                     ",".join(r.aliases)))
    if len(rows) == 1:
        click.echo("no artifacts yet; run `make build-all` or `buildsys build`")
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@cli.command("log")
@click.argument("ref")
@click.option("--path", "path_only", is_flag=True, help="Print the log file's path only.")
@click.option("--tail", "-n", "lines", default=None, type=click.IntRange(1), help="Only the last N lines.")
@pass_ctx
def log_(c: Context, ref, path_only, lines):
    """Print the log of REF's latest build run (alias, key or key prefix; failed builds too)."""
    import socket

    from .runlog import tail

    run = c.registry.last_run(ref)
    where = f"run {run.id} of {run.key[:12]} ({run.label}, {run.status}, started {run.started_at:%Y-%m-%d %H:%M:%S})"
    if not run.log_path:
        raise UsageError(f"{where} has no log file (built before build logs were kept)")
    if path_only:
        click.echo(run.log_path)
        return
    try:
        if lines is None:
            with open(run.log_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    click.echo(line, nl=False)
        else:
            for line in tail(run.log_path, lines):
                click.echo(line)
    except FileNotFoundError:
        elsewhere = f" (it was written on {run.host})" if run.host != socket.gethostname() else ""
        raise UsageError(f"{where}: its log {run.log_path} is gone{elsewhere}") from None


@cli.command()
@click.argument("ref")
@json_option
@pass_ctx
def show(c: Context, ref, as_json):
    """Print an artifact's manifest (KEY, key prefix or alias), with what the registry adds.

    Without --json: the manifest with a "registry" field; with it: {schema, manifest, registry}."""
    from . import manifest as manifest_format
    record = c.registry.resolve(ref)
    data = c.store.read_verified(record.manifest_digest, key=record.key, name="manifest.json")
    manifest = manifest_format.loads(data, key=record.key)
    registry = {"aliases": list(record.aliases), "status": record.status,
                "created_at": record.created_at.isoformat(timespec="seconds"), "metrics": dict(record.metrics)}
    if as_json:
        from . import jsonout
        click.echo(jsonout.dumps("show", {"manifest": manifest, "registry": registry}))
        return
    click.echo(json.dumps({**manifest, "registry": registry}, indent=2, sort_keys=True))


@cli.command()
@click.argument("ref")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False),
              help="A .npy array of the artifact's input shape (default: seeded random input).")
@click.option("--image", "image_path", type=click.Path(exists=True, dir_okay=False),
              help="A photo (any format Pillow reads) for a detector: resized to the input, detections printed.")
@click.option("--score-threshold", default=0.9, show_default=True, type=click.FloatRange(0, 1),
              help="Keep detections scoring above this.")
@click.option("--max-detections", default=100, show_default=True, type=click.IntRange(1))
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="With --image: save an annotated copy.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random input when neither is given.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="TVM runtime threads.")
@click.option("--top", default=5, show_default=True, help="Top classes to print for classifiers.")
@pass_ctx
def run(c: Context, ref, input_path, image_path, score_threshold, max_detections, out_path, seed, threads, top):
    """Load an artifact with the thin runtime and print its outputs (or detections on a photo)."""
    import time

    import numpy as np

    from .runtime import load_artifact
    if out_path and not image_path:
        raise UsageError("--out draws on the photo given with --image")
    start = time.perf_counter()
    predictor = load_artifact(ref, registry=c.registry, store=c.store, num_threads=threads)
    loaded = time.perf_counter()
    head = f"artifact {predictor.key[:12]} ({predictor.manifest['label']}): loaded in {loaded - start:.2f}s"
    if image_path:
        from .annotate import draw_detections, read_image
        if predictor.task != "detection":
            raise UsageError(f"--image needs a detector; {ref} is a {predictor.task} artifact")
        image = read_image(image_path)
        detections = predictor.detect(image, score_threshold, max_detections)
        click.echo(f"{head}, ran in {(time.perf_counter() - loaded) * 1e3:.1f} ms; {len(detections)} detections "
                   f"above {score_threshold} in {image_path} ({image.shape[1]}x{image.shape[0]})")
        for i in range(len(detections)):
            box = ", ".join(f"{v:.1f}" for v in detections.boxes[i])
            mask = "" if detections.masks is None else f"  mask {int((detections.masks[i] > 0.5).sum())} px"
            points = "" if detections.keypoints is None else "  keypoints " + " ".join(
                f"({x:.0f},{y:.0f})" for x, y, _ in detections.keypoints[i])
            click.echo(f"  {detections.label_name(i):20} {detections.scores[i]:.3f}  [{box}]{mask}{points}")
        if out_path:
            draw_detections(image, detections, out_path)
            click.echo(f"annotated image: {out_path}")
        return
    if input_path:
        try:
            x = np.load(input_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--input {input_path}: not a .npy array ({exc})") from None
    else:
        x = np.random.default_rng(seed).random(predictor.input_shape, dtype=np.float32)
    try:
        outputs = predictor.run(x)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    click.echo(f"{head}, ran in {(time.perf_counter() - loaded) * 1e3:.1f} ms")
    for i, out in enumerate(outputs):
        click.echo(f"output {i}: shape {tuple(out.shape)} {out.dtype} min {out.min():.4g} max {out.max():.4g} "
                   f"mean {out.mean():.4g}" if out.size else f"output {i}: shape {tuple(out.shape)} (empty)")
        if predictor.task == "classification" and out.ndim == 2:
            order = np.argsort(-out[0])[:top]
            click.echo("  top: " + ", ".join(f"{int(k)}:{out[0][k]:.4g}" for k in order))


@cli.command()
@json_option
@pass_ctx
def verify(c: Context, as_json):
    """Re-hash every stored file against the registry (exit 5 on any problem)."""
    checked, problems = 0, []
    referenced = set()
    for key, f in c.registry.file_digests():
        checked += 1
        referenced.add(f.digest)
        actual = c.store.check(f.digest)
        if actual != f.digest:
            problems.append({"key": key, "file": f.name, "expected": f.digest, "found": actual})
    orphans = [d for d in c.store.iter_objects() if d not in referenced]
    if as_json:
        from . import jsonout
        click.echo(jsonout.dumps("verify", {"checked": checked, "problems": problems,
                                            "unreferenced_objects": len(orphans), "ok": not problems}))
    else:
        for p in problems:
            found = f"found {p['found']}" if p["found"] else f"missing {c.store.object_path(p['expected'])}"
            click.echo(f"BAD  {p['key'][:12]} {p['file']}: expected {p['expected']}, {found}", err=True)
        click.echo(f"checked {checked} files: {len(problems)} problems; {len(orphans)} unreferenced objects")
    if problems:
        sys.exit(5)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@click.option("--grace", default=3600, show_default=True, type=click.IntRange(0),
              help="Seconds an unreferenced object is kept (a running build writes its row last).")
@click.option("--older-than", "older_than", default=None, metavar="AGE",
              help="Also remove artifacts built longer ago than AGE (e.g. 30d, 12h), unless an alias names them.")
@click.option("--not-in-matrix", is_flag=True,
              help="Also remove artifacts the current builds.yaml does not produce, unless an alias names them.")
@pass_ctx
def gc(c: Context, dry_run, grace, older_than, not_in_matrix):
    """Clean up: staging dirs and unfinished runs of crashed builds, unreferenced objects; with
    --older-than / --not-in-matrix, artifacts past retention (never an aliased one)."""
    from .store import pid_alive
    if older_than is not None or not_in_matrix:
        from .plan import plan_builds
        from .retention import parse_age, select_expired

        matrix = None
        if not_in_matrix:
            matrix = {e.key for e in plan_builds(c.specs(), c.registry, c.store, include_skipped=True)}
        expired = select_expired(c.registry.list(), older_than_s=parse_age(older_than) if older_than else None,
                                 matrix_keys=matrix)
        for record, why in expired:
            click.echo(f"{'would remove' if dry_run else 'removed'} artifact {record.key[:12]} "
                       f"({record.model} {record.input_size}): {why}")
            if not dry_run:
                c.registry.delete(record.key)
        if older_than is not None:
            from .runlog import remove_old_logs
            logs = remove_old_logs(c.store.root, parse_age(older_than), dry_run=dry_run)
            click.echo(f"{'would remove' if dry_run else 'removed'} {len(logs)} build logs older than {older_than}")
    temps = c.store.clean_tmp(dry_run=dry_run)
    crashed = 0 if dry_run else c.registry.mark_crashed_runs(pid_alive)
    referenced = {f.digest for _, f in c.registry.file_digests()}  # manifests are files of their artifact
    objects = c.store.remove_unreferenced(referenced, grace_s=grace, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for path in temps:
        click.echo(f"{verb} staging {path}")
    for digest in objects:
        click.echo(f"{verb} object {digest}")
    click.echo(f"{verb} {len(temps)} staging entries and {len(objects)} unreferenced objects; "
               f"{crashed} unfinished runs marked crashed")


@cli.command(name="export")
@click.argument("refs", nargs=-1)
@click.option("--all", "export_all", is_flag=True, help="Every registered artifact.")
@click.option("-o", "--out", "out_path", required=True, type=click.Path(),
              help="A .tar file (a release: artifacts + signed manifest) or a directory (one bundle "
                   "directory per artifact).")
@click.option("--sign-key", default=None, type=click.Path(dir_okay=False),
              help="ed25519 private key (PEM) to sign with [env BUILDSYS_SIGNING_KEY]; see `buildsys keygen`.")
@pass_ctx
def export_cmd(c: Context, refs, export_all, out_path, sign_key):
    """Copy artifacts out: a release tar for `buildsys import`, or bundle directories to load directly."""
    from .signing import load_private_key

    if not refs and not export_all:
        raise UsageError("name artifacts to export (KEY, prefix or alias), or pass --all")
    private_key = load_private_key(sign_key)
    records = c.registry.list() if export_all else [c.registry.resolve(ref) for ref in refs]
    if out_path.endswith(".tar"):
        from .release import export_release
        manifest = export_release(records, c.store, c.registry, out_path, private_key)
        click.echo(f"{out_path}: {len(manifest['artifacts'])} artifacts, "
                   f"{'signed' if private_key is not None else 'NOT signed (no --sign-key)'}")
        return
    from .bundle import export_bundle
    for record in records:
        click.echo(f"{record.key[:12]} -> {export_bundle(record, c.store, out_path, private_key)}")


@cli.command(name="import")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--public-key", default=None, type=click.Path(dir_okay=False),
              help="ed25519 public key (hex) the release must be signed with [env BUILDSYS_PUBLIC_KEY].")
@click.option("--no-aliases", is_flag=True, help="Do not set the aliases the release carries.")
@pass_ctx
def import_cmd(c: Context, archive, public_key, no_aliases):
    """Verify a release tar and register its artifacts in this store and registry."""
    from .release import import_release
    from .signing import load_public_key

    key = load_public_key(public_key)
    imported = import_release(archive, c.store, c.registry, key, set_aliases=not no_aliases)
    click.echo(f"{archive}: {len(imported)} artifacts imported"
               + (", signature verified" if key is not None else " (no public key configured: signature not checked)"))
    for k in imported:
        click.echo(f"  {k}")


@cli.command()
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Private key file to create (the public key goes to FILE.pub).")
def keygen(out_path):
    """Create an ed25519 key pair for signing releases."""
    from .signing import generate_keypair

    private, public = generate_keypair(out_path)
    click.echo(f"private key: {private} (keep it secret; BUILDSYS_SIGNING_KEY)\npublic key: {public} "
               "(BUILDSYS_PUBLIC_KEY)")


@cli.command()
@click.option("-o", "--out", "out_path", default="report.html", show_default=True, type=click.Path(dir_okay=False))
@click.option("--photo", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Reference photo for detectors [default: scikit-image's astronaut, when installed].")
@click.option("--photo-budget", "photo_budget_s", default=30.0, show_default=True, type=click.FloatRange(0),
              help="Skip the photo for detectors whose one inference takes longer (seconds, build-time estimate).")
@only_option
@pass_ctx
def report(c: Context, out_path, photo, photo_budget_s, filters):
    """One static HTML page: the matrix as a table, a latency plot, detectors on a photo."""
    from pathlib import Path

    from .plan import plan_builds
    from .report import build_report, default_photo, write_report

    entries = plan_builds(c.specs(), c.registry, c.store, filters=filters, include_skipped=True)
    page = build_report(entries, c.registry, c.store, photo=Path(photo) if photo else default_photo(),
                        photo_budget_s=photo_budget_s)
    click.echo(f"{write_report(out_path, page)}: {len(entries)} entries, {page.count('<img ')} images")


@cli.command()
@click.argument("first")
@click.argument("second")
@json_option
@pass_ctx
def diff(c: Context, first, second, as_json):
    """What differs between two artifacts: spec, versions, tuning, pass trace, digests, parity, latency."""
    from . import manifest as manifest_format
    from .diff import SECTIONS, artifact_view, diff_artifacts

    views = []
    for ref in (first, second):
        record = c.registry.resolve(ref)
        manifest = manifest_format.loads(c.store.read_verified(record.manifest_digest, key=record.key,
                                                               name="manifest.json"), key=record.key)
        bench = c.registry.benchmarks(record.key, limit=1)
        views.append((record, artifact_view(manifest, bench[0].results if bench else None)))
    (ra, a), (rb, b) = views
    differences = diff_artifacts(a, b)
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


@cli.command()
@click.argument("refs", nargs=-1)
@pass_ctx
def push(c: Context, refs):
    """Upload artifacts' objects to the remote store (default: every registered artifact)."""
    store = c.store
    if store.remote is None:
        raise UsageError("no remote store configured: --remote s3://bucket/prefix or BUILDSYS_REMOTE")
    records = [c.registry.resolve(r) for r in refs] if refs else c.registry.list()
    uploaded = present = 0
    for record in records:
        for f in record.files:
            store.read_verified(f.digest, key=record.key, name=f.name)  # never upload a damaged object
            if store.remote.push(f.digest, store.object_path(f.digest)):
                uploaded += 1
            else:
                present += 1
    click.echo(f"{store.remote.url}: {uploaded} objects uploaded, {present} already there "
               f"({len(records)} artifacts)")


@cli.group()
def db():
    """The registry database: schema migrations (Alembic)."""


@db.command(name="upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_ctx
def db_upgrade(c: Context, revision):
    """Apply the registry's migrations (SQLite or any SQLAlchemy URL, e.g. PostgreSQL)."""
    from .registry.db import current_revision, make_engine, upgrade

    engine = make_engine(c.locations.registry_url)
    before = current_revision(engine)
    upgrade(engine, revision)
    click.echo(f"{engine.url.render_as_string(hide_password=True)}: {before or 'empty'} -> "
               f"{current_revision(engine)}")


@db.command(name="current")
@pass_ctx
def db_current(c: Context):
    """Print the registry's schema revision and the newest this buildsys knows."""
    from .registry.db import HEAD_REVISION, current_revision, make_engine

    engine = make_engine(c.locations.registry_url)
    click.echo(f"{engine.url.render_as_string(hide_password=True)}: {current_revision(engine) or 'empty'} "
               f"(newest: {HEAD_REVISION})")


@cli.group()
def alias():
    """Name artifacts (name -> key)."""


@alias.command(name="set")
@click.argument("name")
@click.argument("ref")
@pass_ctx
def alias_set(c: Context, name, ref):
    """Point NAME at REF (key, prefix or another alias)."""
    record = c.registry.set_alias(name, ref)
    click.echo(f"{record.name} -> {record.key}")


@alias.command(name="rm")
@click.argument("name")
@pass_ctx
def alias_rm(c: Context, name):
    """Remove alias NAME."""
    c.registry.remove_alias(name)
    click.echo(f"removed {name}")


@alias.command(name="ls")
@pass_ctx
def alias_ls(c: Context):
    """List aliases."""
    for a in c.registry.aliases():
        click.echo(f"{a.name} -> {a.key}")


@cli.command()
@click.argument("pattern", required=False)
def passes(pattern):
    """List the pass names this TVM has (for disabled_passes)."""
    import fnmatch

    from .passes import known_pass_names
    for name in sorted(known_pass_names()):
        if not pattern or fnmatch.fnmatchcase(name, pattern):
            click.echo(name)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="buildsys", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2
    except BuildsysError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
