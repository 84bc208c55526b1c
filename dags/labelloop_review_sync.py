"""labelloop_review_sync: every few minutes, pull new and edited annotations from Label Studio into
the curation DB (records, correction log), one mapped task per task spec. Incremental by a
watermark stored in the DB, so each run reads only what changed since the last one."""

from __future__ import annotations

import datetime as dt

from _common import DEFAULT_ARGS, START_DATE, spec_names
from airflow.sdk import DAG
from labelloop_airflow.review import SyncOperator

with DAG(
    dag_id="labelloop_review_sync",
    description="Incremental sync of Label Studio annotations and the correction log",
    schedule=dt.timedelta(minutes=10),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["labelloop"],
) as dag:
    SyncOperator.partial(task_id="sync", execution_timeout=dt.timedelta(minutes=30)).expand(spec=spec_names())
