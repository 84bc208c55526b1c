"""DAG integrity: every DAG in dags/ imports, validates and has valid params; wrong params are refused
before any work; no DAG has a task per item (pre-labeling is mapped over planned batches).

No metadata DB: the DAG files are parsed as Airflow's bundle parser does, and params are resolved the
way a run's creation does (``params.deep_merge(conf).validate()`` on the serialized DAG).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"

#: dag_id -> its tasks; fixed, whatever the data (a task per item would make this grow)
EXPECTED_TASKS = {
    "labelloop_prelabel": {"check_params", "ingest", "plan_batches", "prelabel", "route_and_import"},
    "labelloop_nightly": {
        "check_params",
        "ingest",
        "plan_batches",
        "prelabel",
        "specs",
        "sync",
        "calibrate",
        "route_and_import",
        "trigger_export",
    },
    "labelloop_review_sync": {"sync"},
    "labelloop_export": {"validate", "quality_gate", "export"},
    "labelloop_train": {"prepare_dataset", "evaluate_backends", "launch_training"},
    "labelloop_calibrate": {"calibrate"},
}
#: (dag_id, mapped task) -> the task whose return value it is mapped over (None: a literal, per spec)
MAPPED = {
    ("labelloop_prelabel", "prelabel"): "plan_batches",
    ("labelloop_nightly", "prelabel"): "plan_batches",
    ("labelloop_nightly", "sync"): "specs",
    ("labelloop_nightly", "route_and_import"): "specs",
    ("labelloop_nightly", "trigger_export"): "specs",
    ("labelloop_review_sync", "sync"): None,
    ("labelloop_train", "launch_training"): "prepare_dataset",
}


@pytest.fixture(autouse=True)
def _dags_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(DAGS))  # the bundle parser puts the DAG folder on sys.path


def _bag() -> Any:
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)


@pytest.fixture(scope="module")
def bag() -> Any:
    import sys

    sys.path.insert(0, str(DAGS))
    try:
        return _bag()
    finally:
        sys.path.remove(str(DAGS))


def _serialized(dag: Any) -> Any:
    """The DAG as the scheduler sees it (what creating a run validates params against)."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))


def _resolve(dag: Any, conf: dict[str, Any] | None = None) -> dict[str, Any]:
    """Params of a run with ``conf``, resolved and validated as ``create_dagrun`` does."""
    return _serialized(dag).params.deep_merge(conf or {}).validate()


def test_every_dag_file_imports_and_validates(bag: Any) -> None:
    assert bag.import_errors == {}, bag.import_errors
    files = {p.stem for p in DAGS.glob("*.py") if not p.name.startswith("_")}
    assert set(bag.dags) == files == set(EXPECTED_TASKS)
    for dag in bag.dags.values():
        dag.validate()
        assert set(dag.tags) == {"labelloop"} and dag.catchup is False, dag.dag_id


def test_params_have_valid_defaults(bag: Any) -> None:
    for dag_id, dag in bag.dags.items():
        resolved = _resolve(dag)
        assert set(resolved) == set(dag.params), dag_id
    assert _resolve(bag.dags["labelloop_prelabel"]) == {
        "source": None,
        "spec": "ocr_lines",
        "backend": "cpu",
        "limit": None,
        "batch_size": 200,
    }
    nightly = _resolve(bag.dags["labelloop_nightly"], {"source": "/data/inbox"})
    assert nightly["source"] == "/data/inbox" and nightly["jobs"] and nightly["batch_size"] == 200


@pytest.mark.parametrize(
    ("dag_id", "conf", "message"),
    [
        ("labelloop_prelabel", {"spec": "no_such_spec"}, "Invalid input for param spec"),
        ("labelloop_prelabel", {"backend": "gpu"}, "Invalid input for param backend"),
        ("labelloop_prelabel", {"batch_size": 0}, "Invalid input for param batch_size"),
        ("labelloop_prelabel", {"limit": "ten"}, "Invalid input for param limit"),
        ("labelloop_export", {"spec": "no_such_spec"}, "Invalid input for param spec"),
        ("labelloop_export", {"max_failed_share": 2}, "Invalid input for param max_failed_share"),
        ("labelloop_nightly", {"jobs": []}, "Invalid input for param jobs"),
        ("labelloop_nightly", {"jobs": [{"backend": "vllm"}]}, "Invalid input for param jobs"),
    ],
)
def test_wrong_params_are_refused_when_the_run_is_created(
    bag: Any, dag_id: str, conf: dict[str, Any], message: str
) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=message):
        _resolve(bag.dags[dag_id], conf)


