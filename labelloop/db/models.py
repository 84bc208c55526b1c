"""SQLAlchemy 2 typed models of the curation database.

One row per fact, keyed the way the pipeline looks things up, so every stage can be rerun:
inserting what already exists is a no-op by the unique constraints below, never a duplicate.
The schema is created by the Alembic migrations in ``sql/migrations`` (not ``create_all``);
``tests/test_db.py`` checks that the migrations and these models agree.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from labelloop.db.types import JSONType, UTCDateTime, utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
        dt.datetime: UTCDateTime(),
    }


# --------------------------------------------------------------------------- ingest


class Item(Base):
    """One distinct content (by sha256), however many names it arrived under."""

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    media_type: Mapped[str] = mapped_column(String(16))  # "image" | "document"
    mime: Mapped[str] = mapped_column(String(64))
    ext: Mapped[str] = mapped_column(String(8))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(255))
    #: images: size after EXIF orientation, i.e. the "original pixels" every box refers to
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    exif_orientation: Mapped[int | None] = mapped_column(Integer)
    #: documents
    page_count: Mapped[int | None] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    aliases: Mapped[list[ItemAlias]] = relationship(back_populates="item", cascade="all, delete-orphan")

    def __repr__(self) -> str:
        return f"Item(id={self.id}, sha256={self.sha256[:12]}, {self.media_type})"


class ItemAlias(Base):
    """A name (source URI) under which an item's bytes were seen."""

    __tablename__ = "item_aliases"
    __table_args__ = (UniqueConstraint("item_id", "source_uri", name="uq_item_aliases_item_uri"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    source_uri: Mapped[str] = mapped_column(Text)
    first_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    item: Mapped[Item] = relationship(back_populates="aliases")


class Reject(Base):
    """A file that was not ingested, and why. Keyed by name and content so reruns upsert."""

    __tablename__ = "rejects"
    __table_args__ = (UniqueConstraint("source_uri", "sha256", name="uq_rejects_uri_sha"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_uri: Mapped[str] = mapped_column(Text)
    #: sha256 of the bytes, or "" when the file could not be read at all
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(32), index=True)  # machine code, see ingest.RejectReason
    detail: Mapped[str] = mapped_column(Text, default="")
    first_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SourceObject(Base):
    """What ingest last saw under one source name, so an unchanged object is skipped unread.

    Keyed by the sha256 of the URI (URIs can be longer than an index entry allows). ``outcome``
    is "item" (bytes registered as item ``sha256``) or "reject" (``reason``, decided under the
    ingest limits hashed in ``limits_hash``: other limits, another look). An object is unchanged
    when its size and its ETag (S3) or modification time (folders) are the ones stored here.
    """

    __tablename__ = "source_objects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uri_key: Mapped[str] = mapped_column(String(64), unique=True)
    source_uri: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    etag: Mapped[str | None] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64), default="")
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32))
    limits_hash: Mapped[str] = mapped_column(String(16), default="")
    seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# --------------------------------------------------------------------------- pre-label


class Prediction(Base):
    """A model's output for one item under one task spec.

    The identity (item, spec, model, model_version, prompt_hash) is unique: a rerun finds the row
    and skips the item; a new prompt or model version is a new row, the old one kept.
    """

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("item_id", "spec", "model", "model_version", "prompt_hash", name="uq_predictions_identity"),
        Index("ix_predictions_spec_model", "spec", "model", "model_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    spec: Mapped[str] = mapped_column(String(64))
    backend: Mapped[str] = mapped_column(String(32))  # "vllm" | "rapidocr" | "mineru" | "pymupdf"
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(128))
    prompt_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)  # "ok" | "failed"
    #: the spec's record (boxes in original pixels); None when failed
    record: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    #: routing confidence per field, in [0, 1]
    field_confidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: extra confidence figures (joint/min/mean per field, per-region scores)
    confidence_detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: min over fields; None when failed
    confidence: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    raw_output: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    #: failed only: "transient" (connection, timeout, 429, 5xx: later runs retry it) or
    #: "permanent" (bad output, unreadable file: retried after a prompt/model change or on request)
    failure_kind: Mapped[str | None] = mapped_column(String(16))
    #: how many runs tried this identity (a retry updates the failed row in place)
    attempts: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: transient failures: not retried before this time (exponential backoff between runs)
    retry_after: Mapped[dt.datetime | None] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    item: Mapped[Item] = relationship()


# --------------------------------------------------------------------------- review


