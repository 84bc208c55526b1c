"""Hostname callable for Airflow (``[core] hostname_callable``) that tells workers on one host apart.

Airflow records the host that ran a task instance (``task_instance.hostname``) from this callable.
Several Celery workers on one machine (the test cluster, a big GPU node with one worker per GPU)
would all report the same FQDN, so nobody could tell which worker ran a task, or which one a lost
task was on. A worker started with ``AIRFLOW_WORKER_HOSTNAME`` reports that name instead; every
other process (and every worker without it, e.g. one container per worker) reports the FQDN as
Airflow's default does. The name is only a label: the API server reads task logs from the shared
log folder first and only then asks the worker's log server at ``hostname:worker_log_server_port``,
so give workers that do not share a log folder a name that resolves.
"""

from __future__ import annotations

import os

#: environment variable naming this worker (not an ``AIRFLOW__SECTION__KEY`` config option)
ENV = "AIRFLOW_WORKER_HOSTNAME"


def worker_hostname() -> str:
    name = os.environ.get(ENV, "").strip()
    if name:
        return name
    from airflow.utils.net import getfqdn

    return getfqdn()
