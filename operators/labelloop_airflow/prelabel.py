"""PrelabelOperator: pre-label one batch of items with one task spec and one backend.

Thin on purpose: the work lives in ``labelloop.prelabel.runner`` so the CLI, tests and Airflow run
the same code. The operator builds Settings (environment, then Airflow Connections: curation DB,
object store, vLLM, MinerU), the database and the store, runs the batch, and returns the runner's
stats for XCom. ``backend="cpu"`` means the offline backend for the spec's media (RapidOCR for
images, the pymupdf layout backend for documents). Bad items or bad model answers become failed
predictions and never fail the task; infrastructure errors (database, store, unknown spec, a
backend that does not suit the spec) do, and so does a batch in which more than
``settings.prelabel.max_transient_failure_share`` failed for transient reasons or that stopped
early because the model server was down (``PrelabelBatchError``: Airflow alerts and retries; the
retry predicts only what is missing or due).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator


class PrelabelOperator(BaseOperator):
    template_fields: Sequence[str] = ("spec", "backend", "item_ids", "limit", "retry_failed")

    def __init__(
        self,
        *,
        spec: str,
        backend: str = "vllm",
        item_ids: list[int] | None = None,
        limit: int | None = None,
        concurrency: int | None = None,
        retry_failed: bool = False,
        vllm_conn_id: str = "vllm",
        mineru_conn_id: str = "mineru",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.backend = backend
        self.item_ids = item_ids
        self.limit = limit
        self.concurrency = concurrency
        self.retry_failed = retry_failed
        self.vllm_conn_id = vllm_conn_id
        self.mineru_conn_id = mineru_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.db import Database
        from labelloop.prelabel.factory import default_concurrency, make_backend
        from labelloop.prelabel.plan import resolve_backend_name
        from labelloop.specs import SpecRegistry
        from labelloop.storage import open_store
        from labelloop_airflow.hooks.mineru import MinerUHook
        from labelloop_airflow.hooks.vllm import VLLMHook
        from labelloop_airflow.settings import airflow_settings

        settings = airflow_settings()
        spec = SpecRegistry.from_settings(settings).get(self.spec)
        name = resolve_backend_name(spec, self.backend)
        if name == "vllm":
            settings = VLLMHook(self.vllm_conn_id).apply(settings)
        elif name == "mineru":
            settings = MinerUHook(self.mineru_conn_id).apply(settings)
        db = Database(settings.db)
        store = open_store(settings.storage)
        backend = make_backend(name, settings, store)
        concurrency = self.concurrency or default_concurrency(name, settings)
        item_ids = [int(i) for i in self.item_ids] if self.item_ids is not None else None
        limit = int(self.limit) if self.limit not in (None, "", "None") else None
        try:
            stats = asyncio.run(self._run(db, store, spec, backend, concurrency, item_ids, limit, settings.prelabel))
        finally:
            db.dispose()
        self.log.info(
            "pre-labeled %s items (%s, %s): %s ok, %s failed, %s already done",
            stats.considered,
            self.spec,
            name,
            stats.ok,
            stats.failed,
            stats.already_done,
        )
        return stats.as_dict()

    async def _run(
        self, db: Any, store: Any, spec: Any, backend: Any, concurrency: int, item_ids: Any, limit: Any, policy: Any
    ) -> Any:
        """run_prelabel and the backend's close in one event loop.

        The backend's HTTP connections belong to the loop that opened them, so they are closed in
        that loop rather than after ``run_prelabel_sync`` has torn it down.
        """
        from labelloop.prelabel.runner import run_prelabel

        try:
            return await run_prelabel(
                db,
                store,
                spec,
                backend,
                item_ids=item_ids,
                limit=limit,
                concurrency=concurrency,
                policy=policy,
                retry_failed=self.retry_failed in (True, "True", "true", "1"),
            )
        finally:
            await backend.aclose()
