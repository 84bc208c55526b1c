"""Validation: known defects are quarantined with the right reasons, the gate trips above its limit,
the report renders offline. Records are built directly in the curation DB (SQLite and PostgreSQL)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import select
from test_export_support import (
    VEHICLE_OK,
    add_item,
    add_record,
    block,
    document_record,
    image_bytes,
    make_settings,
    vehicle_items,
)

from labelloop.config import Settings
from labelloop.db import Database, Quarantine, ValidationRun
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore
from labelloop.validation import QualityGateError, check_gate, load_passing, record_hash, validate_spec
from labelloop.validation.frames import Flattener, RecordRow
from labelloop.validation.gx_runner import run_checks
from labelloop.validation.run import collect_failures
from labelloop.validation.suite import build_checks

pytest_plugins = ["fixtures_labelstudio"]

SPECS = SpecRegistry()


def _quarantine(db: Database, run_id: int) -> dict[int, list[dict]]:
    with db.session() as s:
        rows = s.scalars(select(Quarantine).where(Quarantine.validation_run_id == run_id)).all()
        return {q.record_id: q.failures for q in rows}


def _checks(failures: list[dict]) -> set[str]:
    return {f["check"] for f in failures}


def test_known_vehicle_defects_are_quarantined_with_their_reasons(
    db: Database, settings: Settings, store: LocalStore
) -> None:
    good = vehicle_items(db, store, 6)
    defects = {
        "plate_pattern": {**VEHICLE_OK, "plate_number": "ab 12"},
        "plate_empty": {**VEHICLE_OK, "plate_number": ""},
        "bad_choice": {**VEHICLE_OK, "vehicle_type": "spaceship"},
        "missing_required": {k: v for k, v in VEHICLE_OK.items() if k != "color"},
        "too_long": {**VEHICLE_OK, "brand": "B" * 41},
        "box_outside": {**VEHICLE_OK, "vehicle_box": [100, 150, 1012, 700]},  # image is 1000 wide
        "box_inverted": {**VEHICLE_OK, "plate_box": [520, 500, 400, 540]},
        "box_short": {**VEHICLE_OK, "plate_box": [1, 2, 3]},
    }
    ids = {}
    for n, (name, rec) in enumerate(defects.items()):
        item = add_item(db, store, image_bytes(1000, 750, seed=100 + n))
        ids[name] = add_record(db, item, "vehicle_extraction", rec)
    # an item of unknown size cannot have its boxes checked: that is a defect too
    unsized = add_item(db, store, image_bytes(1000, 750, seed=200))
    with db.transaction() as s:
        s.get(type(unsized), unsized.id).width = None  # type: ignore[union-attr]
    ids["unsized"] = add_record(db, unsized, "vehicle_extraction", dict(VEHICLE_OK))

    summary = validate_spec(db, store, settings, SPECS.get("vehicle_extraction"), max_failed_share=1.0)

    q = _quarantine(db, summary.validation_run_id)
    assert set(q) == set(ids.values()), "exactly the defective records are quarantined"
    assert not set(good) & set(q)
    assert _checks(q[ids["plate_pattern"]]) == {"plate_number:pattern"}
    assert q[ids["plate_pattern"]][0]["observed"] == "ab 12"
    assert q[ids["plate_pattern"]][0]["expectation"] == "expect_column_values_to_match_regex"
    assert q[ids["plate_pattern"]][0]["column"] == "plate_number"
    assert _checks(q[ids["plate_empty"]]) == {"plate_number:non_empty", "plate_number:pattern"}
    assert _checks(q[ids["bad_choice"]]) == {"schema", "vehicle_type:choices"}
    assert _checks(q[ids["missing_required"]]) == {"schema", "color:required"}
    assert _checks(q[ids["too_long"]]) == {"schema", "brand:max_length"}
    outside = q[ids["box_outside"]]
    assert _checks(outside) == {"box:right"}
    assert outside[0]["observed"] == -12.0 and outside[0]["path"] == "vehicle_box"
    assert outside[0]["frame"] == "1000x750" and outside[0]["box"] == "[100, 150, 1012, 700]"
    assert _checks(q[ids["box_inverted"]]) == {"box:x_order"}
    assert _checks(q[ids["box_short"]]) == {"schema", "box:shape"}
    assert _checks(q[ids["unsized"]]) == {"image_width_known"}
    with db.session() as s:
        hashes = dict(s.execute(select(Quarantine.record_id, Quarantine.record_hash)).all())
    assert hashes[ids["plate_pattern"]] == record_hash(defects["plate_pattern"])
    assert summary.n_records == len(good) + len(ids)
    assert summary.n_failed == len(ids)
    # the passing snapshot is exactly the good records, with their content hashes
    passing = load_passing(store, "vehicle_extraction", summary.validation_run_id)
    assert set(passing) == set(good)


def test_grounding_ocr_and_document_parts_are_checked(sqlite_db: Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.storage.root)
    obj = {"bbox_2d": [10, 10, 200, 100], "label": "car"}
    g_item = add_item(sqlite_db, store, image_bytes(640, 480, 1))
    g_ok = add_record(sqlite_db, g_item, "grounding", {"objects": [obj]})
    g_label = add_record(
        sqlite_db,
        add_item(sqlite_db, store, image_bytes(640, 480, 2)),
        "grounding",
        {"objects": [obj, {"bbox_2d": [10, 10, 20, 20], "label": " "}]},
    )
    g_box = add_record(
        sqlite_db,
        add_item(sqlite_db, store, image_bytes(640, 480, 3)),
        "grounding",
        {"objects": [{"bbox_2d": [10, 470, 100, 481], "label": "car"}]},
    )
    o_text = add_record(
        sqlite_db,
        add_item(sqlite_db, store, image_bytes(640, 480, 4)),
        "ocr_lines",
        {"lines": [{"bbox": [1, 1, 50, 20], "text": "ok"}, {"bbox": [1, 30, 50, 50], "text": ""}]},
    )
    s1 = validate_spec(sqlite_db, store, settings, SPECS.get("grounding"), max_failed_share=1.0)
    q = _quarantine(sqlite_db, s1.validation_run_id)
    assert set(q) == {g_label, g_box} and g_ok not in q
    assert _checks(q[g_label]) == {"objects:label_non_empty"} and q[g_label][0]["path"] == "objects[1]"
    assert _checks(q[g_box]) == {"box:bottom"}
    s2 = validate_spec(sqlite_db, store, settings, SPECS.get("ocr_lines"), max_failed_share=1.0)
    q2 = _quarantine(sqlite_db, s2.validation_run_id)
    assert set(q2) == {o_text} and _checks(q2[o_text]) == {"lines:text_non_empty"}
    assert q2[o_text][0]["path"] == "lines[1]"

    doc = add_item(sqlite_db, store, b"%PDF-1.4 fake", ext="pdf", media_type="document", page_count=2)
    good_pages = [[block("title", [10, 10, 300, 40], "Title")], [block("image", [0, 0, 100, 100])]]
    d_rec = document_record(doc.sha256, [(612, 792)] * 2, good_pages)
    d_ok = add_record(sqlite_db, doc, "document_layout", d_rec)
    doc2 = add_item(sqlite_db, store, b"%PDF-1.4 other", ext="pdf", media_type="document", page_count=1)
    bad = [[block("text", [10, 10, 700, 40], "wide"), block("text", [10, 50, 300, 80], "  ")]]
    d_bad = add_record(sqlite_db, doc2, "document_layout", document_record(doc2.sha256, [(612, 792)], bad))
    s3 = validate_spec(sqlite_db, store, settings, SPECS.get("document_layout"), max_failed_share=1.0)
    q3 = _quarantine(sqlite_db, s3.validation_run_id)
    assert set(q3) == {d_bad} and d_ok not in q3
    assert {(f["check"], f["path"]) for f in q3[d_bad]} == {
        ("box:right", "pages[0].blocks[0]"),
        ("blocks:text_non_empty", "pages[0].blocks[1]"),
    }


def test_one_record_per_item_is_checked() -> None:
    # the DB's unique (item, spec) key makes this impossible to store; GX still guards the frame
    spec = SPECS.get("caption")
    flat = Flattener(spec)
    for rid, item_id in ((1, 10), (2, 11), (3, 11)):
        flat.add(RecordRow(rid, item_id, f"{item_id:064x}", "image", 10, 10, {"caption": "a cat"}))
    failures = collect_failures(run_checks(flat.frames(), build_checks(spec)))
    assert set(failures) == {2, 3}
    assert {f["check"] for f in failures[2]} == {"one_record_per_item"}


def test_quality_gate_trips_above_the_limit(sqlite_db: Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_failed_share=0.1)
    store = LocalStore(settings.storage.root)
    vehicle_items(sqlite_db, store, 9)
    item = add_item(sqlite_db, store, image_bytes(1000, 750, seed=99))
    add_record(sqlite_db, item, "vehicle_extraction", {**VEHICLE_OK, "color": "pink"})
    spec = SPECS.get("vehicle_extraction")

    at_limit = validate_spec(sqlite_db, store, settings, spec)  # 1 of 10 = 10%: allowed
    assert at_limit.failed_share == pytest.approx(0.1) and at_limit.passed_gate
    check_gate(at_limit)

    above = validate_spec(sqlite_db, store, settings, spec, max_failed_share=0.05)
    assert not above.passed_gate
    with pytest.raises(QualityGateError, match=r"1 of 10 records \(10.00%\)"):
        check_gate(above)
    with sqlite_db.session() as s:
        run = s.get(ValidationRun, above.validation_run_id)
        assert run is not None and run.passed_gate is False and run.n_failed == 1 and run.n_records == 10
        assert run.finished_at is not None and run.statistics["max_failed_share"] == 0.05


def test_report_is_self_contained_html(sqlite_db: Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.storage.root)
    vehicle_items(sqlite_db, store, 2)
    item = add_item(sqlite_db, store, image_bytes(1000, 750, seed=50))
    bad = add_record(sqlite_db, item, "vehicle_extraction", {**VEHICLE_OK, "plate_number": "<script>"})
    summary = validate_spec(sqlite_db, store, settings, SPECS.get("vehicle_extraction"), max_failed_share=1.0)
    assert summary.report_key == f"reports/validation/vehicle_extraction/{summary.validation_run_id}.html"
    html = store.get(summary.report_key).decode()
    for external in ("http://", "https://", "<script", "<link", "src="):
        assert external not in html, f"report must render offline, found {external!r}"
    assert "&lt;script&gt;" in html  # values are escaped
    assert f"<td class='n'>{bad}</td>" in html and "plate_number matches" in html
    assert "quality gate PASS" in html
    with sqlite_db.session() as s:
        run = s.get(ValidationRun, summary.validation_run_id)
        assert run is not None and run.report_key == summary.report_key


def test_flattened_frames_have_derived_box_columns() -> None:
    flat = Flattener(SPECS.get("vehicle_extraction"))
    flat.add(RecordRow(7, 1, "a" * 64, "image", 1000, 750, dict(VEHICLE_OK)))
    frames = flat.frames()
    parts: pd.DataFrame = frames["parts"]
    row = parts.set_index("path").loc["vehicle_box"]
    assert (row.box_width, row.box_height, row.right_gap, row.bottom_gap) == (800, 550, 100, 50)
    assert frames["records"].loc[0, "plate_box"] == "[400, 500, 520, 540]"


def _mutations(value: Any, rng: random.Random, depth: int = 0) -> list[Any]:
    """Valid-looking and broken variants of a record: every path dropped, retyped, stretched."""
    swaps = [None, True, 1, 1.5, -3, "", "x" * 2000, [], {}, [1, 2, 3], "pink", 10**6]
    out: list[Any] = [rng.choice(swaps)]
    if isinstance(value, dict):
        for k in value:
            out.append({kk: vv for kk, vv in value.items() if kk != k})
            out.append({**value, "unexpected": 1})
            for m in _mutations(value[k], rng, depth + 1)[:6]:
                out.append({**value, k: m})
    elif isinstance(value, list) and value:
        out += [value[:-1], [*value, value[-1]], [*value, "z"]]
        for m in _mutations(value[0], rng, depth + 1)[:6]:
            out.append([m, *value[1:]])
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out += [value + 0.5, float(value), -value - 1, True]
    return out


@pytest.mark.parametrize("spec_name", SPECS.names())
def test_fast_schema_check_never_accepts_what_jsonschema_rejects(spec_name: str, review_data: Any) -> None:
    from jsonschema import validators

    from labelloop.specs.schema_check import compile_schema

    spec = SPECS.get(spec_name)
    fast = compile_schema(spec.json_schema)  # every shipped spec stays inside the compiled subset
    referee = validators.validator_for(spec.json_schema)(spec.json_schema)
    # one plausible record per shipped spec (a new spec without one fails here: KeyError)
    valid = review_data.sample_record(spec_name)
    assert referee.is_valid(valid) and fast(valid), "the fast path must accept valid records"
    rng = random.Random(spec_name)
    variants = _mutations(valid, rng)
    variants += [m for v in variants[:40] for m in _mutations(v, rng)]
    rejected = 0
    for v in variants:
        if fast(v):
            assert referee.is_valid(v), f"fast path accepted an invalid record: {v!r}"[:500]
        else:
            rejected += 1
    assert rejected > len(variants) // 4  # the mutations do exercise the rejecting branches
