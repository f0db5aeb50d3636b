"""Every status word buildsys writes, in one place: what the plan decides for an entry, how its
build ends, what a ``build_runs`` row says, what an artifact's registry row and its manifest say
about verification.

Each is a ``StrEnum`` that compares equal to the string the JSON documents, the registry rows
and the manifests have always held, so schemas and rows are unchanged; code names the member,
never the literal. How they relate, along one entry's life::

    plan:      Action     build | cached | skip
    build:     Outcome    built | cached | skipped | failed      (buildsys build --json, the summary)
    run row:   RunStatus  running -> built | failed | crashed   (build_runs, `buildsys log`)
    artifact:  ArtifactStatus  ok | unverified                  (artifacts.status, `ls`, releases)
    manifest:  Verification    verified | unverified            (manifest.json verification.status)

An artifact is ``unverified`` exactly when its manifest's verification is: built for a machine
that nothing reachable from the builder could run, so parity was never measured.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Mapping


class Action(StrEnum):
    """What the plan decides for an entry."""

    BUILD = "build"
    CACHED = "cached"
    SKIP = "skip"


class Outcome(StrEnum):
    """How an entry ends in ``buildsys build`` (and ``tune``)."""

    BUILT = "built"
    CACHED = "cached"
    SKIPPED = "skipped"
    FAILED = "failed"


class RunStatus(StrEnum):
    """A ``build_runs`` row's status."""

    RUNNING = "running"
    BUILT = "built"
    FAILED = "failed"
    CRASHED = "crashed"


class ArtifactStatus(StrEnum):
    """An artifact row's status: published with parity measured, or built but never run."""

    OK = "ok"
    UNVERIFIED = "unverified"


class Verification(StrEnum):
    """The manifest's ``verification.status``."""

    VERIFIED = "verified"
    UNVERIFIED = "unverified"


def artifact_status(manifest: Mapping[str, Any]) -> ArtifactStatus:
    """The registry status a manifest implies (manifests from before verification was recorded
    were all verified natively)."""
    verification = manifest.get("verification")
    unverified = isinstance(verification, Mapping) and verification.get("status") == Verification.UNVERIFIED
    return ArtifactStatus.UNVERIFIED if unverified else ArtifactStatus.OK
