"""Ingest: content-addressed registration of images, documents (PDF, office) and videos, with recorded rejects."""

from labelloop.ingest.probe import Probe, Rejected, RejectReason, probe_file, sniff
from labelloop.ingest.run import Ingestor, IngestStats, ingest, raw_key
from labelloop.ingest.sources import LocalSource, S3Source, Source, SourceFile, open_source

__all__ = [
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
