"""Record <-> Label Studio result conversion: round trips for every spec and every field kind.

No server needed: these pin down the coordinate conventions (percent of the image in Label Studio,
original pixels in records) that would silently ruin a fine-tune if wrong.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

import pytest

from labelloop.review import convert
from labelloop.review.convert import AnnotationError, ImageSize, box_to_value, from_result, to_result, value_to_box
from labelloop.specs import SpecRegistry

pytest_plugins = ["fixtures_labelstudio"]

SPECS = ["vehicle_extraction", "ocr_lines", "caption", "grounding", "document_layout"]


@pytest.fixture(scope="module")
def specs() -> SpecRegistry:
    return SpecRegistry()


@pytest.fixture(scope="module")
def sample_record(review_data: Any) -> Callable[[str], dict[str, Any]]:
    return review_data.sample_record


def _size(spec_name: str) -> ImageSize:
    return ImageSize(1224, 1584) if spec_name == "document_layout" else ImageSize(640, 480)


def test_box_percent_round_trip_integer_pixels() -> None:
    rng = random.Random(5)
    for _ in range(2000):
        w, h = rng.randrange(16, 8000), rng.randrange(16, 8000)
        x1, y1 = rng.randrange(0, w - 1), rng.randrange(0, h - 1)
        box = [x1, y1, rng.randrange(x1 + 1, w + 1), rng.randrange(y1 + 1, h + 1)]
        value = box_to_value(box, ImageSize(w, h))
        assert 0 <= value["x"] <= 100 and 0 <= value["y"] <= 100
        assert value_to_box(value, ImageSize(w, h), integer=True) == box


def test_box_percent_round_trip_float_page_pixels() -> None:
    rng = random.Random(6)
    size = ImageSize(1224, 1584)
    for _ in range(500):
        x1, y1 = round(rng.uniform(0, 1000), 2), round(rng.uniform(0, 1300), 2)
        box = [x1, y1, round(rng.uniform(x1, 1224), 2), round(rng.uniform(y1, 1584), 2)]
        assert value_to_box(box_to_value(box, size), size, integer=False) == box


def test_percent_is_of_the_original_image() -> None:
    value = box_to_value([64, 48, 320, 240], ImageSize(640, 480))
    assert value == {"x": 10.0, "y": 10.0, "width": 40.0, "height": 40.0, "rotation": 0}


def test_rotated_rectangle_becomes_its_bounding_box_and_boxes_outside_are_rejected() -> None:
    size = ImageSize(1000, 500)
    # 100x50 px rectangle at (500, 100) rotated 90 degrees clockwise about its top-left corner
    value = {"x": 50.0, "y": 20.0, "width": 10.0, "height": 10.0, "rotation": 90}
    assert value_to_box(value, size, integer=True) == [450, 100, 500, 200]
    overshoot = {"x": -2.0, "y": 95.0, "width": 10.0, "height": 10.0, "rotation": 0}
    with pytest.raises(AnnotationError, match=r"lies outside the 1000x500 image"):
        value_to_box(overshoot, size, integer=True)
    rounding = {"x": -0.0001, "y": 90.0, "width": 10.0001, "height": 10.00001, "rotation": 0}
    assert value_to_box(rounding, size, integer=True) == [0, 450, 100, 500]
    with pytest.raises(AnnotationError, match="x='abc' is not a number"):
        value_to_box({**value, "x": "abc"}, size, integer=True)


@pytest.mark.parametrize("name", SPECS)
def test_record_round_trip_for_every_spec(specs: SpecRegistry, sample_record: Callable, name: str) -> None:
    spec = specs.get(name)
    record = sample_record(name)
    view = convert.task_view(spec, record, 0)
    result = to_result(spec, view, _size(name))
    assert result, "every sample record has something to show"
    back = from_result(spec, result, _size(name), model_view=view)
    if spec.media == "document":
        # reviewed blocks: content, type and box kept exactly, provenance kept, score = human
        for got, want in zip(back["blocks"], view["blocks"], strict=True):
            assert got == {**want, "score": convert.HUMAN_BLOCK_SCORE}
        assert convert.merge_page(spec, record, 0, back)["pages"][0]["blocks"] == back["blocks"]
    else:
        assert back == record
    for entry in result:
        assert entry["from_name"] and entry["to_name"] == "image"
        if "x" in entry["value"]:
            assert (entry["original_width"], entry["original_height"]) == (_size(name).width, _size(name).height)


def test_vehicle_result_layout(specs: SpecRegistry, sample_record: Callable) -> None:
    spec = specs.get("vehicle_extraction")
    record = sample_record("vehicle_extraction")
    result = to_result(spec, record, ImageSize(640, 480), {"plate_box": 0.4, "vehicle_box": 0.9})
    by_id = {r["id"]: r for r in result}
    plate = by_id["plate_box"]
    assert plate["from_name"] == "boxes" and plate["value"]["rectanglelabels"] == ["plate"]
    assert plate["score"] == 0.4
    assert by_id["vehicle_box"]["value"]["rectanglelabels"] == ["vehicle"]
    assert by_id["plate_number"]["value"] == {"text": [record["plate_number"]]}
    assert by_id["plate_color"]["type"] == "choices"
    assert by_id["plate_color"]["value"] == {"choices": [record["plate_color"]]}


def test_empty_and_invalid_values_produce_no_regions(specs: SpecRegistry, sample_record: Callable) -> None:
    spec = specs.get("vehicle_extraction")
    record = {**sample_record("vehicle_extraction"), "brand": "", "plate_box": None, "color": "purple"}
    result = to_result(spec, record, ImageSize(640, 480))
    assert {r["id"] for r in result} == {"plate_number", "plate_color", "vehicle_type", "vehicle_box"}
    back = from_result(spec, result, ImageSize(640, 480))
    assert back["brand"] == "" and back["plate_box"] is None and back["color"] is None


def test_regions_link_text_by_region_id_and_carry_scores(specs: SpecRegistry, sample_record: Callable) -> None:
    spec = specs.get("ocr_lines")
    record = sample_record("ocr_lines")
    result = to_result(spec, record, ImageSize(640, 480), {"lines": [0.9, 0.5, 0.7]})
    rects = [r for r in result if r["type"] == "rectanglelabels"]
    texts = {r["id"]: r for r in result if r["type"] == "textarea"}
    assert [r["score"] for r in rects] == [0.9, 0.5, 0.7]
    for rect in rects:
        assert texts[rect["id"]]["from_name"] == "transcription"
        assert texts[rect["id"]]["value"]["x"] == rect["value"]["x"]
    # an annotator draws a new line and corrects the text of the second one
    edited = copy.deepcopy(result)
    edited.append({**rects[0], "id": "new1", "value": {**rects[0]["value"], "y": 80.0}})
    for r in edited:
        if r["id"] == rects[1]["id"] and r["type"] == "textarea":
            r["value"]["text"] = ["Merci de votre visite !"]
    back = from_result(spec, edited, ImageSize(640, 480))
    assert back["lines"][1]["text"] == "Merci de votre visite !"
    assert back["lines"][3] == {"bbox": [40, 384, 400, 416], "text": ""}


def test_object_labels_are_reported_for_label_extension(specs: SpecRegistry, sample_record: Callable) -> None:
    spec = specs.get("grounding")
    assert convert.object_labels(spec, sample_record("grounding")) == {"label": {"person", "car", "traffic light"}}


def test_missing_size_falls_back_to_the_results_original_size(specs: SpecRegistry, sample_record: Callable) -> None:
    spec = specs.get("grounding")
    result = to_result(spec, sample_record("grounding"), ImageSize(640, 480))
    assert from_result(spec, result, None) == sample_record("grounding")


def test_document_page_merge_rebuilds_markdown_only_when_blocks_change(
    specs: SpecRegistry, sample_record: Callable
) -> None:
    spec = specs.get("document_layout")
    record = sample_record("document_layout")
    second = copy.deepcopy(record["pages"][0])
    second.update(page=1, image_key=second["image_key"].replace("/0.png", "/1.png"))
    record["pages"].append(second)
    record["markdown"] = "model markdown"
    view = convert.task_view(spec, record, 1)
    unchanged = from_result(spec, to_result(spec, view, ImageSize(1224, 1584)), ImageSize(1224, 1584), view)
    assert convert.merge_page(spec, record, 1, unchanged)["markdown"] == "model markdown"
    changed = copy.deepcopy(unchanged)
    changed["blocks"][0]["content"] = "Annual report 2026"
    merged = convert.merge_page(spec, record, 1, changed)
    assert merged["pages"][0] == record["pages"][0]  # the other page is untouched
    assert merged["pages"][1]["blocks"][0]["content"] == "Annual report 2026"
    assert merged["markdown"].startswith("# Annual report\n")
    assert "# Annual report 2026" in merged["markdown"] and "<table>" in merged["markdown"]


def test_comparable_drops_block_provenance(specs: SpecRegistry, sample_record: Callable) -> None:
    f = specs.get("document_layout").fields["blocks"]
    blocks = sample_record("document_layout")["pages"][0]["blocks"]
    assert all(set(b) == {"type", "bbox", "content"} for b in convert.comparable(f, blocks))
