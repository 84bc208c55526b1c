"""Ingest: content-addressed registration of images, documents (PDF, office) and videos, with recorded rejects.

The names below are imported on first use (PEP 562), so a probe worker process that only needs
:mod:`labelloop.ingest.probe` does not pay for the database and storage layers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Probe": "labelloop.ingest.probe",
    "RejectReason": "labelloop.ingest.probe",
    "Rejected": "labelloop.ingest.probe",
    "probe_file": "labelloop.ingest.probe",
    "sniff": "labelloop.ingest.probe",
    "IngestError": "labelloop.ingest.run",
    "IngestStats": "labelloop.ingest.run",
    "Ingestor": "labelloop.ingest.run",
    "ingest": "labelloop.ingest.run",
    "raw_key": "labelloop.ingest.run",
    "LocalSource": "labelloop.ingest.sources",
    "S3Source": "labelloop.ingest.sources",
    "Source": "labelloop.ingest.sources",
    "SourceFile": "labelloop.ingest.sources",
    "open_source": "labelloop.ingest.sources",
}

__all__ = [
    "IngestError",
    "IngestStats",
    "Ingestor",
    "LocalSource",
    "Probe",
    "RejectReason",
    "Rejected",
    "S3Source",
    "Source",
    "SourceFile",
    "ingest",
    "open_source",
    "probe_file",
    "raw_key",
    "sniff",
]

if TYPE_CHECKING:
    from labelloop.ingest.probe import Probe, Rejected, RejectReason, probe_file, sniff
    from labelloop.ingest.run import IngestError, Ingestor, IngestStats, ingest, raw_key
    from labelloop.ingest.sources import LocalSource, S3Source, Source, SourceFile, open_source


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'labelloop.ingest' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