def test_check_params_fails_before_any_work() -> None:
    from airflow.sdk.exceptions import AirflowFailException
    from labelloop_airflow.pipeline import CheckJobsOperator

    def check(jobs: Any) -> Any:
        return CheckJobsOperator(task_id="check_params", jobs=jobs).execute({})

    # a backend that does not fit the spec's media
    with pytest.raises(AirflowFailException, match=r"backend 'vllm' is not a document backend.*document_layout"):
        check({"spec": "document_layout", "backend": "vllm"})
    with pytest.raises(AirflowFailException, match=r"backend 'mineru' is not an image backend.*grounding"):
        check([{"spec": "ocr_lines", "backend": "cpu"}, {"spec": "grounding", "backend": "mineru"}])
    # the nightly's jobs are free-form objects: an unknown spec is caught here, with its name
    with pytest.raises(AirflowFailException, match="no_such_spec"):
        check([{"spec": "no_such_spec", "backend": "cpu"}])
    with pytest.raises(AirflowFailException, match="jobs must be a list"):
        check("grounding")
    # "cpu" resolves to the offline backend of the spec's media
    assert check([{"spec": "ocr_lines"}, {"spec": "document_layout", "backend": "cpu"}]) == [
        {"spec": "ocr_lines", "backend": "rapidocr"},
        {"spec": "document_layout", "backend": "pymupdf"},
    ]


def test_check_params_runs_first_and_guards_the_work(bag: Any) -> None:
    for dag_id in ("labelloop_prelabel", "labelloop_nightly"):
        dag = bag.dags[dag_id]
        check = dag.get_task("check_params")
        assert check.retries == 0 and not check.upstream_task_ids, dag_id
        assert {"ingest", "plan_batches", "prelabel"} <= check.get_flat_relative_ids(upstream=False), dag_id


def test_no_task_per_item(bag: Any) -> None:
    from airflow.sdk.definitions.mappedoperator import MappedOperator
    from airflow.sdk.definitions.xcom_arg import PlainXComArg

    for dag_id, dag in bag.dags.items():
        assert {t.task_id for t in dag.tasks} == EXPECTED_TASKS[dag_id], dag_id
        mapped = {t.task_id for t in dag.tasks if isinstance(t, MappedOperator)}
        assert mapped == {task for d, task in MAPPED if d == dag_id}, dag_id
    # pre-labeling: one mapped task instance per planned batch, kwargs from plan_batches' XCom
    for dag_id in ("labelloop_prelabel", "labelloop_nightly"):
        dag = bag.dags[dag_id]
        prelabel = dag.get_task("prelabel")
        assert isinstance(prelabel, MappedOperator)
        arg = prelabel.expand_input.value
        assert isinstance(arg, PlainXComArg) and arg.operator.task_id == "plan_batches", dag_id
        assert arg.key == "return_value"
        assert prelabel.partial_kwargs.get("max_active_tis_per_dagrun"), dag_id  # bounded fan-out
        assert dag.get_task("plan_batches").get_direct_relative_ids(upstream=False) >= {"prelabel"}
    # the other mapped tasks fan out per spec or per dataset version, never per item
    for (dag_id, task_id), source in MAPPED.items():
        value = bag.dags[dag_id].get_task(task_id).expand_input.value
        if source is None:
            assert isinstance(value, dict) and all(isinstance(v, list) for v in value.values())
        elif isinstance(value, PlainXComArg):
            assert value.operator.task_id == source, (dag_id, task_id)
        else:  # expand(kw=XComArg)
            (arg,) = value.values()
            assert isinstance(arg, PlainXComArg) and arg.operator.task_id == source, (dag_id, task_id)


def test_every_label_studio_import_shares_one_pool(bag: Any) -> None:
    """``max_active_tis_per_dag`` limits one DAG only: the prelabel DAG and the nightly overlap."""
    for dag_id in ("labelloop_prelabel", "labelloop_nightly"):
        task = bag.dags[dag_id].get_task("route_and_import")
        pool = task.partial_kwargs.get("pool") if hasattr(task, "partial_kwargs") else task.pool
        assert pool == "labelloop_label_studio", dag_id


def test_every_operator_of_the_provider_is_used_by_a_dag(bag: Any) -> None:
    """No operator or sensor class in ``labelloop_airflow`` that no shipped DAG runs (an unused one
    is untested wiring that users would find in the package and trust)."""
    import importlib
    import inspect
    import pkgutil

    import labelloop_airflow
    from airflow.sdk import BaseOperator

    defined = set()
    for mod in pkgutil.walk_packages(labelloop_airflow.__path__, "labelloop_airflow."):
        module = importlib.import_module(mod.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseOperator) and cls.__module__ == module.__name__:
                defined.add(cls)
    assert defined, "no operators found: the package layout changed"
    # a mapped task (``.partial().expand()``) is a MappedOperator naming the class it runs
    used = {getattr(t, "operator_class", type(t)) for dag in bag.dags.values() for t in dag.tasks}
    used |= {c for c in defined for u in used if issubclass(u, c)}  # base classes of used ones count
    unused = sorted(c.__qualname__ for c in defined - used)
    assert unused == [], f"operators no DAG uses: {unused}"
