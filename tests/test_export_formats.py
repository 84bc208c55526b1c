"""Formats and coordinates: what each trainer reads, checked against hand calculations."""

from __future__ import annotations

import json
from typing import Any

import pytest

from labelloop.config import ExportSettings
from labelloop.export.answers import page_markdown, substitute_swift
from labelloop.export.checker import ExportChecker
from labelloop.export.formats import llamafactory_dataset_info, llamafactory_entry, qwen_entry, swift_entry
from labelloop.export.samples import Sample, build_samples
from labelloop.specs import SpecRegistry

SPECS = SpecRegistry()
GROUNDING = {
    "objects": [
        {"bbox_2d": [333, 111, 777, 555], "label": "car"},
        {"bbox_2d": [0, 0, 1000, 750], "label": "road"},
    ]
}
IMG = "images/abc.png"


def _samples(spec: str, record: dict[str, Any], export: ExportSettings, size: tuple[int, int] = (1000, 750)):
    return build_samples(
        SPECS.get(spec), record_id=1, record=record, split="train", images=[(IMG, *size)], export=export
    )


def _answer(sample: Sample) -> Any:
    return json.loads(qwen_entry(sample)["conversations"][1]["value"])


def test_qwen25_grounding_boxes_match_a_hand_calculation() -> None:
    # Qwen2.5-VL smart_resize of a 1000x750 image, min_pixels=3136, max_pixels=12845056:
    #   h = round(750 / 28) * 28 = 27 * 28 = 756;  w = round(1000 / 28) * 28 = 36 * 28 = 1008
    #   756 * 1008 = 762,048 lies within [3136, 12845056], so no rescale: the model sees 1008x756.
    # Box [333, 111, 777, 555] in original pixels scales by 1008/1000 = 1.008 and 756/750 = 1.008:
    #   x1 = 333 * 1.008 = 335.664 -> 336    y1 = 111 * 1.008 = 111.888 -> 112
    #   x2 = 777 * 1.008 = 783.216 -> 783    y2 = 555 * 1.008 = 559.44  -> 559
    # The whole-image box [0, 0, 1000, 750] becomes [0, 0, 1008, 756].
    export = ExportSettings(qwen_coordinate_mode="absolute_resized", min_pixels=3136, max_pixels=12_845_056)
    (sample,) = _samples("grounding", GROUNDING, export)
    assert _answer(sample) == [
        {"bbox_2d": [336, 112, 783, 559], "label": "car"},
        {"bbox_2d": [0, 0, 1008, 756], "label": "road"},
    ]
    assert sample.frame.bounds == (1008, 756)


def test_qwen25_grounding_when_the_processor_shrinks_the_image() -> None:
    # max_pixels = 256 * 28 * 28 = 200,704 < 1008 * 756, so smart_resize scales down:
    #   beta = sqrt(1000 * 750 / 200704) = 1.933064
    #   h = floor(750 / beta / 28) * 28 = floor(13.857) * 28 = 364
    #   w = floor(1000 / beta / 28) * 28 = floor(18.476) * 28 = 504
    # Box [333, 111, 777, 555]: x * 504/1000, y * 364/750:
    #   333 * 0.504 = 167.83 -> 168;  111 * 0.48533 = 53.87 -> 54
    #   777 * 0.504 = 391.61 -> 392;  555 * 0.48533 = 269.36 -> 269
    export = ExportSettings(min_pixels=3136, max_pixels=200_704)
    (sample,) = _samples("grounding", GROUNDING, export)
    assert _answer(sample)[0]["bbox_2d"] == [168, 54, 392, 269]
    assert sample.frame.bounds == (504, 364)


def test_qwen2_and_qwen3_use_the_0_1000_grid() -> None:
    # relative: round(x / 1000 * 1000), round(y / 750 * 1000):
    #   [333, 111 / 0.75 = 148, 777, 555 / 0.75 = 740]
    export = ExportSettings(qwen_coordinate_mode="relative_1000")
    (sample,) = _samples("grounding", GROUNDING, export)
    assert _answer(sample)[0]["bbox_2d"] == [333, 148, 777, 740]
    assert _answer(sample)[1]["bbox_2d"] == [0, 0, 1000, 1000]
    assert sample.frame.bounds == (1000, 1000)


