"""The multi-process Airflow deployment itself (tests/airflow_cluster.py): it comes up with every
component healthy, spreads mapped pre-label batches over both Celery workers, runs the Label Studio
import in the shared pool, and fails loudly, with the component's log tail, when a part dies.

The deployment is shared with tests/test_scaleout.py (fixtures_airflow_cluster); this module runs a
small workload (16 images, 4 batches) and checks its exact counts.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from airflow_cluster import (
    CLAIM_KEY,
    POOLS,
    AirflowCluster,
    ClusterError,
    Component,
    claim_redis_db,
    release_redis_db,
)
from scaleout_workload import counts, make_images, run_prelabel, teach

pytest_plugins = ["fixtures_labelstudio", "fixtures_airflow_cluster"]


def test_a_dead_component_fails_start_with_its_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "broken.log"
    comp = Component("broken", ["sh", "-c", "echo 'boom: broker refused'; exit 3"], log, {"PATH": "/usr/bin:/bin"})
    comp.start()
    cluster = AirflowCluster(workdir=tmp_path, components={"broken": comp})
    with pytest.raises(ClusterError) as err:
        cluster._wait(lambda: False, "the broken part", time.monotonic() + 20, comp)
    assert "broken exited with 3" in str(err.value) and "boom: broker refused" in str(err.value)
    with pytest.raises(ClusterError, match="timed out waiting for never"):
        cluster._wait(lambda: False, "never", time.monotonic() + 0.5, Component("idle", [], log, {}))


def test_redis_db_claims_do_not_clash() -> None:
    import redis

    a, token_a = claim_redis_db(ttl_s=60)
    try:
        b, token_b = claim_redis_db(ttl_s=60)
        assert b != a
        release_redis_db(b, "someone else's token")  # only the owner releases
        assert redis.Redis(db=b).get(CLAIM_KEY) == token_b.encode()
        release_redis_db(b, token_b)
        assert redis.Redis(db=b).dbsize() == 0
    finally:
        release_redis_db(a, token_a)


@pytest.mark.slow
@pytest.mark.airflow
@pytest.mark.postgres
@pytest.mark.s3
@pytest.mark.labelstudio
def test_cluster_runs_mapped_batches_on_both_workers(scaleout: Any, tmp_path: Path) -> None:
    cluster = scaleout.cluster
    health = httpx.get(f"{cluster.url}/api/v2/monitor/health").json()
    assert {k: v["status"] for k, v in health.items()} == {
        "metadatabase": "healthy",
        "scheduler": "healthy",
        "triggerer": "healthy",
        "dag_processor": "healthy",
    }
    for name, slots in POOLS.items():
        assert cluster.api("GET", f"/pools/{name}")["slots"] == slots
    worker_pids = {n: cluster.components[n].proc.pid for n in cluster.worker_names()}
    assert len(worker_pids) == 2
    out = subprocess.run(["ps", "-o", "pgid=", "-p", ",".join(map(str, worker_pids.values()))], capture_output=True)
    assert sorted(map(int, out.stdout.split())) == sorted(worker_pids.values())  # each leads its own group

    workload = make_images(tmp_path / "in", 16, seed=1)
    teach(scaleout.vllm.url, workload)
    result = run_prelabel(cluster, workload, batch_size=4)
    assert result.state == "success", result.tries
    prelabel = result.prelabel_tries()
    assert sorted(t["map_index"] for t in prelabel) == [0, 1, 2, 3]
    assert result.hostnames() == {"worker1", "worker2"}, [(t["map_index"], t["hostname"]) for t in prelabel]
    (route,) = [t for t in result.tries if t["task_id"] == "route_and_import"]
    assert route["pool"] == "labelloop_label_studio" and route["state"] == "success"

    c = counts(scaleout.db, workload, scaleout.label_studio.client())
    assert (c.items, c.predictions, c.ok_predictions, c.routes) == (16, 16, 16, 16), c
    assert c.duplicates == 0 and c.lost == 0, c
    assert c.low_not_review == 0, c  # every low-confidence answer went to a person
    assert c.ls_tasks == c.to_label_studio >= len(workload.low) and c.ls_task_ids_missing == 0, c
