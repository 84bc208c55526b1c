"""Record validation with Great Expectations, quarantine and the quality gate.

Entry point: :func:`validate_spec` (then :func:`check_gate`). The suite is built from the task
spec (``suite.py``), records are flattened into frames (``frames.py``), GX runs in an ephemeral
context (``gx_runner.py``), and the report is a self-contained HTML page (``report.py``).
"""

from typing import TYPE_CHECKING, Any

from labelloop.validation.canonical import canonical_json, record_hash
from labelloop.validation.snapshot import iter_passing, load_passing, passed_key

if TYPE_CHECKING:
    from labelloop.validation.run import (
        QualityGateError,
        ValidationSummary,
        check_gate,
        gate_message,
        report_key,
        validate_spec,
    )

#: imported on first use: the validation machinery pulls in pandas and Great Expectations, which
#: the export (and its worker processes) never need
_RUN = {"QualityGateError", "ValidationSummary", "check_gate", "gate_message", "report_key", "validate_spec"}


def __getattr__(name: str) -> Any:
    if name in _RUN:
        from labelloop.validation import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "QualityGateError",
    "ValidationSummary",
    "canonical_json",
    "check_gate",
    "gate_message",
    "iter_passing",
    "load_passing",
    "passed_key",
    "record_hash",
    "report_key",
    "validate_spec",
]
