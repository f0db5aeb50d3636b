"""Which specs need building, and why (cheapest check first)."""

from __future__ import annotations

import fnmatch
from typing import Iterable, Mapping

from buildsys.pipeline import sources
from buildsys.errors import BuildError, ConfigError, UsageError, did_you_mean
from buildsys.pipeline.keys import build_key, key_material
from buildsys.models import weights_digest
from buildsys.config.spec import BuildSpec
from buildsys.format.status import Action
from buildsys.pipeline.jobs import Job
from buildsys.format.status import RunStatus
from buildsys.artifacts.store import Store
from buildsys.config.toolchain import toolchain_for, toolchain_versions

FILTER_FIELDS = ("model", "input_size", "target", "opt_level", "key", "task", "batch")


def spec_key(spec: BuildSpec, toolchain: Mapping | None = None) -> tuple[str, dict]:
    """The key without tuning records; for a tuned entry it names the entry in its tuning database."""
    material = key_material(spec.to_dict(), weights_digest(spec.model), toolchain_for(spec.target, toolchain))
    return build_key(material), material


def tuned_key(spec: BuildSpec, store: Store, toolchain: Mapping, entry_key: str,
              material: Mapping) -> tuple[str, dict, str | None]:
    """(key, material, why tuning must come first). The key of a tuned entry includes the
    digest of the records applied to it, known once its workloads are recorded."""
    from buildsys.compiler.tuning_db import TuningDatabase

    database = TuningDatabase(store.root, spec.target, toolchain["tvm"])
    why = database.pending(entry_key, spec.tuning)
    if why is not None:
        return entry_key, dict(material), why
    applied = database.applied(database.entry_info(entry_key)["workloads"])
    material = {**material, "tuning": {"scope": database.scope, "records": applied["digest"],
                                       "applied": applied["records"]}}
    return build_key(material), material, None


def parse_filters(filters: Iterable[str]) -> list[tuple[str, str]]:
    parsed = []
    for item in filters:
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise UsageError(f"--only takes FIELD=VALUE, got {item!r} (fields: {', '.join(FILTER_FIELDS)})")
        if name not in FILTER_FIELDS:
            hint = did_you_mean(name, FILTER_FIELDS)
            raise UsageError(f"--only: unknown field {name!r}" + (f"; {hint}" if hint else
                                                                   f" (fields: {', '.join(FILTER_FIELDS)})"))
        if name == "target" and "-mcpu=native" in value:  # the matrix names this host's CPU by its name
            from buildsys.config import tvmfacts

            value = value.replace("-mcpu=native", f"-mcpu={tvmfacts.facts()['system_cpu']}")
        parsed.append((name, value))
    return parsed


