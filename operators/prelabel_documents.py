"""DocumentPrelabelOperator: pre-label one batch of documents.

Thin on purpose: the work lives in ``labelloop.prelabel.runner`` so the CLI, tests and Airflow run
the same code. The operator builds Settings, the database and the object store, picks the
document backend (MinerU settings may come from the ``mineru`` Airflow Connection) and runs the
batch; the returned stats go to XCom. Bad documents are recorded as failed predictions and never
fail the task; only infrastructure errors (database, store, unknown spec) do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

DOCUMENT_BACKENDS = ("pymupdf", "mineru")


class DocumentPrelabelOperator(BaseOperator):
    template_fields: Sequence[str] = ("spec", "backend", "item_ids", "limit")

    def __init__(
        self,
        *,
        spec: str = "document_layout",
        backend: str = "pymupdf",
        item_ids: list[int] | None = None,
        limit: int | None = None,
        concurrency: int | None = None,
        mineru_conn_id: str = "mineru",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.backend = backend
        self.item_ids = item_ids
        self.limit = limit
        self.concurrency = concurrency
        self.mineru_conn_id = mineru_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.config import Settings
        from labelloop.db import Database
        from labelloop.prelabel.factory import make_backend
        from labelloop.prelabel.runner import run_prelabel_sync
        from labelloop.specs import SpecRegistry
        from labelloop.storage import open_store

        if self.backend not in DOCUMENT_BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not a document backend ({', '.join(DOCUMENT_BACKENDS)})")
        settings = Settings()
        if self.backend == "mineru":
            from operators.hooks.mineru import MinerUHook

            settings = MinerUHook(self.mineru_conn_id).apply(settings)
        spec = SpecRegistry().get(self.spec)
        db = Database(settings.db)
        store = open_store(settings.storage)
        backend = make_backend(self.backend, settings, store)
        # MinerU subprocesses/servers take the parallelism; the CPU backend is CPU-bound anyway
        concurrency = self.concurrency or (4 if self.backend == "mineru" else 2)
        try:
            stats = run_prelabel_sync(
                db, store, spec, backend, item_ids=self.item_ids, limit=self.limit, concurrency=concurrency
            )
        finally:
            asyncio.run(backend.aclose())
            db.dispose()
        self.log.info(
            "pre-labeled %s documents with %s: %s ok, %s failed", stats.considered, self.backend, stats.ok, stats.failed
        )
        return stats.as_dict()
