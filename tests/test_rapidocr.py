"""RapidOCR on CPU with the wheel's models: real text from the sample images, boxes in original
pixels (EXIF included), plate numbers by pattern, and nothing downloaded."""

from __future__ import annotations

import asyncio
import io
import random
from pathlib import Path
from typing import Any

import pytest
from fixtures_vllm import ingest_images, make_plate_image, predictions, run_batch
from PIL import Image
from plate_render import cjk_font_path, render_scene

from labelloop.config import Settings
from labelloop.db import Database, Item
from labelloop.prelabel.factory import make_backend
from labelloop.prelabel.rapidocr_backend import (
    RapidOCRBackend,
    build_result,
    find_pattern_line,
    normalise_plate,
)
from labelloop.specs import SpecRegistry
from labelloop.specs.compare import iou
from labelloop.storage import LocalStore

SPECS = SpecRegistry()
OCR_LINES = SPECS.get("ocr_lines")
VEHICLE = SPECS.get("vehicle_extraction")

#: strings a person reading each image confirms (checked by eye), and where they are
EXPECTED = {
    "qwen-ocr_example1.jpg": ["Coca-Cola Company"],  # the bottle's top line
    "qwen-ocr_example2.jpg": ["CHANGE DUE", "17,000", "20,000", "3,000"],  # Auntie Anne's receipt
    "qwen-ocr_example3.jpg": [
        "UNIHAKKA INTERNATIONAL SDN BHD",
        "01 Jun 2018 18:41",
        "Facebook.com/BarWangRice",
        "RM8.75",
    ],
    "qwen-ocr_example4.jpg": ["221021325353", "10283819", "2013-06-29", "辽宁省道路汽车客票"],  # bus ticket
    "qwen-ocr_example5.jpg": ["山东京特食品有限公司", "0546-6440388"],  # chocolate wrapper
}


@pytest.fixture(scope="module")
def ocr() -> RapidOCRBackend:
    return RapidOCRBackend()


@pytest.fixture(scope="module")
def sample_lines(ocr: RapidOCRBackend, sample_data: Path) -> dict[str, tuple[list[dict[str, Any]], int, int]]:
    return {name: ocr.ocr_lines((sample_data / "images" / name).read_bytes()) for name in EXPECTED}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ocr_reads_what_a_person_reads(name: str, sample_lines: dict[str, Any]) -> None:
    lines, w, h = sample_lines[name]
    text = "\n".join(ln["text"] for ln in lines)
    for expected in EXPECTED[name]:
        assert expected in text, f"{expected!r} not read in {name}: {text!r}"
    for ln in lines:
        x1, y1, x2, y2 = ln["bbox"]
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert 0.5 <= ln["score"] <= 1.0


def test_line_boxes_are_where_the_text_is(sample_lines: dict[str, Any]) -> None:
    lines, w, h = sample_lines["qwen-ocr_example4.jpg"]  # 716 x 445 ticket
    by_text = {ln["text"]: ln["bbox"] for ln in lines}
    x1, y1, x2, y2 = by_text["221021325353"]  # invoice code, upper right
    assert x1 > w * 0.55 and y2 < h * 0.4
    x1, y1, x2, y2 = by_text["2013-06-29"]  # travel date, bottom left
    assert x2 < w * 0.5 and y1 > h * 0.75
    lines, w, h = sample_lines["qwen-ocr_example3.jpg"]  # receipt header is on top, footer below
    ys = {ln["text"]: ln["bbox"][1] for ln in lines}
    assert ys["UNIHAKKA INTERNATIONAL SDN BHD"] < h * 0.2 < h * 0.9 < ys["Facebook.com/BarWangRice"]


