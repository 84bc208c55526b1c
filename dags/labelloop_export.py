"""labelloop_export: validate a spec's records, apply the quality gate, publish a dataset version.

validate (Great Expectations; quarantine; HTML report) -> quality_gate (fails the run above
``max_failed_share``) -> export (immutable version, manifest last) with the ``labelloop_datasets``
asset as outlet: a new version emits an asset event whose extra carries the summary and the
version's URI, which schedules ``labelloop_train``. Nothing new: the export task is skipped and no
event is emitted. One run at a time, so two exports never race for a version name.
"""

from __future__ import annotations

from _common import DATASETS, DEFAULT_ARGS, START_DATE, build_settings, spec_names
from airflow.sdk import DAG, Param
from labelloop_airflow.export import ExportDatasetOperator, QualityGateOperator, ValidateRecordsOperator

with DAG(
    dag_id="labelloop_export",
    description="Validate records, quality gate, publish a fine-tuning dataset version",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    render_template_as_native_obj=True,
    tags=["labelloop"],
    params={
        "spec": Param("vehicle_extraction", type="string", enum=spec_names(), description="Task spec"),
        "max_failed_share": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=1,
            description="Quality gate override; null = LABELLOOP_EXPORT__MAX_FAILED_SHARE",
        ),
        "announce_existing": Param(
            False,
            type="boolean",
            description="Emit the asset event even when nothing changed",
        ),
    },
) as dag:
    validate = ValidateRecordsOperator(
        task_id="validate",
        spec="{{ params.spec }}",
        max_failed_share="{{ params.max_failed_share }}",
        settings_factory=build_settings,
    )
    gate = QualityGateOperator(task_id="quality_gate", validate_task_id="validate", retries=0)
    export = ExportDatasetOperator(
        task_id="export",
        spec="{{ params.spec }}",
        validate_task_id="validate",
        announce_existing="{{ params.announce_existing }}",
        settings_factory=build_settings,
        outlets=[DATASETS],
    )
    validate >> gate >> export
