"""The artifact registry (SQLAlchemy; any URL, SQLite by default). Never imports TVM or torch."""

from .api import (RUN_BUILT, RUN_FAILED, RUN_RUNNING, AliasRecord, ArtifactRecord, BuildRunRecord, FileRecord,
                  NewArtifact, Registry)

__all__ = ["Registry", "ArtifactRecord", "FileRecord", "NewArtifact", "BuildRunRecord", "AliasRecord",
           "RUN_BUILT", "RUN_FAILED", "RUN_RUNNING"]