def test_boxes_are_in_original_pixels_after_exif_orientation(
    ocr: RapidOCRBackend, sample_data: Path, sample_lines: dict[str, Any]
) -> None:
    data = (sample_data / "images" / "qwen-ocr_example4.jpg").read_bytes()
    upright, w, h = sample_lines["qwen-ocr_example4.jpg"]
    # store the pixels turned 90 degrees with EXIF "rotate 90 CW" (6): the same picture displayed
    img = Image.open(io.BytesIO(data)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif)
    rotated, rw, rh = ocr.ocr_lines(buf.getvalue())
    assert (rw, rh) == (w, h)
    want = next(ln for ln in upright if ln["text"] == "221021325353")["bbox"]
    got = next(ln for ln in rotated if ln["text"] == "221021325353")["bbox"]
    assert iou(want, got) > 0.8


def test_ocr_lines_record_and_confidence(sample_lines: dict[str, Any]) -> None:
    lines, _, _ = sample_lines["qwen-ocr_example3.jpg"]
    res = build_result(OCR_LINES, lines)
    assert res.status == "ok"
    record_lines = res.record["lines"]
    assert set(record_lines[0]) == {"bbox", "text"}, "the record is the spec's (scores go to the detail)"
    assert [ln["text"] for ln in record_lines] == [ln["text"] for ln in lines]
    scores = res.confidence_detail["fields"]["lines"]["scores"]
    assert len(scores) == len(record_lines) >= 30
    assert res.field_confidence["lines"] == min(scores) == res.confidence
    empty = build_result(OCR_LINES, [])
    assert empty.record == {"lines": []} and empty.field_confidence["lines"] == 0.0


def test_an_unreadable_image_is_a_failed_prediction(ocr: RapidOCRBackend) -> None:
    item = Item(id=1, sha256="0" * 64, media_type="image", mime="image/jpeg", ext="jpg", size_bytes=1, storage_key="k")
    res = asyncio.run(ocr.predict(item, b"\xff\xd8\xff\xe0 not a jpeg", OCR_LINES))
    assert res.status == "failed" and res.error.startswith("OCR failed")


def test_plate_found_by_syntax_with_its_box_and_score(ocr: RapidOCRBackend) -> None:
    scene = render_scene(random.Random(2), "ordinary_blue", cjk_font_path(), hard=False)
    item = Item(id=1, sha256="0" * 64, media_type="image", mime="image/jpeg", ext="jpg", size_bytes=1, storage_key="k")
    res = asyncio.run(ocr.predict(item, scene.image, VEHICLE))
    rec, conf = res.record, res.field_confidence
    assert rec["plate_number"] == scene.plate
    assert iou(rec["plate_box"], scene.box) > 0.5
    assert conf["plate_number"] == conf["plate_box"] > 0.8
    # what OCR cannot know is left empty with confidence 0, so the item goes to review
    assert rec["brand"] == "" and rec["plate_color"] is None and rec["vehicle_box"] is None
    assert conf["brand"] == conf["plate_color"] == conf["vehicle_box"] == 0.0
    assert res.confidence == 0.0
    assert set(rec) == set(VEHICLE.fields)


def test_no_plate_means_empty_plate_fields() -> None:
    lines = [
        {"bbox": [0, 0, 10, 10], "text": "TOTAL", "score": 0.99},
        {"bbox": [0, 0, 9, 9], "text": "10283819", "score": 1.0},
    ]
    res = build_result(VEHICLE, lines)
    assert res.record["plate_number"] == "" and res.record["plate_box"] is None
    assert res.field_confidence["plate_number"] == res.field_confidence["plate_box"] == 0.0


