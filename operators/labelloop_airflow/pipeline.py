"""Operators that glue the pre-label DAGs together: parameter check, ingest, batch planning.

Each is thin: it builds Settings (environment + Airflow Connections), the database and the store,
and calls one function of ``labelloop``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException


def _jobs(jobs: Any) -> list[dict[str, str]]:
    if isinstance(jobs, dict):
        jobs = [jobs]
    if not isinstance(jobs, list) or not all(isinstance(j, dict) and "spec" in j for j in jobs):
        raise AirflowFailException(f"jobs must be a list of {{'spec': ..., 'backend': ...}}, got {jobs!r}")
    return [{"spec": str(j["spec"]), "backend": str(j.get("backend") or "cpu")} for j in jobs]


class CheckJobsOperator(BaseOperator):
    """Fail before any work when a spec is unknown or a backend cannot serve a spec's media.

    Returns the jobs with backends resolved ("cpu" -> the offline backend of the spec's media)."""

    template_fields: Sequence[str] = ("jobs",)

    def __init__(self, *, jobs: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.jobs = jobs

    def execute(self, context: Any) -> list[dict[str, str]]:
        from labelloop.config import Settings
        from labelloop.prelabel.plan import resolve_backend_name
        from labelloop.specs import SpecError, SpecRegistry

        registry = SpecRegistry.from_settings(Settings())  # spec folders come from the environment
        resolved = []
        for job in _jobs(self.jobs):
            try:
                spec = registry.get(job["spec"])
                resolved.append({"spec": spec.name, "backend": resolve_backend_name(spec, job["backend"])})
            except (SpecError, ValueError) as e:
                raise AirflowFailException(str(e)) from e
        return resolved


class JobSpecsOperator(CheckJobsOperator):
    """The jobs' distinct specs as [{"spec": name}], for per-spec mapped tasks (sync, route, export:
    Airflow maps only over a task's return value)."""

    def execute(self, context: Any) -> list[dict[str, str]]:  # type: ignore[override]
        jobs = super().execute(context)
        return [{"spec": name} for name in dict.fromkeys(j["spec"] for j in jobs)]


class IngestOperator(BaseOperator):
    """Ingest a folder or s3:// prefix; skipped when no source is given."""

    template_fields: Sequence[str] = ("source",)

    def __init__(self, *, source: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source

    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.db import Database
        from labelloop.ingest import ingest
        from labelloop.storage import open_store
        from labelloop_airflow.settings import airflow_settings

        if self.source in (None, "", "None"):
            raise AirflowSkipException("no source given: nothing to ingest")
        settings = airflow_settings()
        db = Database(settings.db)
        db.upgrade()  # a fresh deployment: create the schema on first use (no-op afterwards)
        try:
            stats = ingest(db, open_store(settings.storage), settings, str(self.source))
        except FileNotFoundError as e:
            raise AirflowFailException(str(e)) from e
        finally:
            db.dispose()
        self.log.info("ingest %s", stats.as_dict())
        return stats.as_dict()


class PlanPrelabelOperator(BaseOperator):
    """Batches of item ids still lacking each job's prediction, as kwargs for
    ``PrelabelOperator.partial(...).expand_kwargs(...)``: one mapped task per batch, never per item."""

    template_fields: Sequence[str] = ("jobs", "batch_size", "limit")

    def __init__(self, *, jobs: Any, batch_size: Any = 200, limit: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.jobs = jobs
        self.batch_size = batch_size
        self.limit = limit

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from labelloop.db import Database
        from labelloop.prelabel.plan import plan_for
        from labelloop.specs import SpecRegistry
        from labelloop.storage import open_store
        from labelloop_airflow.settings import airflow_settings

        settings = airflow_settings()
        db = Database(settings.db)
        db.upgrade()
        store = open_store(settings.storage)
        registry = SpecRegistry.from_settings(settings)
        limit = int(self.limit) if self.limit not in (None, "", "None") else None
        out: list[dict[str, Any]] = []
        try:
            for job in _jobs(self.jobs):
                name, batches = plan_for(
                    settings, db, store, registry.get(job["spec"]), job["backend"], int(self.batch_size), limit
                )
                self.log.info(
                    "%s with %s: %s batches, %s items", job["spec"], name, len(batches), sum(map(len, batches))
                )
                out.extend({"spec": job["spec"], "backend": name, "item_ids": b} for b in batches)
        finally:
            db.dispose()
        return out
