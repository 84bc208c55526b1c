"""Operators of the export DAG: validate -> quality gate -> export (with the asset outlet).

Thin on purpose: each builds Settings (environment + Airflow Connections, see
``operators.settings``), the database and the object store, and calls one function of
``labelloop.validation`` / ``labelloop.export``. The CLI and tests run the same functions.

Outcomes map onto Airflow states: a failed gate or a broken export is ``AirflowFailException``
(retrying cannot fix data); an export with nothing new is ``AirflowSkipException``, which
emits no asset event, so training is not triggered for an unchanged dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

if TYPE_CHECKING:
    from labelloop.config import Settings
    from labelloop.db import Database
    from labelloop.storage import ObjectStore

SettingsFactory = Callable[[], "Settings"]


def default_settings() -> Settings:
    from labelloop_airflow.settings import airflow_settings

    return airflow_settings()


@contextmanager
def labelloop_env(factory: SettingsFactory | None) -> Iterator[tuple[Settings, Database, ObjectStore]]:
    """Settings, an open Database (disposed afterwards) and the object store for one task."""
    from labelloop.db import Database
    from labelloop.storage import open_store

    settings = (factory or default_settings)()
    db = Database(settings.db)
    try:
        yield settings, db, open_store(settings.storage)
    finally:
        db.dispose()


def _optional_float(value: Any) -> float | None:
    return None if value in (None, "", "None") else float(value)


class ValidateRecordsOperator(BaseOperator):
    """Validate all records of a spec with Great Expectations; XCom: the run summary."""

    template_fields: Sequence[str] = ("spec", "max_failed_share")

    def __init__(
        self,
        *,
        spec: str,
        max_failed_share: float | str | None = None,
        settings_factory: SettingsFactory | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.max_failed_share = max_failed_share
        self.settings_factory = settings_factory

    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.specs import SpecRegistry
        from labelloop.validation import validate_spec

        with labelloop_env(self.settings_factory) as (settings, db, store):
            spec = SpecRegistry.from_settings(settings).get(self.spec)
            limit = _optional_float(self.max_failed_share)
            summary = validate_spec(db, store, settings, spec, max_failed_share=limit)
        self.log.info(
            "validated %s: %d records, %d failed (%.2f%%), gate %s, report %s",
            summary.spec,
            summary.n_records,
            summary.n_failed,
            100 * summary.failed_share,
            "passed" if summary.passed_gate else "FAILED",
            summary.report_key,
        )
        return summary.as_dict()


class QualityGateOperator(BaseOperator):
    """Fail the run (no retries) when the validation run exceeded its allowed failed share."""

    def __init__(self, *, validate_task_id: str = "validate", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validate_task_id = validate_task_id

    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.validation import QualityGateError, check_gate

        summary = context["ti"].xcom_pull(task_ids=self.validate_task_id)
        try:
            check_gate(summary)
        except QualityGateError as e:
            raise AirflowFailException(str(e)) from e
        return summary


class ExportDatasetOperator(BaseOperator):
    """Publish a dataset version from the gate-approved validation run; announce it on the outlets.

    The asset event's extra is the export summary (spec, version, URI of the version folder,
    counts, manifest sha256), which ``labelloop_train`` reads. ``announce_existing`` re-emits the
    event for an unchanged dataset (e.g. to retrain after a lost event).
    """

    template_fields: Sequence[str] = ("spec", "announce_existing")

    def __init__(
        self,
        *,
        spec: str,
        validate_task_id: str = "validate",
        announce_existing: bool | str = False,
        threads: int = 16,
        settings_factory: SettingsFactory | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.validate_task_id = validate_task_id
        self.announce_existing = announce_existing
        self.threads = threads
        self.settings_factory = settings_factory

    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.export import ExportCheckError, ExportError, export_dataset
        from labelloop.specs import SpecRegistry

        summary = context["ti"].xcom_pull(task_ids=self.validate_task_id) or {}
        with labelloop_env(self.settings_factory) as (settings, db, store):
            spec = SpecRegistry.from_settings(settings).get(self.spec)
            try:
                result = export_dataset(
                    db,
                    store,
                    settings,
                    spec,
                    validation_run_id=summary.get("validation_run_id"),
                    threads=self.threads,
                )
            except (ExportCheckError, ExportError) as e:
                raise AirflowFailException(str(e)) from e
        announce = result.created or (
            result.version is not None and str(self.announce_existing).lower() in ("true", "1")
        )
        if not announce:
            raise AirflowSkipException(f"no new dataset version of {self.spec}: {result.reason}")
        extra = result.as_dict()
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = extra
        self.log.info("published %s %s at %s: %s", result.spec, result.version, result.uri, result.counts)
        return extra
