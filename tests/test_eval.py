"""`labelloop eval`: two backends scored on a reviewed set made here, and the report it writes."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labelloop.cli import app
from labelloop.config import DatabaseSettings, RoutingSettings
from labelloop.db import Database, Item, Prediction, Record
from labelloop.evaluation.run import compare_versions, evaluate
from labelloop.specs import SpecRegistry

SPEC = SpecRegistry().get("vehicle_extraction")
N = 120
COLOURS = ["blue", "yellow", "green"]


def _truth(i: int) -> dict:
    return {
        "plate_number": f"京A{i:05d}",
        "plate_color": COLOURS[i % 3],
        "vehicle_type": "car",
        "brand": "BYD",
        "color": "white",
        "plate_box": [10, 10, 110, 40],
        "vehicle_box": [0, 0, 300, 200],
    }


def _make_reviewed_set(db: Database) -> dict[str, tuple[int, int]]:
    """N reviewed items; backend "old" reads 70% of plates right, "new" 95%; "new" confuses green as blue.

    Returns the exact counts each backend should score on plate_number (right, covered wrong).
    """
    rng = random.Random(3)
    expect = {"old": [0, 0], "new": [0, 0]}
    with db.session() as s:
        for i in range(N):
            it = Item(
                sha256=hashlib.sha256(f"eval-{i}".encode()).hexdigest(),
                media_type="image",
                mime="image/png",
                ext="png",
                size_bytes=1,
                storage_key=f"raw/{i}.png",
                width=320,
                height=240,
            )
            s.add(it)
            s.flush()
            truth = _truth(i)
            for backend, p_right in (("old", 0.7), ("new", 0.95)):
                rec = dict(truth)
                right = rng.random() < p_right
                if not right:
                    rec["plate_number"] = f"京B{i:05d}"
                if backend == "new" and truth["plate_color"] == "green":
                    rec["plate_color"] = "blue"
                conf = {n: 0.95 for n in SPEC.fields}
                conf["plate_number"] = rng.choice([0.5, 0.95])
                expect[backend][0] += right
                expect[backend][1] += (not right) and conf["plate_number"] >= 0.9
                s.add(
                    Prediction(
                        item_id=it.id,
                        spec=SPEC.name,
                        backend=backend,
                        model=f"m-{backend}",
                        model_version=f"{backend}-1",
                        prompt_hash=SPEC.prompt_hash,
                        status="ok",
                        record=rec,
                        field_confidence=conf,
                        confidence=min(conf.values()),
                    )
                )
            if i % 10 != 9:  # a tenth is never reviewed: not part of the truth
                s.add(
                    Record(
                        item_id=it.id,
                        spec=SPEC.name,
                        provenance="human" if i % 2 else "audited",
                        record=truth,
                        content_hash=hashlib.sha256(json.dumps(truth).encode()).hexdigest(),
                    )
                )
            elif i == 9:  # an auto-accepted record is no truth either
                s.add(
                    Record(
                        item_id=it.id,
                        spec=SPEC.name,
                        provenance="auto",
                        record=truth,
                        content_hash=hashlib.sha256(json.dumps(truth).encode()).hexdigest(),
                    )
                )
        s.commit()
    return {k: (v[0], v[1]) for k, v in expect.items()}


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(DatabaseSettings(url=f"sqlite:///{tmp_path / 'e.db'}"))
    database.upgrade()
    return database


def test_evaluate_and_compare(db: Database) -> None:
    _make_reviewed_set(db)
    old = evaluate(db, SPEC, "old", routing=RoutingSettings(default_threshold=0.9, use_manual_thresholds=True))
    new = evaluate(db, SPEC, "new", "new-1", RoutingSettings(default_threshold=0.9, use_manual_thresholds=True))
    reviewed = [i for i in range(N) if i % 10 != 9]
    assert old.n_items == new.n_items == len(reviewed)
    # recount from the data itself: what was right among the reviewed items
    with db.session() as s:
        from sqlalchemy import select

        preds = {(p.backend, p.item_id): p for p in s.scalars(select(Prediction))}
        truth = {r.item_id: r.record for r in s.scalars(select(Record).where(Record.provenance != "auto"))}
    for sc in (old, new):
        ps = [preds[(sc.backend, i)] for i in truth]
        right = sum(p.record["plate_number"] == truth[p.item_id]["plate_number"] for p in ps)
        covered = [p for p in ps if p.field_confidence["plate_number"] >= 0.9]
        wrong_cov = sum(p.record["plate_number"] != truth[p.item_id]["plate_number"] for p in covered)
        f = sc.fields["plate_number"]
        assert (f.n, f.correct, f.covered, f.covered_wrong) == (len(ps), right, len(covered), wrong_cov)
        assert f.as_dict()["error_upper_95"] > f.error_at_threshold
    assert new.fields["plate_number"].accuracy > old.fields["plate_number"].accuracy
    # confusion: "new" reads every green plate as blue
    conf = new.fields["plate_color"].confusion
    n_green = sum(1 for t in truth.values() if t["plate_color"] == "green")
    assert conf["green"] == {"blue": n_green} and conf["blue"] == {
        "blue": sum(1 for t in truth.values() if t["plate_color"] == "blue")
    }
    assert old.fields["plate_color"].accuracy == 1.0 and new.fields["plate_color"].accuracy < 0.7
    cmp = compare_versions(old, new)
    assert cmp["n_common"] == len(reviewed)
    plate = cmp["fields"]["plate_number"]
    assert (
        plate["better"] == "new@new-1"
        and plate["p_value"] < 0.05
        and plate["b_right_a_wrong"] > plate["a_right_b_wrong"]
    )
    assert cmp["fields"]["plate_color"]["better"] == "old"
    assert cmp["fields"]["brand"]["better"] is None and cmp["fields"]["brand"]["p_value"] == 1.0


def test_cli_eval_writes_the_report(db: Database, tmp_path: Path) -> None:
    _make_reviewed_set(db)
    env = {
        "LABELLOOP_DB__URL": str(db.engine.url),
        "LABELLOOP_STORAGE__ROOT": str(tmp_path / "o"),
        "LABELLOOP_HOME": str(tmp_path),
        "COLUMNS": "200",
    }
    r = CliRunner().invoke(app, ["eval", "vehicle_extraction", "-b", "old", "-b", "new@new-1", "--json"], env=env)
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [b["backend"] for b in data["backends"]] == ["old", "new"]
    assert data["comparison"]["fields"]["plate_number"]["better"] == "new@new-1"
    root = tmp_path / "o"
    report = root / data["report"]["json"]
    assert report.is_file() and json.loads(report.read_text())["spec"] == "vehicle_extraction"
    pngs = [root / k for name, k in data["report"].items() if name != "json"]
    assert any("accuracy.png" in str(p) for p in pngs) and any("plate_color" in str(p) for p in pngs)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert str(report.relative_to(root)).startswith("reports/eval/vehicle_extraction/")

    table = CliRunner().invoke(app, ["eval", "vehicle_extraction", "-b", "old", "--no-report"], env=env)
    assert table.exit_code == 0 and "plate_number" in table.output and "rows reviewed" in table.output

    missing = CliRunner().invoke(app, ["eval", "vehicle_extraction", "-b", "nosuch"], env=env)
    assert missing.exit_code == 2 and "no predictions of nosuch" in missing.output
