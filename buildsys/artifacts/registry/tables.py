"""SQLAlchemy models: private to the registry package.

The schema's single source of truth is the Alembic migration history in
``migrations/``; these classes must match it (a test compares them with
``alembic.autogenerate.compare_metadata`` against a migrated database).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Artifact(Base):
    __tablename__ = "artifacts"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    task: Mapped[str] = mapped_column(String(40))
    input_size: Mapped[str] = mapped_column(String(20))
    target: Mapped[str] = mapped_column(Text)  # normalized target, canonical JSON
    opt_level: Mapped[int] = mapped_column(Integer)
    disabled_passes: Mapped[str] = mapped_column(Text)  # JSON list
    spec_json: Mapped[str] = mapped_column(Text)
    key_material_json: Mapped[str] = mapped_column(Text)
    toolchain_json: Mapped[str] = mapped_column(Text)
    manifest_digest: Mapped[str] = mapped_column(String(80))
    status: Mapped[str] = mapped_column(String(20))
    parity_max_abs: Mapped[float | None] = mapped_column(Float, nullable=True)
    parity_max_rel: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)

    files: Mapped[list[ArtifactFile]] = relationship(back_populates="artifact", cascade="all, delete-orphan",
                                                     order_by="ArtifactFile.name")
    metrics: Mapped[list[Metric]] = relationship(back_populates="artifact", cascade="all, delete-orphan",
                                                 order_by="Metric.name")
    aliases: Mapped[list[Alias]] = relationship(back_populates="artifact", order_by="Alias.name")


class ArtifactFile(Base):
    __tablename__ = "artifact_files"
    __table_args__ = (UniqueConstraint("artifact_key", "name", name="uq_artifact_files_key_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    artifact_key: Mapped[str] = mapped_column(ForeignKey("artifacts.key", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    digest: Mapped[str] = mapped_column(String(80), index=True)
    size: Mapped[int] = mapped_column(Integer)

    artifact: Mapped[Artifact] = relationship(back_populates="files")


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("artifact_key", "name", name="uq_metrics_key_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    artifact_key: Mapped[str] = mapped_column(ForeignKey("artifacts.key", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(20))

    artifact: Mapped[Artifact] = relationship(back_populates="metrics")


class Alias(Base):
    __tablename__ = "aliases"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    artifact_key: Mapped[str] = mapped_column(ForeignKey("artifacts.key", ondelete="RESTRICT"), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime)

    artifact: Mapped[Artifact] = relationship(back_populates="aliases")


class BuildRun(Base):
    """One attempt to build one key. Rows start as 'running', so a crash stays visible."""

    __tablename__ = "build_runs"
    __table_args__ = (Index("ix_build_runs_key_started", "key", "started_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64))  # not a foreign key: failed builds have no artifact
    label: Mapped[str] = mapped_column(String(400))
    status: Mapped[str] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    log_path: Mapped[str | None] = mapped_column(Text, nullable=True)  # the run's log file, on its host


class TuningDatabaseRow(Base):
    """A tuning database (one per target scope): its content digest after the last tuning run."""

    __tablename__ = "tuning_databases"

    scope: Mapped[str] = mapped_column(String(40), primary_key=True)
    target: Mapped[str] = mapped_column(Text)  # canonical JSON of the tuning target
    tvm_version: Mapped[str] = mapped_column(String(60))
    digest: Mapped[str] = mapped_column(String(80))
    workloads: Mapped[int] = mapped_column(Integer)
    records: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Benchmark(Base):
    """One `buildsys bench` run of one artifact: every runner's figures, on a named CPU."""

    __tablename__ = "benchmarks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    artifact_key: Mapped[str] = mapped_column(ForeignKey("artifacts.key", ondelete="CASCADE"), index=True)
    host: Mapped[str] = mapped_column(String(200))
    cpu_model: Mapped[str] = mapped_column(String(200))
    threads: Mapped[int] = mapped_column(Integer)
    rounds: Mapped[int] = mapped_column(Integer)
    results_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
