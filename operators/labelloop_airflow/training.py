"""Operators of the training DAG: prepare the dataset registration, then launch training.

``PrepareTrainingOperator`` takes the dataset versions announced by the triggering asset events
(or ``params.spec``/``params.version`` for a manual run), keeps the newest version per spec,
materializes each locally and writes qwen-vl-finetune's registration next to it. Its XCom is a
list, so ``LaunchTrainingOperator`` is mapped over it: one launch (one ``training_runs`` row)
per dataset version.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from labelloop_airflow.export import SettingsFactory, labelloop_env


def _version_key(summary: dict[str, Any]) -> tuple[int, str]:
    return int(summary.get("dataset_version_id") or 0), str(summary.get("version") or "")


def newest_per_spec(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Several queued events (versions) of one spec train only the newest."""
    best: dict[str, dict[str, Any]] = {}
    for s in summaries:
        if (
            s.get("spec")
            and s.get("prefix")
            and (s["spec"] not in best or _version_key(s) > _version_key(best[s["spec"]]))
        ):
            best[s["spec"]] = s
    return [best[k] for k in sorted(best)]


class PrepareTrainingOperator(BaseOperator):
    def __init__(self, *, settings_factory: SettingsFactory | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings_factory = settings_factory

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from labelloop.export import ExportResult
        from labelloop.training import prepare_registration

        summaries = [
            dict(ev.extra)
            for events in (context.get("triggering_asset_events") or {}).values()
            for ev in events
            if ev.extra
        ]
        params = context.get("params") or {}
        with labelloop_env(self.settings_factory) as (settings, db, store):
            if params.get("spec") and params.get("version"):
                summaries.append(self._lookup(db, params["spec"], params["version"], ExportResult))
            jobs = []
            for summary in newest_per_spec(summaries):
                reg = prepare_registration(store, settings, summary)
                self.log.info("registered %s from %s in %s", reg.name, reg.uri, reg.run_dir)
                jobs.append({"registration": reg.as_dict(), "summary": summary})
        if not jobs:
            raise AirflowSkipException("no dataset version to train on (no asset event, no params)")
        return jobs

    @staticmethod
    def _lookup(db: Any, spec: str, version: str, result_cls: Any) -> dict[str, Any]:
        from sqlalchemy import select

        from labelloop.db import DatasetVersion

        with db.session() as s:
            dv = s.scalars(
                select(DatasetVersion).where(DatasetVersion.spec == spec, DatasetVersion.version == version)
            ).first()
        if dv is None:
            raise AirflowFailException(f"dataset version {spec} {version} is not registered")
        return result_cls.of(dv, created=False).as_dict()


class LaunchTrainingOperator(BaseOperator):
    """Launch training for one prepared registration and record it; fail when training failed."""

    def __init__(
        self,
        *,
        job: dict[str, Any],
        settings_factory: SettingsFactory | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.settings_factory = settings_factory

    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.training import Registration, launch_training

        reg = Registration(**self.job["registration"])
        with labelloop_env(self.settings_factory) as (settings, db, _store):
            result = launch_training(
                db, settings, reg, summary=self.job.get("summary"), airflow_run_id=context["run_id"]
            )
        self.log.info(
            "training %s of %s: %s (rc=%s)\n%s",
            result.training_run_id,
            reg.name,
            result.status,
            result.return_code,
            result.log_tail,
        )
        if not result.ok:
            raise AirflowFailException(
                f"training run {result.training_run_id} on {reg.name}: {result.status}, "
                f"return code {result.return_code}"
            )
        return result.as_dict()
