"""Curation database: typed ORM models, engine/session helpers and migrations."""

from labelloop.db.models import (
    Annotation,
    Base,
    DatasetVersion,
    DatasetVersionRecord,
    FieldCorrection,
    Item,
    ItemAlias,
    Prediction,
    Quarantine,
    Record,
    Reject,
    ReviewTask,
    SyncState,
    Threshold,
    TrainingRun,
    ValidationRun,
)
from labelloop.db.session import Database

__all__ = [
    "Annotation",
    "Base",
    "Database",
    "DatasetVersion",
    "DatasetVersionRecord",
    "FieldCorrection",
    "Item",
    "ItemAlias",
    "Prediction",
    "Quarantine",
    "Record",
    "Reject",
    "ReviewTask",
    "SyncState",
    "Threshold",
    "TrainingRun",
    "ValidationRun",
]
