"""Video review conversions: events <-> TimelineLabels frames, QA <-> TextArea rows, comparisons."""

from __future__ import annotations

import pytest

from labelloop.review import convert
from labelloop.specs import SpecRegistry
from labelloop.specs.compare import compare_field

REG = SpecRegistry()
CAP, QA = REG.get("video_caption"), REG.get("video_qa")
SIZE = convert.ImageSize(640, 480, fps=25.0)


def test_seconds_and_frames() -> None:
    # frame n shows [(n-1)/fps, n/fps): 0..1 s at 25 fps is frames 1..25
    assert convert.seconds_to_frames(0.0, 1.0, 25) == {"start": 1, "end": 25}
    assert convert.frames_to_seconds({"start": 1, "end": 25}, 25) == (0.0, 1.0)
    # a time inside a frame snaps to that frame's boundaries
    assert convert.seconds_to_frames(0.05, 0.09, 25) == {"start": 2, "end": 3}
    # NTSC rate: frame boundaries round-trip exactly
    fps = 30000 / 1001
    for n in (1, 2, 100, 1799):
        rng = convert.seconds_to_frames((n - 1) / fps, (n + 9) / fps, fps)
        assert rng == {"start": n, "end": n + 9}
    with pytest.raises(ValueError, match="not a frame range"):
        convert.frames_to_seconds({"start": 5, "end": 4}, 25)


def test_events_round_trip_through_label_studio_results() -> None:
    record = {
        "caption": "A square moves and turns green.",
        "events": [
            {"start": 0.0, "end": 1.0, "label": "action", "description": "It moves."},
            {"start": 1.0, "end": 2.52, "label": "change", "description": "It turns green."},
        ],
    }
    result = convert.to_result(CAP, record, SIZE, {"events": [0.9, 0.4], "caption": 0.8})
    timeline = [r for r in result if r["type"] == "timelinelabels"]
    assert [r["value"]["ranges"] for r in timeline] == [[{"start": 1, "end": 25}], [{"start": 26, "end": 63}]]
    assert [r["score"] for r in timeline] == [0.9, 0.4]
    assert convert.from_result(CAP, result, SIZE) == record
    changed = {
        k: compare_field(f, record[k], convert.from_result(CAP, result, SIZE)[k])[0] for k, f in CAP.fields.items()
    }
    assert changed == {"caption": False, "events": False}


def test_a_moved_or_relabelled_event_is_a_correction() -> None:
    f = CAP.fields["events"]
    model = [{"start": 1.0, "end": 2.5, "label": "change", "description": "It turns green."}]
    nudged = [{"start": 1.04, "end": 2.48, "label": "change", "description": "It turns green."}]
    moved = [{"start": 3.0, "end": 3.5, "label": "change", "description": "It turns green."}]
    relabelled = [{"start": 1.0, "end": 2.5, "label": "action", "description": "It turns green."}]
    assert compare_field(f, model, nudged)[0] is False  # temporal IoU 0.93: same event
    assert compare_field(f, model, moved)[0] is True
    assert compare_field(f, model, relabelled)[0] is True
    assert compare_field(f, model, model + moved)[0] is True  # a missed event


def test_bad_timeline_annotations_are_rejected_with_reasons() -> None:
    def region(value: dict) -> list[dict]:
        return [{"id": "r1", "from_name": "events", "to_name": "video", "type": "timelinelabels", "value": value}]

    with pytest.raises(ValueError, match="2 ranges"):
        convert.from_result(
            CAP,
            region({"ranges": [{"start": 1, "end": 2}, {"start": 5, "end": 6}], "timelinelabels": ["action"]}),
            SIZE,
        )
    with pytest.raises(ValueError, match="0 labels"):
        convert.from_result(CAP, region({"ranges": [{"start": 1, "end": 2}], "timelinelabels": []}), SIZE)
    with pytest.raises(ValueError, match="frame rate is unknown"):
        convert.from_result(CAP, region({"ranges": [{"start": 1, "end": 2}], "timelinelabels": ["action"]}), None)


def test_qa_round_trip_and_mismatched_rows() -> None:
    record = {"qa": [{"question": "What colour?", "answer": "Green."}, {"question": "When?", "answer": "At 1 s."}]}
    result = convert.to_result(QA, record, SIZE)
    assert convert.from_result(QA, result, SIZE) == record
    result[1]["value"]["text"].pop()
    with pytest.raises(ValueError, match="2 question\\(s\\) but 1 answer"):
        convert.from_result(QA, result, SIZE)
