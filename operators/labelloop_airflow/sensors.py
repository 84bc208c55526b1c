"""Wait until annotators have finished enough new work to make a sync worthwhile.

Label Studio has no "task completed" webhook and its webhooks are fire-and-forget (1 s timeout, no
retry), so this sensor polls: the number of tasks of the spec's project with at least one
(non-skipped) annotation that changed after the last sync watermark. It runs in ``reschedule``
mode by default, so a long wait holds no worker slot between pokes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue


class LabelStudioCompletedSensor(BaseSensorOperator):
    """Done when the spec's project has ``min_completed`` tasks completed since the last sync;
    pushes that count to XCom."""

    template_fields: Sequence[str] = ("spec", "min_completed")

    def __init__(
        self,
        *,
        spec: str,
        min_completed: int = 1,
        label_studio_conn_id: str = "label_studio",
        mode: str = "reschedule",
        poke_interval: float = 300,
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, poke_interval=poke_interval, **kwargs)
        self.spec = spec
        self.min_completed = min_completed
        self.label_studio_conn_id = label_studio_conn_id

    def poke(self, context: Any) -> PokeReturnValue:
        from labelloop.db import Database
        from labelloop.review.client import client_from_settings
        from labelloop.review.sync import count_new_completed
        from labelloop.specs import SpecRegistry
        from labelloop_airflow.review import review_settings

        settings = review_settings(self.label_studio_conn_id)
        spec = SpecRegistry.from_settings(settings).get(self.spec)
        db = Database(settings.db)
        try:
            n = count_new_completed(db, client_from_settings(settings.label_studio), settings, spec)
        finally:
            db.dispose()
        self.log.info("%s: %s tasks completed since the last sync (waiting for %s)", spec.name, n, self.min_completed)
        return PokeReturnValue(is_done=n >= int(self.min_completed), xcom_value=n)
