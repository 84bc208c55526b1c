"""The curation database: migrations match the models, constraints hold, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from labelloop.db import Base, Database, Item, ItemAlias, Prediction
from labelloop.db.migrate import current_revision


def _item(sha: str = "a" * 64) -> Item:
    return Item(
        sha256=sha,
        media_type="image",
        mime="image/png",
        ext="png",
        size_bytes=3,
        storage_key=f"raw/{sha[:2]}/{sha}.png",
        width=1,
        height=1,
    )


def test_migrations_match_models(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"
    assert current_revision(db.engine) is not None


def test_hot_query_indexes_exist(db: Database) -> None:
    insp = inspect(db.engine)

    def indexed(table: str, cols: list[str]) -> bool:
        idx = [i["column_names"] for i in insp.get_indexes(table)]
        uq = [u["column_names"] for u in insp.get_unique_constraints(table)]
        return any(c[: len(cols)] == cols for c in idx + uq)

    assert indexed("items", ["sha256"])
    assert indexed("predictions", ["item_id", "spec", "model"])
    assert indexed("review_tasks", ["ls_project_id", "ls_task_id"])
    assert indexed("annotations", ["ls_updated_at"])


def test_upgrade_is_idempotent(db: Database) -> None:
    db.upgrade()  # second run: nothing to do, no error
    assert current_revision(db.engine) == "0003_calibration_design"


def test_sha_is_unique(db: Database) -> None:
    with db.transaction() as s:
        s.add(_item())
    with pytest.raises(IntegrityError), db.transaction() as s:
        s.add(_item())


def test_prediction_identity_is_unique_and_new_prompt_is_new_row(db: Database) -> None:
    with db.transaction() as s:
        item = _item()
        s.add(item)
        s.flush()
        common = dict(item_id=item.id, spec="caption", backend="vllm", model="m", model_version="1", status="ok")
        s.add(Prediction(prompt_hash="p1", **common))
        s.add(Prediction(prompt_hash="p2", **common))
    with pytest.raises(IntegrityError), db.transaction() as s:
        s.add(Prediction(prompt_hash="p1", **common))
    with db.session() as s:
        assert len(s.scalars(select(Prediction)).all()) == 2


def test_datetimes_come_back_aware_utc_and_json_roundtrips(db: Database) -> None:
    with db.transaction() as s:
        item = _item()
        item.meta = {"nested": {"a": [1, 2.5, "x"]}, "unicode": "车牌"}
        s.add(item)
    with db.session() as s:
        got = s.scalars(select(Item)).one()
        assert got.created_at.tzinfo is not None
        assert abs((dt.datetime.now(dt.UTC) - got.created_at).total_seconds()) < 60
        assert got.meta == {"nested": {"a": [1, 2.5, "x"]}, "unicode": "车牌"}


def test_naive_datetime_is_refused(db: Database) -> None:
    with pytest.raises(Exception, match="naive"), db.transaction() as s:
        s.add(_naive())


def _naive() -> Item:
    it = _item("b" * 64)
    it.created_at = dt.datetime(2020, 1, 1)
    return it


def test_alias_cascade_on_item_delete(db: Database) -> None:
    with db.transaction() as s:
        item = _item()
        item.aliases.append(ItemAlias(source_uri="file:///x.png"))
        s.add(item)
    with db.transaction() as s:
        s.delete(s.scalars(select(Item)).one())
    with db.session() as s:
        assert s.scalars(select(ItemAlias)).all() == []
