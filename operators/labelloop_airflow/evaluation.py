"""EvaluateOperator: score backends against the reviewed records of each spec just registered for training.

Thin: ``labelloop.evaluation.run_eval`` does the work (the same as ``labelloop eval``). It runs
after ``prepare_dataset`` in ``labelloop_train`` so every training run has, next to it, the
scores of the models it is meant to beat (``reports/eval/<spec>/<run>/``). A spec whose
backends have no predictions on reviewed items is reported and skipped, not failed: there is
nothing to compare yet, and training must not wait for it.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from labelloop_airflow.export import SettingsFactory, labelloop_env


class EvaluateOperator(BaseOperator):
    """``backends`` defaults to the run's ``eval_backends`` param."""

    #: ``jobs`` is prepare_dataset's XCom: a templated field, so Airflow resolves it at run time
    template_fields = ("jobs",)

    def __init__(
        self,
        *,
        jobs: Any,
        backends: list[str] | None = None,
        settings_factory: SettingsFactory | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.jobs = jobs
        self.backends = backends
        self.settings_factory = settings_factory

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from labelloop.evaluation.run import run_eval
        from labelloop.specs import SpecRegistry

        backends = list(self.backends or (context.get("params") or {}).get("eval_backends") or [])
        targets = [(b.partition("@")[0], b.partition("@")[2] or None) for b in backends]
        specs = sorted({(job.get("summary") or {}).get("spec") for job in (self.jobs or [])} - {None})
        out: list[dict[str, Any]] = []
        with labelloop_env(self.settings_factory) as (settings, db, store):
            for name in specs:
                try:
                    report = run_eval(db, store, SpecRegistry().get(name), targets, settings.routing)
                except ValueError as e:
                    self.log.warning("eval of %s skipped: %s", name, e)
                    continue
                self.log.info("eval of %s: %s", name, store.uri(report.keys["json"]))
                out.append(report.as_dict())
        if not out:
            raise AirflowSkipException(f"nothing to evaluate for {specs} with {backends}")
        return out
