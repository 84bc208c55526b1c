"""Dataset versions for fine-tuning: Qwen-VL, LLaMA-Factory and ms-swift formats, checked and
published immutably (manifest last), with a dataset card. Entry point: :func:`export_dataset`.
"""

from labelloop.export.checker import ExportCheckError, Problem
from labelloop.export.plan import ExportError
from labelloop.export.run import ExportResult, export_dataset
from labelloop.export.version import (
    MANIFEST,
    VersionError,
    dataset_name,
    materialize,
    read_manifest,
    verify_version,
    version_prefix,
)

__all__ = [
    "MANIFEST",
    "ExportCheckError",
    "ExportError",
    "ExportResult",
    "Problem",
    "VersionError",
    "dataset_name",
    "export_dataset",
    "materialize",
    "read_manifest",
    "verify_version",
    "version_prefix",
]
