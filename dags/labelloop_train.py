"""labelloop_train: train on each new dataset version, scheduled on the ``labelloop_datasets`` asset.

prepare (newest announced version per spec: materialize locally, write qwen-vl-finetune's
``data_dict`` entry and ``--dataset_use``) -> evaluate_backends (``labelloop eval`` of the
``eval_backends`` param on each spec's reviewed records, report in ``reports/eval/``) and launch
(mapped: one training run per version; the
launcher is ``LABELLOOP_TRAINING__LAUNCHER``, by default a subprocess of
``LABELLOOP_TRAINING__COMMAND``; see ``labelloop.training`` for the production torchrun command).
A manual run can name a version instead: conf ``{"spec": ..., "version": "v0003"}``.

Runs on a GPU node in production (a dedicated Celery queue, or KubernetesPodOperator in place of
the launch task); the DAG must be unpaused for asset events to queue it.
"""

from __future__ import annotations

from _common import DATASETS, DEFAULT_ARGS, START_DATE, build_settings
from airflow.sdk import DAG, Param
from labelloop_airflow.evaluation import EvaluateOperator
from labelloop_airflow.training import LaunchTrainingOperator, PrepareTrainingOperator

with DAG(
    dag_id="labelloop_train",
    description="Register a published dataset version with qwen-vl-finetune and launch training",
    schedule=[DATASETS],
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "retries": 0},
    tags=["labelloop"],
    params={
        "spec": Param(None, type=["null", "string"], description="Manual run: the spec"),
        "version": Param(None, type=["null", "string"], description="Manual run: the version, e.g. v0003"),
        "eval_backends": Param(
            ["vllm"],
            type="array",
            items={"type": "string"},
            description="backend[@model_version] scored against the reviewed records (labelloop eval)",
        ),
    },
) as dag:
    prepare = PrepareTrainingOperator(task_id="prepare_dataset", settings_factory=build_settings)
    EvaluateOperator(
        task_id="evaluate_backends",
        jobs=prepare.output,
        settings_factory=build_settings,
    )
    LaunchTrainingOperator.partial(task_id="launch_training", settings_factory=build_settings).expand(
        job=prepare.output
    )
