"""What the builder tells a display, and the job that carries one matrix entry from the plan to
its build. The status words (what the plan decides, what a build ends as) are
``buildsys.format.status``'s."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Mapping

from buildsys.config.spec import BuildSpec
from buildsys.format.status import Action


class EventKind(StrEnum):
    """What the builder tells its display, in the order they can happen for one entry."""

    CACHED = "cached"
    SKIPPED = "skipped"
    TUNE = "tune"
    TUNE_PROGRESS = "tune-progress"
    TUNED = "tuned"
    START = "start"
    STAGE = "stage"
    BUILT = "built"
    FAILED = "failed"


@dataclass(frozen=True)
class Job:
    """One matrix entry from the plan to its build.

    ``entry_key`` names the matrix entry (the key without tuning records and model sources: its
    shard, its tuning database entry, its depfile); ``key`` names the artifact; ``material`` is
    what ``key`` hashes."""

    spec: BuildSpec
    key: str
    material: Mapping
    action: Action
    reason: str
    forced: bool = False
    # tuned entries whose records are not final yet: the key is provisional (tuning comes first)
    tune_first: bool = False
    entry_key: str = ""


@dataclass(frozen=True)
class Event:
    """One thing that happened to a job; the fields its kind uses are set, the rest are None."""

    kind: EventKind
    job: Job
    reason: str | None = None  # cached, skipped, tune
    seconds: float | None = None  # built, failed
    error: str | None = None  # failed
    log_path: str | None = None  # start, built, failed
    stage: str | None = None  # stage: its name (runlog.STAGES) ...
    at: float | None = None  # ... and when it began (time.time())
    record: Any = None  # built: the registry record
    manifest: dict | None = None  # built: the artifact's manifest
    progress: dict = field(default_factory=dict)  # tune-progress: the tuner's figures
    report: Any = None  # tuned: the tuning report