def _matches(spec: BuildSpec, key: str, filters: list[tuple[str, str]]) -> bool:
    """Filters on one field are alternatives (OR); different fields must all match (AND)."""
    by_field: dict[str, list[str]] = {}
    for name, value in filters:
        by_field.setdefault(name, []).append(value)
    values = {"model": spec.model.name, "task": spec.model.task, "input_size": spec.size_label,
              "target": spec.target_label, "opt_level": str(spec.opt_level), "batch": spec.batch.label}
    for name, wanted in by_field.items():
        if name == "key":
            if not any(key.startswith(w.lower()) for w in wanted):
                return False
        elif name == "input_size":
            labels = {values["input_size"]}
            if spec.input_size is not None and spec.input_size[0] == spec.input_size[1]:
                labels.add(str(spec.input_size[0]))
            if not any(w in labels for w in wanted):
                return False
        elif not any(fnmatch.fnmatchcase(values[name], w) for w in wanted):
            return False
    return True


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` (1 <= i <= N) -> (i, N); None stays None."""
    if text is None:
        return None
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise UsageError(f"--shard takes i/N with 1 <= i <= N (e.g. 2/4), got {text!r}")
    return int(index), int(count)


def in_shard(entry_key: str, shard: tuple[int, int] | None) -> bool:
    """Deterministic 1/N of the matrix, by the entry's key (the key without tuning records,
    so an entry stays in its shard when its records improve)."""
    return shard is None or int(entry_key[:15], 16) % shard[1] == shard[0] - 1


def _check_sources(specs: list[BuildSpec]) -> None:
    """Every model source must be findable (without importing it) before anything builds."""
    checked = set()
    for spec in specs:
        model = spec.model
        if model.file_kind or (model.source, model.config_dir) in checked:  # files: checked when read
            continue
        checked.add((model.source, model.config_dir))
        file, _, line = (model.source_origin or spec.origin).rpartition(":")
        sources.check_source(model.source, [model.config_dir], file=file or None,
                             line=int(line) if line.isdigit() else None, field=f"models.{model.name}.source")


def _with_sources(spec: BuildSpec, store: Store, entry_key: str, material: Mapping) -> tuple[str, dict, str]:
    """(key, material, what changed) with the model's recorded sources re-checked. Without a
    depfile (never built here) the key is a prediction (the source module and its packages when
    they are model code; nothing for torchvision's models); the builder records the truth and
    keys the artifact by it."""
    deps = sources.read_depfile(store.root, entry_key, spec.model.config_dir)
    if deps is None and spec.model.file_kind:
        digest, changed = sources.sources_digest(_file_sources(spec)), ""
    elif deps is None:
        predicted = sources.predict_dependencies(spec.model.source, [spec.model.config_dir])
        digest, changed = sources.sources_digest(predicted), ""
    else:
        check = sources.check_dependencies(deps, [spec.model.config_dir])
        digest = check.digest or sources.sources_digest(check.deps)
        changed = sources.describe_changes(check.changes)
    material = {**material, "sources": digest}
    return build_key(material), material, changed


def _file_sources(spec: BuildSpec) -> list:
    """A model file's dependencies, hashed at planning (exactly what the builder records)."""
    try:
        return sources.model_file_dependencies(spec.model.file_path)
    except BuildError as exc:
        file, _, line = (spec.model.source_origin or spec.origin).rpartition(":")
        raise ConfigError(exc.detail, file=file or None, line=int(line) if line.isdigit() else None,
                          field=f"models.{spec.model.name}.source") from None


def plan_builds(specs: Iterable[BuildSpec], registry, store: Store, *, force: bool = False,
                filters: Iterable[str] = (), include_skipped: bool = False,
                shard: tuple[int, int] | None = None) -> list[Job]:
    """Each entry with its key and the reason it must (or need not) build. Imports neither torch
    nor TVM, and reads the registry in a few queries whatever the matrix size."""
    parsed = parse_filters(filters)
    toolchain = toolchain_versions()
    specs = list(specs)
    _check_sources(specs)
    planned = []
    for spec in specs:
        try:
            entry_key, material = spec_key(spec, toolchain)
        except BuildError as exc:  # weights that cannot be found or read: bad input, found before building
            file, _, line = spec.origin.rpartition(":")
            raise ConfigError(str(exc).removeprefix("weights: "), file=file or None,
                              line=int(line) if line.isdigit() else None,
                              field=f"models.{spec.model.name}.weights") from None
        if not in_shard(entry_key, shard):
            continue
        if spec.model.skip and not include_skipped:
            if not parsed or _matches(spec, entry_key, parsed):
                planned.append(Job(spec, entry_key, material, Action.SKIP, f"skipped: {spec.model.skip}",
                                         entry_key=entry_key))
            continue
        key, why = entry_key, None
        if spec.tuning is not None:
            key, material, why = tuned_key(spec, store, toolchain, entry_key, material)
        changed = ""
        if why is None:
            key, material, changed = _with_sources(spec, store, entry_key, material)
        if parsed and not (_matches(spec, key, parsed) or _matches(spec, entry_key, parsed)):
            continue
        planned.append((spec, entry_key, key, material, why, changed))

    wanted = [item[2] for item in planned if isinstance(item, tuple) and item[4] is None]
    state = registry.plan_state(wanted) if wanted else {}
    runs = registry.last_runs([k for k in wanted if k not in state]) if wanted else {}
    entries = []
    for item in planned:
        if isinstance(item, Job):
            entries.append(item)
            continue
        spec, entry_key, key, material, why, changed = item
        if why is not None:
            entries.append(Job(spec, key, material, Action.BUILD, f"tune first: {why}", forced=force,
                                     tune_first=True, entry_key=entry_key))
            continue
        if force:
            entries.append(Job(spec, key, material, Action.BUILD, "forced (--force)", forced=True,
                                     entry_key=entry_key))
            continue
        if key not in state:
            last = runs.get(key)
            why = "not built yet"
            if changed:
                why = f"model sources changed: {changed}"
            elif last is not None and last.status == RunStatus.FAILED:
                first_line = (last.error or "").strip().splitlines()[0:1]
                why = f"last attempt failed: {first_line[0][:120] if first_line else 'unknown error'}"
            elif last is not None and last.status == RunStatus.RUNNING:
                why = "an earlier build did not finish (crashed or still running elsewhere)"
            entries.append(Job(spec, key, material, Action.BUILD, why, entry_key=entry_key))
            continue
        created_at, files = state[key]
        missing = [name for name, digest in files if not store.has(digest)]
        if missing:
            entries.append(Job(spec, key, material, Action.BUILD,
                                     f"registered but missing from the store: {', '.join(missing)}",
                                     entry_key=entry_key))
            continue
        entries.append(Job(spec, key, material, Action.CACHED,
                                 f"up to date (built {created_at:%Y-%m-%d %H:%M}, {len(files)} files present)",
                                 entry_key=entry_key))
    return entries
