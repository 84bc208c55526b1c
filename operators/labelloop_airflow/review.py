"""Review operators: route + import one batch of predictions, and sync reviewed work back.

Thin on purpose: the work lives in ``labelloop.review`` so the CLI, tests and Airflow run the same
code. Both operators are safe to retry: routing never re-decides, the import looks up external
ids before each chunk, and the sync watermark only moves with committed data. Two importers can
never race: the core holds a lock in the curation DB per spec for the whole import, and the
import task runs in the one-slot pool :data:`LABEL_STUDIO_POOL` shared by every DAG that writes
to Label Studio (``max_active_tis_per_dag`` only limits one DAG; the prelabel DAG and the
nightly overlap). The pool is created by ``airflow-init`` (docker-compose) and the demo.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

#: the Airflow pool (1 slot) of every task that writes to Label Studio
LABEL_STUDIO_POOL = "labelloop_label_studio"


def review_settings(label_studio_conn_id: str) -> Any:
    """Environment defaults with every connection on top (curation DB, object store, Label
    Studio), the Label Studio one from ``label_studio_conn_id``."""
    from labelloop_airflow.hooks.label_studio import LabelStudioHook
    from labelloop_airflow.settings import airflow_settings

    settings = airflow_settings()
    if label_studio_conn_id != LabelStudioHook.default_conn_name:
        settings = LabelStudioHook(label_studio_conn_id).apply(settings)
    return settings


def _context(conn_id: str) -> tuple[Any, Any, Any, Any]:
    """Settings, curation DB, object store and a verified SDK client."""
    from labelloop.db import Database
    from labelloop.review.client import client_from_settings
    from labelloop.storage import open_store

    settings = review_settings(conn_id)
    return settings, Database(settings.db), open_store(settings.storage), client_from_settings(settings.label_studio)


class RouteAndImportOperator(BaseOperator):
    """Route the spec's unrouted predictions (optionally only ``prediction_ids``/``item_ids``) and
    import every pending review task of the spec (at most ``limit``) into Label Studio."""

    template_fields: Sequence[str] = ("spec", "prediction_ids", "item_ids", "limit")

    def __init__(
        self,
        *,
        spec: str,
        prediction_ids: list[int] | None = None,
        item_ids: list[int] | None = None,
        limit: int | None = None,
        label_studio_conn_id: str = "label_studio",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.prediction_ids = prediction_ids
        self.item_ids = item_ids
        self.limit = limit
        self.label_studio_conn_id = label_studio_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.review.importer import import_pending
        from labelloop.review.routing import route_predictions
        from labelloop.specs import SpecRegistry

        settings, db, store, ls = _context(self.label_studio_conn_id)
        registry = SpecRegistry.from_settings(settings)
        spec = registry.get(self.spec)
        try:
            routed = route_predictions(
                db, settings.routing, spec, prediction_ids=self.prediction_ids, item_ids=self.item_ids
            )
            self.log.info("routed %s: %s", spec.name, routed.as_dict())
            imported = import_pending(db, ls, settings, spec, registry.label_config(spec), store, limit=self.limit)
            self.log.info("imported %s: %s", spec.name, imported.as_dict())
        finally:
            db.dispose()
        return {"routing": routed.as_dict(), "import": imported.as_dict()}


class SyncOperator(BaseOperator):
    """Sync the spec's Label Studio project: annotations, correction log, records, deletions."""

    template_fields: Sequence[str] = ("spec",)

    def __init__(
        self,
        *,
        spec: str,
        detect_deleted: bool = True,
        label_studio_conn_id: str = "label_studio",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.detect_deleted = detect_deleted
        self.label_studio_conn_id = label_studio_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.review.sync import sync_project
        from labelloop.specs import SpecRegistry

        settings, db, _store, ls = _context(self.label_studio_conn_id)
        spec = SpecRegistry.from_settings(settings).get(self.spec)
        try:
            stats = sync_project(db, ls, settings, spec, detect_deleted=self.detect_deleted)
        finally:
            db.dispose()
        self.log.info("synced %s: %s", spec.name, stats.as_dict())
        return stats.as_dict()
