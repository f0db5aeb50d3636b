"""What a command works on: the matrix (builds.yaml), the store and the registry.

Commands of the CLI make one ``Workspace`` and hand it to one library function; what the
function needs (specs, the plan, the store, the registry) it takes from here, opened on
first use, so a command that only reads the registry never parses the matrix.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Iterable

from buildsys.artifacts.locations import Locations, resolve_locations
from buildsys.errors import UsageError


class Workspace:
    def __init__(self, config: str = "builds.yaml", store: str | None = None, registry: str | None = None,
                 remote: str | None = None):
        self.config_path = config
        self.locations: Locations = resolve_locations(store, registry, remote)

    @cached_property
    def registry(self):
        from buildsys.artifacts.registry import Registry

        return Registry(self.locations.registry_url)

    @cached_property
    def store(self):
        return self.locations.store()

    def specs(self):
        from buildsys.config.spec import load_specs

        return load_specs(self.config_path)

    def plan(self, *, filters: Iterable[str] = (), force: bool = False, include_skipped: bool = False,
             shard: str | None = None):
        """The matrix's jobs (``buildsys.pipeline.plan.plan_builds``)."""
        from buildsys.pipeline.plan import parse_shard, plan_builds

        return plan_builds(self.specs(), self.registry, self.store, force=force, filters=filters,
                           include_skipped=include_skipped, shard=parse_shard(shard))

    def matrix_specs(self, *, filters: Iterable[str] = (), cached_only: bool = False) -> dict:
        """key -> BuildSpec of the matrix's entries (the cached ones only, with ``cached_only``)."""
        from buildsys.format.status import Action

        return {job.key: job.spec for job in self.plan(filters=filters, include_skipped=True)
                if not cached_only or job.action == Action.CACHED}

    def spec_of(self, record, matrix: dict | None = None):
        """The spec ``record`` was built from: the matrix's when it holds the key (with its tolerance
        and its weights file), else the one its registry row keeps (with the tolerance its
        manifest recorded)."""
        from buildsys.artifacts import manifest as manifest_format
        from buildsys.config.spec import spec_from_manifest

        matrix = self.matrix_specs() if matrix is None else matrix
        spec = matrix.get(record.key)
        if spec is not None:
            return spec
        # its sources resolve beside this builds.yaml, as the matrix's do (a user's module, a model file)
        spec = spec_from_manifest(manifest_format.read_stored(self.store, record), record.spec,
                                  config_dir=str(Path(self.config_path).resolve().parent))
        if spec.model.weights.source == "file":
            raise UsageError(f"{record.key[:12]} was built from a weights file that the current matrix does not "
                             "name; use the builds.yaml that built it")
        return spec

    def records(self, refs: Iterable[str]) -> list:
        """Registry records for keys, prefixes or aliases (all of them when ``refs`` is empty)."""
        refs = list(refs)
        return [self.registry.resolve(ref) for ref in refs] if refs else self.registry.list()