def test_plate_normalisation_and_pattern_priority() -> None:
    assert normalise_plate("粤B·12345") == "粤B12345"
    assert normalise_plate("ab 12.34 c") == "AB1234C"
    assert VEHICLE.options["ocr_fields"]["plate_number"]["syntax"] == "cn_plate"
    lines = [
        {"bbox": [0, 0, 1, 1], "text": "KA 01 AB 1234", "score": 0.99},
        {"bbox": [2, 2, 3, 3], "text": "粤B·12345", "score": 0.9},
        {"bbox": [4, 4, 5, 5], "text": "DDS32", "score": 1.0},  # the fragment loose patterns took
        {"bbox": [6, 6, 7, 7], "text": "口·T5022", "score": 0.99},  # a misread province
    ]
    hit = find_pattern_line(lines, [], "cn_plate")
    assert hit is not None and hit["text"] == "粤B12345" and hit["bbox"] == [2, 2, 3, 3]
    assert find_pattern_line(lines[2:], [], "cn_plate") is None
    res = build_result(VEHICLE, lines[2:])
    assert res.record["plate_number"] == "" and res.field_confidence["plate_number"] == 0.0
    # explicit patterns still work for specs that declare them
    assert find_pattern_line(lines, ["[A-Z]{2}[0-9]{2}[A-Z]{2}[0-9]{4}"])["text"] == "KA01AB1234"


def test_models_come_from_the_wheel_and_nothing_is_downloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    from rapidocr.utils import download_file

    def no_network(*a: Any, **k: Any) -> None:
        raise AssertionError("RapidOCR tried to download a model")

    monkeypatch.setattr(download_file.DownloadFile, "run", classmethod(no_network))
    backend = RapidOCRBackend()
    lines, _, _ = backend.ocr_lines(make_plate_image("XY 987 Z")[0])
    assert any(normalise_plate(ln["text"]) == "XY987Z" for ln in lines)
    assert backend.model == "rapidocr"
    assert backend.model_version.startswith("rapidocr-3.") and "PP-OCRv6_det_small" in backend.model_version


def test_supports_and_prompt_hash(ocr: RapidOCRBackend) -> None:
    assert ocr.supports(OCR_LINES) and ocr.supports(VEHICLE)
    assert not ocr.supports(SPECS.get("caption")) and not ocr.supports(SPECS.get("grounding"))
    reworded = OCR_LINES.model_copy(update={"prompt": "Read it all."})
    assert ocr.prompt_hash(reworded) == ocr.prompt_hash(OCR_LINES), "OCR ignores the prompt"
    options = {**VEHICLE.options, "ocr_fields": {"plate_number": {"patterns": ["[A-Z]{3}[0-9]{3}"]}}}
    assert ocr.prompt_hash(VEHICLE.model_copy(update={"options": options})) != ocr.prompt_hash(VEHICLE)


def test_runner_with_rapidocr(
    sqlite_settings: Settings, sqlite_db: Database, sample_data: Path, tmp_path: Path
) -> None:
    store = LocalStore(sqlite_settings.storage.root)
    images = {
        "ticket.jpg": (sample_data / "images" / "qwen-ocr_example4.jpg").read_bytes(),
        "plate.jpg": (scene := render_scene(random.Random(2), "ordinary_blue", cjk_font_path(), hard=False)).image,
    }
    items = ingest_images(sqlite_db, store, sqlite_settings, tmp_path / "in", images)
    backend = make_backend("rapidocr", sqlite_settings, store)
    assert isinstance(backend, RapidOCRBackend)
    stats = run_batch(sqlite_db, store, OCR_LINES, backend, concurrency=2)
    assert (stats.ok, stats.failed) == (2, 0)
    (p,) = predictions(sqlite_db, item_id=items["ticket.jpg"].id)
    assert p.backend == "rapidocr" and p.model == "rapidocr" and p.model_version == backend.model_version
    assert p.prompt_hash == backend.prompt_hash(OCR_LINES)
    assert any(ln["text"] == "10283819" for ln in p.record["lines"])
    assert 0.5 < p.confidence <= 1.0
    plates = run_batch(sqlite_db, store, VEHICLE, backend, concurrency=2)
    assert plates.ok == 2
    (v,) = predictions(sqlite_db, item_id=items["plate.jpg"].id, spec="vehicle_extraction")
    assert v.record["plate_number"] == scene.plate and v.confidence == 0.0  # the rest needs review
    again = run_batch(sqlite_db, store, OCR_LINES, backend, concurrency=2)
    assert again.considered == 0, "a rerun predicts nothing new"
