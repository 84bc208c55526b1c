"""Scale-out for real: labelloop_prelabel on the multi-process deployment (CeleryExecutor, two
workers, Redis, PostgreSQL), 400 images in 4 mapped batches, one worker ``kill -9``-ed in the middle
of its batches.

Airflow notices the lost worker by its missing task heartbeats, fails those task instances and
retries them on the surviving worker; the retries continue where the killed tries stopped (their
items already predicted are skipped). Afterwards the counts are exact: one prediction and one
routing decision per image, every image accounted for, one Label Studio task per routed item, no
duplicate anywhere (curation DB and Label Studio), every low-confidence answer in review.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scaleout_workload import DAG_ID, counts, make_images, run_prelabel, teach

pytest_plugins = ["fixtures_labelstudio", "fixtures_airflow_cluster"]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.airflow,
    pytest.mark.postgres,
    pytest.mark.s3,
    pytest.mark.labelstudio,
]

N_IMAGES = 400
BATCH = 100


@pytest.mark.timeout(1800)
def test_worker_killed_mid_batch_loses_and_duplicates_nothing(scaleout: Any, tmp_path: Path) -> None:
    cluster = scaleout.cluster
    workload = make_images(tmp_path / "in", N_IMAGES, seed=2)
    teach(scaleout.vllm.url, workload)

    result = run_prelabel(
        cluster, workload, batch_size=BATCH, db=scaleout.db, kill="worker1", vllm_url=scaleout.vllm.url
    )
    print(f"run {result.run_id}: {result.state} in {result.wall_s:.0f}s, killed worker1 running {result.killed_tis}")
    assert result.state == "success", [
        (t["task_id"], t["map_index"], t["try_number"], t["state"]) for t in result.tries
    ]
    assert result.killed_tis, "worker1 was not running a batch when it was killed"
    assert 0 < result.done_at_kill < N_IMAGES, result.done_at_kill  # killed in the middle of the work

    prelabel = result.prelabel_tries()
    final = {t["map_index"]: t for t in result.tries if t["task_id"] == "prelabel" and t["state"] == "success"}
    assert sorted(final) == [0, 1, 2, 3]
    for mi in result.killed_tis:
        tries = sorted((t for t in prelabel if t["map_index"] == mi), key=lambda t: t["try_number"])
        # the killed try failed (heartbeat timeout) on worker1, the retry succeeded on the survivor
        assert [t["try_number"] for t in tries] == [1, 2], tries
        assert (tries[0]["hostname"], tries[0]["state"]) == ("worker1", "failed"), tries[0]
        assert (tries[1]["hostname"], tries[1]["state"]) == ("worker2", "success"), tries[1]
    assert result.hostnames() == {"worker1", "worker2"}
    stats = {mi: cluster.xcom(DAG_ID, result.run_id, "prelabel", mi) for mi in final}
    # the retries continued: the items the killed tries had finished were not asked for again
    # (the runner skips them before counting), so the final tries predicted fewer than all items
    assert sum(s["failed"] for s in stats.values()) == 0, stats
    assert sum(s["ok"] for s in stats.values()) < N_IMAGES, stats

    c = counts(scaleout.db, workload, scaleout.label_studio.client())
    print(c)
    assert (c.items, c.predictions, c.ok_predictions, c.lost) == (N_IMAGES, N_IMAGES, N_IMAGES, 0), c
    assert (c.routes, c.duplicate_routes, c.duplicate_predictions) == (N_IMAGES, 0, 0), c
    assert c.low_not_review == 0, c
    assert c.ls_tasks == c.to_label_studio >= len(workload.low), c
    assert c.duplicate_ls_tasks == 0 and c.ls_task_ids_missing == 0, c

    cluster.start_worker("worker1")  # the lost worker comes back and joins again
    cluster.check_alive()
