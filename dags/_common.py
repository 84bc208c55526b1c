"""Helpers shared by the labelloop DAGs: default args, settings, the dataset asset.

Kept free of work at import time beyond reading the spec YAML files (for Param choices): the DAG
processor imports every DAG file often.

The dataset asset: **one** asset for every spec, ``labelloop_datasets``. The export DAG picks its
spec at run time (a Param), and Airflow emits an event on *every* outlet of a successful task, so
per-spec assets would need one export DAG per spec. Each event's extra names the spec, the
version and the version folder's URI (``uri``); ``labelloop_train`` trains on the newest version
per spec among the events that triggered it. A consumer interested in one spec reads
``extra["spec"]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pendulum
from airflow.sdk import Asset

if TYPE_CHECKING:
    from labelloop.config import Settings

DATASETS = Asset(name="labelloop_datasets", uri="labelloop://datasets/")
START_DATE = pendulum.datetime(2025, 1, 1, tz="UTC")
#: No ``retry_delay`` here: it comes from ``[core] default_task_retry_delay`` of the deployment
#: (docker-compose.yaml sets it, and the test cluster shortens it), so one setting governs every task.
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "labelloop",
    "retries": 1,
}
#: The Airflow pool (1 slot) every task that writes to Label Studio runs in, across all DAGs: Label
#: Studio has no upsert, so two importers at once would duplicate tasks. Deployments create it
#: (docker-compose's airflow-init, tests/airflow_cluster.py, scripts/demo.py).
from labelloop_airflow.review import LABEL_STUDIO_POOL  # noqa: E402,F401  (one definition, in the operators)


def build_settings() -> Settings:
    """labelloop Settings inside a task: environment (``LABELLOOP_*``, ``LABELLOOP_CONFIG_FILE``)
    with the Airflow Connections that exist (curation DB, object store, ...) laid on top."""
    from labelloop_airflow.settings import airflow_settings

    return airflow_settings()


def spec_names() -> list[str]:
    """Names of the shipped task specs and those in ``LABELLOOP_SPECS__DIRS``, for Param choices
    (read from YAML at parse time; connections are not needed for this, so none are read)."""
    from labelloop.config import Settings
    from labelloop.specs import SpecRegistry

    return SpecRegistry.from_settings(Settings()).names()


#: pre-label backends a DAG param may name ("cpu" = the offline backend for the spec's media)
BACKENDS = ["cpu", "vllm", "rapidocr", "pymupdf", "mineru"]
