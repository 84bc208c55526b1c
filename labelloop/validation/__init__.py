"""Record validation with Great Expectations, quarantine and the quality gate.

Entry point: :func:`validate_spec` (then :func:`check_gate`). The suite is built from the task
spec (``suite.py``), records are flattened into frames (``frames.py``), GX runs in an ephemeral
context (``gx_runner.py``), and the report is a self-contained HTML page (``report.py``).
"""

from labelloop.validation.canonical import canonical_json, record_hash
from labelloop.validation.run import (
    QualityGateError,
    ValidationSummary,
    check_gate,
    gate_message,
    iter_passing,
    load_passing,
    passed_key,
    report_key,
    validate_spec,
)

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
