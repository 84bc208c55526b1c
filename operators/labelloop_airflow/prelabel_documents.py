"""DocumentPrelabelOperator: :class:`operators.prelabel.PrelabelOperator` with document defaults
(spec ``document_layout``, the offline pymupdf layout backend)."""

from __future__ import annotations

from typing import Any

from labelloop_airflow.prelabel import PrelabelOperator


class DocumentPrelabelOperator(PrelabelOperator):
    def __init__(self, *, spec: str = "document_layout", backend: str = "pymupdf", **kwargs: Any) -> None:
        super().__init__(spec=spec, backend=backend, **kwargs)
