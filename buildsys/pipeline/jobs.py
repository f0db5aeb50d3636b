"""What the builder tells a display, and the job that carries one matrix entry from the plan to
its build. The status words (what the plan decides, what a build ends as) are
``buildsys.format.status``'s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from buildsys.config.spec import BuildSpec
from buildsys.format.status import Action


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


# What the builder tells its display: one small type per kind, in the order they can happen for
# one job. A display matches on the type (``match event: case Built(): ...``).


@dataclass(frozen=True)
class Cached:
    """Nothing to build: the registry has the key (or it was built meanwhile)."""

    job: Job
    reason: str


@dataclass(frozen=True)
class Skipped:
    """The plan skips it (its model is marked ``skip``)."""

    job: Job
    reason: str


@dataclass(frozen=True)
class TuneStarted:
    job: Job
    reason: str


@dataclass(frozen=True)
class TuneProgress:
    job: Job
    progress: Mapping[str, Any]  # the tuner's figures (``tuning.TuneProgress`` as a dict)


@dataclass(frozen=True)
class Tuned:
    job: Job
    report: Any  # ``tuning.TuneReport``


@dataclass(frozen=True)
class Started:
    job: Job
    log_path: str | None = None


@dataclass(frozen=True)
class StageBegun:
    job: Job
    stage: str  # runlog.STAGES
    at: float | None = None  # time.time() when it began


@dataclass(frozen=True)
class Built:
    job: Job
    seconds: float
    manifest: Mapping[str, Any]
    record: Any = None  # the registry record
    log_path: str | None = None


@dataclass(frozen=True)
class Failed:
    job: Job
    seconds: float
    error: str
    log_path: str | None = None


Event = Cached | Skipped | TuneStarted | TuneProgress | Tuned | Started | StageBegun | Built | Failed
