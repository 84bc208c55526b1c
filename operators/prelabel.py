"""PrelabelOperator: pre-label one batch of images with one task spec and one backend.

Thin on purpose: the work lives in ``labelloop.prelabel.runner`` so the CLI, tests and Airflow run
the same code. The operator builds Settings (environment, then Airflow Connections: curation DB,
object store, and the ``vllm`` connection for the model server), the database and the store,
runs the batch, and returns the runner's stats for XCom. Bad images or bad model answers become
failed predictions and never fail the task; infrastructure errors (database, store, unknown
spec, unsupported spec for the backend) do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

IMAGE_BACKENDS = ("vllm", "rapidocr")


class PrelabelOperator(BaseOperator):
    template_fields: Sequence[str] = ("spec", "backend", "item_ids", "limit")

    def __init__(
        self,
        *,
        spec: str,
        backend: str = "vllm",
        item_ids: list[int] | None = None,
        limit: int | None = None,
        concurrency: int | None = None,
        vllm_conn_id: str = "vllm",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.backend = backend
        self.item_ids = item_ids
        self.limit = limit
        self.concurrency = concurrency
        self.vllm_conn_id = vllm_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.db import Database
        from labelloop.prelabel.factory import make_backend
        from labelloop.specs import SpecRegistry
        from labelloop.storage import open_store
        from operators.hooks.vllm import VLLMHook
        from operators.settings import airflow_settings

        if self.backend not in IMAGE_BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not an image backend ({', '.join(IMAGE_BACKENDS)})")
        settings = airflow_settings()
        if self.backend == "vllm":
            settings = VLLMHook(self.vllm_conn_id).apply(settings)
        spec = SpecRegistry().get(self.spec)
        db = Database(settings.db)
        store = open_store(settings.storage)
        backend = make_backend(self.backend, settings, store)
        # the model server takes `concurrency` requests at once; OCR is CPU-bound on this worker
        concurrency = self.concurrency or (settings.vllm.concurrency if self.backend == "vllm" else 2)
        try:
            stats = asyncio.run(self._run(db, store, spec, backend, concurrency))
        finally:
            db.dispose()
        self.log.info(
            "pre-labeled %s items (%s, %s): %s ok, %s failed, %s already done",
            stats.considered,
            self.spec,
            self.backend,
            stats.ok,
            stats.failed,
            stats.already_done,
        )
        return stats.as_dict()

    async def _run(self, db: Any, store: Any, spec: Any, backend: Any, concurrency: int) -> Any:
        """run_prelabel and the backend's close in one event loop.

        The backend's HTTP connections belong to the loop that opened them, so they are closed in
        that loop rather than after ``run_prelabel_sync`` has torn it down.
        """
        from labelloop.prelabel.runner import run_prelabel

        try:
            return await run_prelabel(
                db, store, spec, backend, item_ids=self.item_ids, limit=self.limit, concurrency=concurrency
            )
        finally:
            await backend.aclose()
