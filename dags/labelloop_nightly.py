"""labelloop_nightly: the whole loop, touching only what changed.

ingest what is new -> plan and pre-label the items without predictions (mapped batches) -> sync
reviews -> calibrate thresholds from the correction log -> route and import with the new
thresholds -> trigger labelloop_export per spec (its asset event then triggers training).
Params: source, jobs (a list of {spec, backend}), batch_size. Audit drift fails `calibrate`, which
stops routing for the night with the fields already reset to full review, and alerts.
"""

from __future__ import annotations

import datetime as dt

from _common import BACKENDS, DEFAULT_ARGS, START_DATE, spec_names
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Param
from labelloop_airflow.calibration import CalibrateOperator
from labelloop_airflow.pipeline import CheckJobsOperator, IngestOperator, JobSpecsOperator, PlanPrelabelOperator
from labelloop_airflow.prelabel import PrelabelOperator
from labelloop_airflow.review import LABEL_STUDIO_POOL, RouteAndImportOperator, SyncOperator

DEFAULT_JOBS = [{"spec": "ocr_lines", "backend": "cpu"}, {"spec": "document_layout", "backend": "cpu"}]

with DAG(
    dag_id="labelloop_nightly",
    description="Nightly refresh: ingest new, pre-label, sync, calibrate, route/import, export",
    schedule="0 2 * * *",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    render_template_as_native_obj=True,
    tags=["labelloop"],
    params={
        "source": Param(None, type=["null", "string"], description="Folder or s3://bucket/prefix with new files"),
        "jobs": Param(
            DEFAULT_JOBS,
            type="array",
            items={
                "type": "object",
                "required": ["spec"],
                "properties": {
                    "spec": {"type": "string", "enum": spec_names()},
                    "backend": {"type": "string", "enum": BACKENDS},
                },
            },
            minItems=1,
            description="What to pre-label: a list of {spec, backend}",
        ),
        "batch_size": Param(200, type="integer", minimum=1, maximum=100_000),
    },
) as dag:
    check = CheckJobsOperator(task_id="check_params", jobs="{{ params.jobs }}", retries=0)
    ingest = IngestOperator(task_id="ingest", source="{{ params.source }}", execution_timeout=dt.timedelta(hours=6))
    plan = PlanPrelabelOperator(
        task_id="plan_batches", jobs=check.output, batch_size="{{ params.batch_size }}", trigger_rule="none_failed"
    )
    prelabel = PrelabelOperator.partial(
        task_id="prelabel", execution_timeout=dt.timedelta(hours=4), max_active_tis_per_dagrun=4
    ).expand_kwargs(plan.output)
    specs = JobSpecsOperator(task_id="specs", jobs="{{ params.jobs }}", retries=0).output
    sync = SyncOperator.partial(task_id="sync", trigger_rule="none_failed").expand_kwargs(specs)
    calibrate = CalibrateOperator(task_id="calibrate", retries=0)
    route = RouteAndImportOperator.partial(
        task_id="route_and_import", pool=LABEL_STUDIO_POOL, max_active_tis_per_dag=1
    ).expand_kwargs(specs)
    export = TriggerDagRunOperator.partial(
        task_id="trigger_export", trigger_dag_id="labelloop_export", wait_for_completion=False
    ).expand(conf=specs)
    check >> ingest >> plan >> prelabel >> sync >> calibrate >> route >> export