class ReviewTask(Base):
    """The routing decision for one prediction, and its Label Studio task when reviewed."""

    __tablename__ = "review_tasks"
    __table_args__ = (
        UniqueConstraint("prediction_id", "page", name="uq_review_tasks_prediction_page"),
        Index("ix_review_tasks_ls", "ls_project_id", "ls_task_id"),
        Index("ix_review_tasks_status", "spec", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"))
    #: documents are reviewed a page per task (0-based); images use 0
    page: Mapped[int] = mapped_column(Integer, default=0)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    spec: Mapped[str] = mapped_column(String(64))
    route: Mapped[str] = mapped_column(String(16))  # "auto" | "review" | "audit"
    reason: Mapped[str] = mapped_column(Text, default="")
    #: per-field decision evidence: {field: {"confidence": c, "threshold": t, "pass": bool}}
    decision: Mapped[dict[str, Any]] = mapped_column(default=dict)
    threshold_version: Mapped[int | None] = mapped_column(Integer)
    #: sampling design (calibration weights by it): "full_review" (every item reviewed),
    #: "review" (a field below its threshold), "audit" (hash sample of would-be auto-accepts),
    #: "auto"; NULL for rows routed before the design was recorded
    design: Mapped[str | None] = mapped_column(String(16))
    #: probability, fixed at routing time, that this item is reviewed: 1, 1, audit rate, audit rate
    inclusion_prob: Mapped[float | None] = mapped_column(Float)
    #: audit rate in force at routing time: the floor of inclusion_prob known before the item came
    audit_rate: Mapped[float | None] = mapped_column(Float)
    #: "auto_accepted" | "pending_import" | "imported" | "completed" | "skipped" | "deleted"
    status: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(128), unique=True)
    ls_project_id: Mapped[int | None] = mapped_column(Integer)
    ls_task_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    prediction: Mapped[Prediction] = relationship()


class Annotation(Base):
    """One synced version of a Label Studio annotation; history is kept, ``is_latest`` wins."""

    __tablename__ = "annotations"
    __table_args__ = (
        UniqueConstraint("ls_annotation_id", "ls_updated_at", name="uq_annotations_ls_version"),
        Index("ix_annotations_ls_updated_at", "ls_updated_at"),
        Index("ix_annotations_task_latest", "review_task_id", "is_latest"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    review_task_id: Mapped[int] = mapped_column(ForeignKey("review_tasks.id", ondelete="CASCADE"))
    ls_annotation_id: Mapped[int] = mapped_column(Integer)
    ls_task_id: Mapped[int] = mapped_column(Integer)
    ls_updated_at: Mapped[dt.datetime] = mapped_column()
    is_latest: Mapped[bool] = mapped_column(Boolean, default=True)
    was_cancelled: Mapped[bool] = mapped_column(Boolean, default=False)  # "skipped" in the UI
    annotator: Mapped[str | None] = mapped_column(String(255))
    lead_time_s: Mapped[float | None] = mapped_column(Float)
    result: Mapped[list[Any]] = mapped_column(default=list)  # raw Label Studio result
    record: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # converted, original pixels
    synced_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class FieldCorrection(Base):
    """The correction log: per reviewed field, what the model said and what the human kept."""

    __tablename__ = "field_corrections"
    __table_args__ = (
        UniqueConstraint("annotation_id", "field", name="uq_field_corrections_annotation_field"),
        Index("ix_field_corrections_calib", "spec", "field", "model", "model_version", "prompt_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id", ondelete="CASCADE"))
    review_task_id: Mapped[int] = mapped_column(ForeignKey("review_tasks.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    spec: Mapped[str] = mapped_column(String(64))
    field: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(128))
    prompt_hash: Mapped[str] = mapped_column(String(64))
    route: Mapped[str] = mapped_column(String(16))  # "review" | "audit"
    model_value: Mapped[Any] = mapped_column(JSONType, nullable=True)
    model_confidence: Mapped[float | None] = mapped_column(Float)
    human_value: Mapped[Any] = mapped_column(JSONType, nullable=True)
    changed: Mapped[bool] = mapped_column(Boolean)
    #: the comparison's figure: edit distance ratio, 1 - IoU, 0/1 for exact
    distance: Mapped[float | None] = mapped_column(Float)
    is_latest: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AnnotationReject(Base):
    """A Label Studio annotation that could not become a record, and why.

    Keyed like :class:`Annotation` (one row per annotation version), so a re-read version is not
    recorded twice and a corrected version syncs normally. Never a record, never a correction.
    """

    __tablename__ = "annotation_rejects"
    __table_args__ = (UniqueConstraint("ls_annotation_id", "ls_updated_at", name="uq_annotation_rejects_ls_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec: Mapped[str] = mapped_column(String(64), index=True)
    ls_project_id: Mapped[int] = mapped_column(Integer)
    ls_task_id: Mapped[int] = mapped_column(Integer)
    ls_annotation_id: Mapped[int] = mapped_column(Integer)
    ls_updated_at: Mapped[dt.datetime] = mapped_column()
    review_task_id: Mapped[int | None] = mapped_column(ForeignKey("review_tasks.id", ondelete="CASCADE"))
    annotator: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    result: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LabelStudioProject(Base):
    """The Label Studio project a title maps to, stored once it is found or created.

    Project identity by stored id, not by title: a second project with the same title (made by
    hand, or by an importer that raced before this table existed) never takes over.
    """

    __tablename__ = "ls_projects"

    title: Mapped[str] = mapped_column(String(255), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    spec: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SyncState(Base):
    """Watermarks of incremental syncs, advanced only after the synced batch is committed."""

    __tablename__ = "sync_state"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    watermark: Mapped[dt.datetime | None] = mapped_column()
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# --------------------------------------------------------------------------- curated records


class Record(Base):
    """The current curated record of an item under a spec (auto-accepted or human-reviewed)."""

    __tablename__ = "records"
    __table_args__ = (
        UniqueConstraint("item_id", "spec", name="uq_records_item_spec"),
        Index("ix_records_spec_updated", "spec", "updated_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    spec: Mapped[str] = mapped_column(String(64))
    provenance: Mapped[str] = mapped_column(String(16))  # "auto" | "human" | "audited"
    prediction_id: Mapped[int | None] = mapped_column(ForeignKey("predictions.id", ondelete="SET NULL"))
    annotation_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id", ondelete="SET NULL"))
    model: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(128))
    annotator: Mapped[str | None] = mapped_column(String(255))
    confidence: Mapped[float | None] = mapped_column(Float)
    record: Mapped[dict[str, Any]] = mapped_column()
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ValidationRun(Base):
    __tablename__ = "validation_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec: Mapped[str] = mapped_column(String(64), index=True)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column()
    n_records: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    passed_gate: Mapped[bool | None] = mapped_column(Boolean)
    report_key: Mapped[str | None] = mapped_column(String(255))
    statistics: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Quarantine(Base):
    """A record that failed validation in a run, with the expectations it broke."""

    __tablename__ = "quarantine"
    __table_args__ = (UniqueConstraint("validation_run_id", "record_id", name="uq_quarantine_run_record"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    validation_run_id: Mapped[int] = mapped_column(ForeignKey("validation_runs.id", ondelete="CASCADE"))
    record_id: Mapped[int] = mapped_column(ForeignKey("records.id", ondelete="CASCADE"), index=True)
    record_hash: Mapped[str] = mapped_column(String(64))
    failures: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DatasetVersion(Base):
    """An immutable, published dataset version; ``content_hash`` makes re-exports no-ops."""

    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("spec", "version", name="uq_dataset_versions_version"),
        UniqueConstraint("spec", "content_hash", name="uq_dataset_versions_content"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(Text)
    prefix: Mapped[str] = mapped_column(String(255))
    content_hash: Mapped[str] = mapped_column(String(64))
    n_records: Mapped[int] = mapped_column(Integer)
    n_train: Mapped[int] = mapped_column(Integer)
    n_val: Mapped[int] = mapped_column(Integer)
    validation_run_id: Mapped[int | None] = mapped_column(ForeignKey("validation_runs.id"))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DatasetVersionRecord(Base):
    __tablename__ = "dataset_version_records"
    __table_args__ = (UniqueConstraint("dataset_version_id", "record_id", name="uq_dataset_version_records_member"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id", ondelete="CASCADE"))
    record_id: Mapped[int] = mapped_column(ForeignKey("records.id", ondelete="CASCADE"), index=True)
    record_hash: Mapped[str] = mapped_column(String(64))
    split: Mapped[str] = mapped_column(String(8))  # "train" | "val"
    provenance: Mapped[str] = mapped_column(String(16))


class PoolImage(Base):
    """An image in a spec's content-addressed pool (``datasets/<spec>/images/``), which every
    dataset version's annotation files point into.

    A pool file is written once and never changed; this row, written after the file is stored,
    remembers its sha256, size and pixel size so a new version neither reads nor rewrites the
    images earlier versions already hold.
    """

    __tablename__ = "pool_images"
    __table_args__ = (UniqueConstraint("spec", "name", name="uq_pool_images_spec_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec: Mapped[str] = mapped_column(String(64))
    #: relative to ``datasets/<spec>/``, e.g. ``images/<sha>.jpg``, ``images/<sha>_p0.png``
    name: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    dataset_uri: Mapped[str] = mapped_column(Text)
    launcher: Mapped[str] = mapped_column(String(32))
    command: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # "running" | "succeeded" | "failed"
    return_code: Mapped[int | None] = mapped_column(Integer)
    log_tail: Mapped[str | None] = mapped_column(Text)
    airflow_run_id: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column()


class Threshold(Base):
    """A versioned auto-accept threshold for one field of one model/prompt.

    ``threshold`` None means "full review". Routing reads the row with the highest ``version``.
    """

    __tablename__ = "thresholds"
    __table_args__ = (
        UniqueConstraint(
            "spec", "field", "model", "model_version", "prompt_hash", "version", name="uq_thresholds_identity"
        ),
        Index("ix_thresholds_lookup", "spec", "model", "model_version", "prompt_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec: Mapped[str] = mapped_column(String(64))
    field: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(128))
    prompt_hash: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    threshold: Mapped[float | None] = mapped_column(Float)
    target_error: Mapped[float] = mapped_column(Float)
    upper_bound: Mapped[float | None] = mapped_column(Float)
    n_samples: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
