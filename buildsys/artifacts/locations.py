"""Where the store and the registry live: flags, then environment, then defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STORE_ENV = "BUILDSYS_STORE"
REGISTRY_ENV = "BUILDSYS_REGISTRY"
DEFAULT_STORE = "artifacts"


REMOTE_ENV = "BUILDSYS_REMOTE"


@dataclass(frozen=True)
class Locations:
    store_root: Path
    registry_url: str
    remote_url: str | None = None  # s3://bucket/prefix behind the local store (buildsys.artifacts.remote)

    def store(self):
        """The Store, with its remote when one is configured."""
        from buildsys.artifacts.store import Store

        remote = None
        if self.remote_url:
            from buildsys.artifacts.remote import RemoteStore
            remote = RemoteStore(self.remote_url)
        return Store(self.store_root, remote=remote)


def resolve_locations(store: str | os.PathLike | None = None, registry: str | None = None,
                      remote: str | None = None) -> Locations:
    root = Path(store or os.environ.get(STORE_ENV) or DEFAULT_STORE).resolve()
    url = registry or os.environ.get(REGISTRY_ENV) or f"sqlite:///{root / 'registry.db'}"
    return Locations(store_root=root, registry_url=url, remote_url=remote or os.environ.get(REMOTE_ENV) or None)
