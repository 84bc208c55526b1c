"""CalibrateOperator: refit per-field auto-accept thresholds from the correction log.

Thin: `labelloop.calibration` does the work. Audit drift fails the task with
``AirflowFailException`` (no retries: the data will not change by retrying), after the
thresholds have been reset to full review, so routing is safe even before anyone reacts.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException


class CalibrateOperator(BaseOperator):
    def __init__(self, *, write_report: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.write_report = write_report

    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.calibration import DriftDetected, calibrate
        from labelloop.calibration.overview import calibration_overview
        from labelloop.calibration.report import write_report
        from labelloop.db import Database
        from labelloop.storage import open_store
        from labelloop_airflow.settings import airflow_settings

        settings = airflow_settings()
        db = Database(settings.db)
        try:
            result = calibrate(db, settings.calibration, raise_on_drift=False)
            report = None
            if self.write_report:
                overview = calibration_overview(db, settings.calibration, settings.routing)
                store = open_store(settings.storage)
                report = write_report(db, store, result, settings.calibration.target_error, overview=overview)
        finally:
            db.dispose()
        summary = {**result.as_dict(), "report": report}
        for f in summary["fields"]:
            self.log.info(
                "%s.%s %s %s: threshold %s (n=%s)",
                f["spec"],
                f["field"],
                f["model"],
                f["model_version"],
                f["threshold"],
                f["n_samples"],
            )
        for st in result.statements:
            self.log.info("%s: %s", st.title, " ".join(st.lines()[:1] + st.lines()[2:]))
        if result.drift:
            raise AirflowFailException(str(DriftDetected(result.drift)))
        return summary