def test_qwen_entry_is_exactly_what_qwen_vl_finetune_reads() -> None:
    (sample,) = _samples("caption", {"caption": "A red car on a road."}, ExportSettings())
    entry = qwen_entry(sample)
    assert entry == {
        "image": IMG,
        "conversations": [
            {"from": "human", "value": "<image>\nDescribe this image."},
            {"from": "gpt", "value": "A red car on a road."},
        ],
    }


def test_structured_extraction_answer_is_the_record_with_boxes_converted() -> None:
    record = {
        "plate_number": "AB1234",
        "plate_color": "blue",
        "vehicle_type": "car",
        "brand": "",
        "color": "red",
        "plate_box": [400, 500, 520, 540],
        "vehicle_box": None,
    }
    (sample,) = _samples("vehicle_extraction", record, ExportSettings())
    answer = _answer(sample)
    # 400 * 1.008 = 403.2 -> 403; 500 * 1.008 = 504; 520 * 1.008 = 524.16 -> 524; 540 * 1.008 = 544.32 -> 544
    assert answer == {**record, "plate_box": [403, 504, 524, 544]}
    assert list(answer) == list(record), "field order kept"


def test_llamafactory_sharegpt_structure_and_dataset_info() -> None:
    (sample,) = _samples("grounding", GROUNDING, ExportSettings())
    entry = llamafactory_entry(sample)
    assert set(entry) == {"messages", "images"}
    assert [m["role"] for m in entry["messages"]] == ["user", "assistant"]
    assert entry["messages"][0]["content"].count("<image>") == len(entry["images"]) == 1
    assert entry["messages"][1]["content"] == qwen_entry(sample)["conversations"][1]["value"]
    info = llamafactory_dataset_info("labelloop_grounding_v0001", {"train": 5, "val": 0})
    assert info == {
        "labelloop_grounding_v0001_train": {
            "file_name": "llamafactory_train.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        }
    }


def test_swift_grounding_uses_objects_with_real_pixels() -> None:
    record = {"objects": [{"bbox_2d": [333, 111, 777, 555], "label": 'a "big" car'}]}
    (sample,) = _samples("grounding", record, ExportSettings())
    entry = swift_entry(sample)
    assert set(entry) == {"messages", "images", "objects"}
    answer = entry["messages"][1]["content"]
    assert answer == '[{"bbox_2d": <bbox>, "label": "<ref-object>"}]'
    assert entry["objects"] == {
        "ref": ['a \\"big\\" car'],
        "bbox": [[333, 111, 777, 555]],
        "bbox_type": "real",
    }
    # what ms-swift (QWENVL_BBOX_FORMAT=new) renders is our JSON again, here in original pixels
    assert json.loads(substitute_swift(answer, entry["objects"])) == record["objects"]


def test_swift_structured_answer_boxes_in_order_of_appearance() -> None:
    record = {
        **{k: "x" for k in ("plate_number", "brand")},
        "plate_box": [1, 2, 3, 4],
        "vehicle_box": [5, 6, 7, 8],
    }
    (sample,) = _samples("vehicle_extraction", record, ExportSettings())
    entry = swift_entry(sample)
    assert entry["messages"][1]["content"].count("<bbox>") == 2
    assert entry["objects"]["bbox"] == [[1, 2, 3, 4], [5, 6, 7, 8]] and entry["objects"]["ref"] == []
    caption = swift_entry(_samples("caption", {"caption": "hi"}, ExportSettings())[0])
    assert "objects" not in caption


def test_documents_give_one_markdown_sample_per_page() -> None:
    from test_export_support import block, document_record

    rec = document_record(
        "ab" * 32,
        [(612, 792), (612, 792)],
        [
            [
                block("discarded", [0, 0, 600, 20], "Page header"),
                block("title", [10, 30, 300, 60], "Results"),
                block("text", [10, 70, 600, 120], "We measured it."),
                block("equation", [10, 130, 300, 160], "E = mc^2"),
            ],
            [
                block("table", [10, 10, 600, 200], "<table><tr><td>1</td></tr></table>"),
                block("image", [0, 0, 9, 9]),
            ],
        ],
    )
    samples = build_samples(
        SPECS.get("document_layout"),
        record_id=3,
        record=rec,
        split="val",
        images=[("images/p0.png", 612, 792), ("images/p1.png", 612, 792)],
        export=ExportSettings(),
    )
    assert [s.page for s in samples] == [0, 1] and [s.images for s in samples] == [
        ["images/p0.png"],
        ["images/p1.png"],
    ]
    assert samples[0].answer == "# Results\n\nWe measured it.\n\n$$\nE = mc^2\n$$"
    assert samples[1].answer == "<table><tr><td>1</td></tr></table>"
    assert page_markdown({"blocks": []}) == ""


# --------------------------------------------------------------------------- the checker


def _check(
    spec: str,
    fmt: str,
    entry: dict[str, Any],
    present: frozenset[str] = frozenset({IMG}),
    bounds: tuple[int, int] = (1008, 756),
) -> list[str]:
    checker = ExportChecker(SPECS.get(spec))
    problems = checker.check(
        fmt, entry, record_id=9, page=None, images_present=present, bounds=bounds, original=(1000, 750)
    )
    assert all(p.record_id == 9 and p.format == fmt for p in problems)
    return [p.message for p in problems]


@pytest.fixture
def entries() -> dict[str, dict[str, Any]]:
    (sample,) = _samples("grounding", GROUNDING, ExportSettings())
    return {
        "qwen": qwen_entry(sample),
        "llamafactory": llamafactory_entry(sample),
        "swift": swift_entry(sample),
    }


def test_checker_accepts_what_the_exporter_writes(entries: dict[str, dict[str, Any]]) -> None:
    for fmt, entry in entries.items():
        assert _check("grounding", fmt, entry) == []


def test_checker_catches_placeholder_image_and_role_problems(entries: dict[str, dict[str, Any]]) -> None:
    qwen = json.loads(json.dumps(entries["qwen"]))
    qwen["conversations"][0]["value"] = "<image><image>\nDetect."
    assert _check("grounding", "qwen", qwen) == ["2 <image> placeholder(s) for 1 image(s)"]
    missing = _check("grounding", "qwen", entries["qwen"], present=frozenset())
    assert missing == [f"image {IMG} is not in the version"]
    system = json.loads(json.dumps(entries["qwen"]))
    system["conversations"].insert(0, {"from": "system", "value": "You are helpful."})
    assert _check("grounding", "qwen", system)[0].startswith("conversations must be user/assistant pairs")
    system["conversations"].pop(1)  # system, gpt: a system turn where the user should be
    msgs = _check("grounding", "qwen", system)
    assert "turn 0 is 'system', expected 'human' (alternating, no system turn)" in msgs
    lf = json.loads(json.dumps(entries["llamafactory"]))
    lf["messages"][1]["role"] = "user"
    assert _check("grounding", "llamafactory", lf) == [
        "turn 1 is 'user', expected 'assistant' (alternating, no system turn)"
    ]


def test_checker_catches_boxes_outside_and_unparsable_answers(entries: dict[str, dict[str, Any]]) -> None:
    out = json.loads(json.dumps(entries["qwen"]))
    out["conversations"][1]["value"] = json.dumps([{"bbox_2d": [0, 0, 1009, 10], "label": "x"}])
    assert _check("grounding", "qwen", out) == ["box [0, 0, 1009, 10] is outside 1008x756 or not ordered"]
    bad = json.loads(json.dumps(entries["qwen"]))
    bad["conversations"][1]["value"] = "[{'bbox_2d': [1, 2, 3, 4]}]"
    assert _check("grounding", "qwen", bad)[0].startswith("answer is not valid JSON")
    swift = json.loads(json.dumps(entries["swift"]))
    swift["objects"]["bbox"].append([0, 0, 1001, 10])
    msgs = _check("grounding", "swift", swift)
    assert "2 <bbox> placeholder(s) for 3 objects.bbox" in msgs
    assert "box [0, 0, 1001, 10] is outside 1000x750 or not ordered" in msgs
