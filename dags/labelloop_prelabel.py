"""labelloop_prelabel: ingest (optional) -> plan batches -> pre-label (mapped, one task per batch)
-> route and import into Label Studio.

Trigger it from the UI, the CLI (`airflow dags trigger labelloop_prelabel -c '{...}'`) or REST with
params: source (folder or s3://bucket/prefix, optional), spec, backend (cpu = RapidOCR for images,
the pymupdf layout backend for PDFs; or vllm / rapidocr / pymupdf / mineru), limit, batch_size.
A wrong spec name is refused by the params schema; a backend that cannot serve the spec's media
fails the first task, before any work. Every step is idempotent, so a rerun continues where a
failed run stopped.
"""

from __future__ import annotations

import datetime as dt

from _common import BACKENDS, DEFAULT_ARGS, START_DATE, spec_names
from airflow.sdk import DAG, Param
from labelloop_airflow.pipeline import CheckJobsOperator, IngestOperator, PlanPrelabelOperator
from labelloop_airflow.prelabel import PrelabelOperator
from labelloop_airflow.review import LABEL_STUDIO_POOL, RouteAndImportOperator

with DAG(
    dag_id="labelloop_prelabel",
    description="Ingest, pre-label in batches, route and import review tasks",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    default_args=DEFAULT_ARGS,
    render_template_as_native_obj=True,
    tags=["labelloop"],
    params={
        "source": Param(None, type=["null", "string"], description="Folder or s3://bucket/prefix to ingest first"),
        "spec": Param("ocr_lines", type="string", enum=spec_names(), description="Task spec"),
        "backend": Param("cpu", type="string", enum=BACKENDS, description="Pre-label backend"),
        "limit": Param(None, type=["null", "integer"], minimum=1, description="At most this many items"),
        "batch_size": Param(200, type="integer", minimum=1, maximum=100_000, description="Items per mapped task"),
    },
) as dag:
    check = CheckJobsOperator(
        task_id="check_params", jobs={"spec": "{{ params.spec }}", "backend": "{{ params.backend }}"}, retries=0
    )
    ingest = IngestOperator(task_id="ingest", source="{{ params.source }}", execution_timeout=dt.timedelta(hours=6))
    plan = PlanPrelabelOperator(
        task_id="plan_batches",
        jobs=check.output,
        batch_size="{{ params.batch_size }}",
        limit="{{ params.limit }}",
        trigger_rule="none_failed",  # a skipped ingest (no source) still plans
    )
    prelabel = PrelabelOperator.partial(
        task_id="prelabel", execution_timeout=dt.timedelta(hours=4), max_active_tis_per_dagrun=4
    ).expand_kwargs(plan.output)
    route = RouteAndImportOperator(
        task_id="route_and_import",
        spec="{{ params.spec }}",
        trigger_rule="none_failed",  # nothing to pre-label (no batches) still routes what is pending
        pool=LABEL_STUDIO_POOL,  # shared with every DAG that writes to Label Studio; plus the core's DB lock
        max_active_tis_per_dag=1,
        execution_timeout=dt.timedelta(hours=2),
    )
    check >> ingest >> plan >> prelabel >> route
