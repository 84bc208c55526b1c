"""Qwen-VL (the vLLM test server) and the CPU plate backend on the same images (issue 17).

Agreeing answers raise the plate's confidence and the item is auto-accepted; a disagreeing VLM
plate sends the item to review with the VLM's value pre-filled and the plate reader's shown as a
hint in the Label Studio task; an invalid VLM plate is never filled in.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from fixtures_vllm import ingest_images, predictions, run_batch
from plate_render import cjk_font_path, render_scene
from sqlalchemy import select

from labelloop.config import RoutingSettings, Settings
from labelloop.db import Database, ReviewTask
from labelloop.prelabel.base import PredictionResult
from labelloop.prelabel.ensemble import EnsembleBackend, combine, hint_text
from labelloop.prelabel.factory import make_backend
from labelloop.prelabel.plate_backend import PlateBackend
from labelloop.review.importer import build_task
from labelloop.review.routing import ROUTE_AUTO, ROUTE_REVIEW, route_predictions
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore

pytest_plugins = ["fixtures_vllm"]

SPEC = SpecRegistry().get("vehicle_extraction")
HIGH = {
    "plate_number": 0.95,
    "plate_color": 0.97,
    "vehicle_type": 0.99,
    "brand": 0.99,
    "color": 0.99,
    "plate_box": 0.96,
    "vehicle_box": 0.99,
}


def _ok(record: dict[str, Any], conf: dict[str, float], none: tuple[str, ...] = ()) -> PredictionResult:
    detail = {"fields": {n: {"source": "none"} for n in none}}
    return PredictionResult(status="ok", record=record, field_confidence=conf, confidence_detail=detail)


BASE = {
    "plate_number": "京A12345",
    "plate_color": "blue",
    "vehicle_type": "car",
    "brand": "BYD",
    "color": "white",
    "plate_box": [10, 10, 110, 40],
    "vehicle_box": [0, 0, 300, 200],
}
OCR = {**BASE, "vehicle_type": None, "brand": "", "color": None, "vehicle_box": None}
OCR_CONF = {
    "plate_number": 0.8,
    "plate_color": 0.7,
    "plate_box": 0.8,
    "vehicle_type": 0.0,
    "brand": 0.0,
    "color": 0.0,
    "vehicle_box": 0.0,
}
NONE = ("vehicle_type", "brand", "color", "vehicle_box")


def test_combine_rules() -> None:
    agree = combine(
        SPEC, ("vllm", _ok(BASE, HIGH)), ("plate", _ok({**OCR, "plate_number": "京A·12345"}, OCR_CONF, NONE))
    )
    c = agree.field_confidence
    assert c["plate_number"] == pytest.approx(1 - 0.05 * 0.2) and c["plate_color"] == pytest.approx(1 - 0.03 * 0.3)
    assert c["plate_box"] == pytest.approx(1 - 0.04 * 0.2)
    assert c["brand"] == 0.99 and agree.record["brand"] == "BYD"  # only the VLM reads it
    assert agree.confidence_detail["fields"]["plate_number"]["agree"] is True
    assert agree.confidence_detail["ensemble"]["disagreements"] == {}
    assert hint_text(agree.confidence_detail) == ""

    wrong = combine(
        SPEC, ("vllm", _ok(BASE, HIGH)), ("plate", _ok({**OCR, "plate_number": "京A12346"}, OCR_CONF, NONE))
    )
    assert wrong.record["plate_number"] == "京A12345" and wrong.field_confidence["plate_number"] == 0.0
    cands = wrong.confidence_detail["fields"]["plate_number"]["candidates"]
    assert cands == {
        "vllm": {"value": "京A12345", "confidence": 0.95},
        "plate": {"value": "京A12346", "confidence": 0.8},
    }
    assert "plate says '京A12346' (0.80)" in hint_text(wrong.confidence_detail)

    # an invalid plate from the VLM is never filled in, however sure it is
    bad = combine(
        SPEC,
        ("vllm", _ok({**BASE, "plate_number": "DDS32"}, HIGH)),
        ("plate", _ok({**OCR, "plate_number": ""}, {**OCR_CONF, "plate_number": 0.0}, NONE)),
    )
    assert bad.record["plate_number"] == "" and bad.field_confidence["plate_number"] == 0.0
    assert "'DDS32' rejected" in hint_text(bad.confidence_detail)

    # the checker failing leaves the VLM's answer, with the failure recorded
    alone = combine(SPEC, ("vllm", _ok(BASE, HIGH)), ("plate", PredictionResult.failed("boom")))
    assert alone.field_confidence == HIGH and alone.confidence_detail["ensemble"] == {
        "alone": "vllm",
        "failed": "plate",
    }
    both = combine(SPEC, ("vllm", PredictionResult.failed("a")), ("plate", PredictionResult.failed("b")))
    assert both.status == "failed" and "vllm: a" in both.error and "plate: b" in both.error


class _Media:
    def url(self, key: str) -> str:
        return f"/data/local-files/?d={key}"


@pytest.fixture(scope="module")
def scenes() -> list[Any]:
    """Two easy rendered plates the plate backend reads exactly (checked, so the test's premise holds)."""
    if cjk_font_path() is None:
        pytest.fail("no CJK font: scripts/ensure-fonts.sh installs fonts-wqy-microhei")
    plate = PlateBackend()
    rng = random.Random(21)
    found = []
    for _ in range(12):
        sc = render_scene(rng, "ordinary_blue", cjk_font_path(), hard=False)
        hit = plate.read(sc.image)
        if hit and hit[0].text == sc.plate and hit[0].score >= 0.5 and hit[0].colour == "blue":
            found.append(sc)
        if len(found) == 2:
            return found
    pytest.fail("the plate backend read none of the easy rendered plates")


def test_vlm_and_plate_backend_together(
    vllm_server: Any, sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path, scenes: list[Any]
) -> None:
    settings = vllm_server.settings(sqlite_settings)
    store = LocalStore(settings.storage.root)
    agree_sc, disagree_sc = scenes
    items = ingest_images(
        sqlite_db, store, settings, tmp_path / "in", {"agree.jpg": agree_sc.image, "disagree.jpg": disagree_sc.image}
    )
    wrong_plate = disagree_sc.plate[:-1] + ("1" if disagree_sc.plate[-1] != "1" else "2")
    for name, sc, plate in (("agree.jpg", agree_sc, agree_sc.plate), ("disagree.jpg", disagree_sc, wrong_plate)):
        record = {
            "plate_number": plate,
            "plate_color": "blue",
            "vehicle_type": "car",
            "brand": "BYD",
            "color": "white",
            "plate_box": sc.box,
            "vehicle_box": [0, 0, sc.width, sc.height],
            "_confidence": {"plate_number": 0.9, "plate_color": 0.95, "plate_box": 0.95, "default": 0.99},
        }
        vllm_server.truth(
            items[name].sha256, {"width": sc.width, "height": sc.height, "records": {"vehicle_extraction": record}}
        )
    backend = make_backend("ensemble", settings, store)
    assert isinstance(backend, EnsembleBackend)
    stats = run_batch(sqlite_db, store, SPEC, backend, concurrency=2)
    assert (stats.ok, stats.failed) == (2, 0)
    (pa,) = predictions(sqlite_db, item_id=items["agree.jpg"].id)
    (pd,) = predictions(sqlite_db, item_id=items["disagree.jpg"].id)
    assert pa.backend == "ensemble" and "vllm:" in pa.model_version and "plate:" in pa.model_version

    # agreement: the plate's confidence rises above either member's
    fa = pa.confidence_detail["fields"]["plate_number"]
    vlm_c, ocr_c = fa["candidates"]["vllm"]["confidence"], fa["candidates"]["plate"]["confidence"]
    assert fa["agree"] is True and pa.record["plate_number"] == agree_sc.plate
    assert pa.field_confidence["plate_number"] == pytest.approx(1 - (1 - vlm_c) * (1 - ocr_c))
    assert pa.field_confidence["plate_number"] > max(vlm_c, ocr_c)
    # disagreement: VLM value pre-filled, confidence 0, both candidates kept
    fd = pd.confidence_detail["fields"]["plate_number"]
    assert fd["agree"] is False and pd.record["plate_number"] == wrong_plate
    assert pd.field_confidence["plate_number"] == 0.0
    assert fd["candidates"]["plate"]["value"] == disagree_sc.plate

    # routing: the agreeing item's weakest field is the VLM's plate (0.9 alone) raised past 0.9
    routing = RoutingSettings(default_threshold=0.9, audit_rate=0.0, use_manual_thresholds=True)
    route_predictions(sqlite_db, routing, SPEC)
    with sqlite_db.session() as s:
        tasks = {t.item_id: t for t in s.scalars(select(ReviewTask))}
    assert tasks[items["agree.jpg"].id].route == ROUTE_AUTO
    rt = tasks[items["disagree.jpg"].id]
    assert rt.route == ROUTE_REVIEW and "plate_number 0.000" in rt.reason

    # what the annotator sees: the VLM's plate pre-filled, the plate reader's as a hint
    from sqlalchemy.orm import selectinload

    from labelloop.db import Item

    with sqlite_db.session() as s:  # as the importer loads it: with its aliases (the file name)
        item = s.get(Item, items["disagree.jpg"].id, options=[selectinload(Item.aliases)])
    task, _ = build_task(SPEC, rt, pd, item, _Media())  # type: ignore[arg-type]
    assert task["data"]["file_name"] == "disagree.jpg"
    texts = {r["from_name"]: r["value"] for r in task["predictions"][0]["result"] if r["type"] == "textarea"}
    assert texts["plate_number"]["text"] == [wrong_plate]
    assert f"plate says {disagree_sc.plate!r}" in task["data"]["hints"]
    assert f"vllm says {wrong_plate!r}" in task["data"]["hints"]
