"""Where the store and the registry live: flags, then environment, then defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STORE_ENV = "BUILDSYS_STORE"
REGISTRY_ENV = "BUILDSYS_REGISTRY"
DEFAULT_STORE = "artifacts"


@dataclass(frozen=True)
class Locations:
    store_root: Path
    registry_url: str


def resolve_locations(store: str | os.PathLike | None = None, registry: str | None = None) -> Locations:
    root = Path(store or os.environ.get(STORE_ENV) or DEFAULT_STORE).resolve()
    url = registry or os.environ.get(REGISTRY_ENV) or f"sqlite:///{root / 'registry.db'}"
    return Locations(store_root=root, registry_url=url)
