"""The artifact registry (SQLAlchemy; any URL, SQLite by default). Never imports TVM or torch.

Names are loaded on first use, so ``buildsys.artifacts.registry.lookup`` (the thin loader's
read path) does not pay for importing SQLAlchemy.
"""

_API = ("AliasRecord", "ArtifactRecord", "BuildRunRecord", "FileRecord", "NewArtifact", "Registry")
__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        from buildsys.artifacts.registry import api
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
