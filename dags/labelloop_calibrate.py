"""labelloop_calibrate: refit per-field auto-accept thresholds from the correction log (nightly,
before routing). Audit drift resets the affected fields to full review and fails the run, so
Airflow's alerting fires; the report lands in reports/calibration/ of the object store."""

from __future__ import annotations

from _common import DEFAULT_ARGS, START_DATE
from airflow.sdk import DAG
from labelloop_airflow.calibration import CalibrateOperator

with DAG(
    dag_id="labelloop_calibrate",
    description="Per-field auto-accept thresholds that hold a target error rate",
    schedule="0 1 * * *",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["labelloop"],
) as dag:
    CalibrateOperator(task_id="calibrate", retries=0)
