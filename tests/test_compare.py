"""Per-field comparisons: what counts as a reviewer's correction, and its distance figure."""

from __future__ import annotations

import pytest

from labelloop.specs import SpecRegistry
from labelloop.specs.compare import (
    compare_exact,
    compare_field,
    compare_iou,
    compare_record,
    compare_set,
    compare_text,
    iou,
)


def test_exact_ignores_case_and_whitespace_only() -> None:
    assert compare_exact("Blue", " blue ") == (False, 0.0)
    assert compare_exact("ABC 123", "ABC  123") == (False, 0.0)
    assert compare_exact(None, "") == (False, 0.0)
    assert compare_exact("ABC123", "ABC128") == (True, 1.0)
    assert compare_exact("car", None) == (True, 1.0)
    assert compare_exact(3, 3) == (False, 0.0)


def test_text_is_normalised_edit_distance_with_tolerance() -> None:
    changed, d = compare_text("kitten", "sitting")
    assert changed and d == pytest.approx(3 / 7)
    assert compare_text("Toyota", "Toyota ") == (False, 0.0)
    assert compare_text("Toyota", "toyota")[0], "case is a real edit in a transcription"
    assert compare_text("a red car parked", "a red car parked.", tolerance=0.1) == (False, pytest.approx(1 / 17))
    assert compare_text("", "") == (False, 0.0)
    assert compare_text(None, "x") == (True, 1.0)


def test_iou_and_box_comparison() -> None:
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert compare_iou([0, 0, 10, 10], [0, 0, 10, 11]) == (False, pytest.approx(1 - 100 / 110))
    assert compare_iou([0, 0, 10, 10], [5, 0, 15, 10])[0], "IoU 1/3 < 0.5"
    assert not compare_iou([0, 0, 10, 10], [5, 0, 15, 10], threshold=0.3)[0]
    assert compare_iou(None, None) == (False, 0.0)
    assert compare_iou([0, 0, 1, 1], None) == (True, 1.0)
    assert compare_iou(None, [0, 0, 1, 1]) == (True, 1.0)


OBJECTS = [
    {"bbox_2d": [0, 0, 100, 100], "label": "car"},
    {"bbox_2d": [200, 0, 300, 100], "label": "person"},
    {"bbox_2d": [0, 200, 100, 300], "label": "dog"},
]


def test_set_ignores_order_and_small_box_moves() -> None:
    moved = [dict(o, bbox_2d=[v + 3 for v in o["bbox_2d"]]) for o in reversed(OBJECTS)]
    assert compare_set(OBJECTS, moved) == (False, 0.0)
    assert compare_set([], []) == (False, 0.0)
    assert compare_set(None, []) == (False, 0.0)


def test_set_counts_relabels_removals_additions_and_moves() -> None:
    relabel = [dict(OBJECTS[0], label="truck"), *OBJECTS[1:]]
    assert compare_set(OBJECTS, relabel) == (True, pytest.approx(1 / 3))
    assert compare_set(OBJECTS, OBJECTS[:2]) == (True, pytest.approx(1 / 3))
    extra = [*OBJECTS, {"bbox_2d": [400, 400, 500, 500], "label": "cat"}]
    assert compare_set(OBJECTS, extra) == (True, pytest.approx(1 / 4))
    far = [dict(OBJECTS[0], bbox_2d=[50, 50, 150, 150]), *OBJECTS[1:]]  # IoU 1/7
    assert compare_set(OBJECTS, far) == (True, pytest.approx(1 / 3))
    assert compare_set(OBJECTS, []) == (True, 1.0)


def test_set_pairs_by_best_overlap_not_list_order() -> None:
    # two overlapping model boxes; the human kept both but swapped nothing: optimal pairing must
    # not greedily steal the better partner of the second box
    model = [{"bbox_2d": [0, 0, 100, 100], "label": "a"}, {"bbox_2d": [30, 0, 130, 100], "label": "b"}]
    human = [{"bbox_2d": [32, 0, 132, 100], "label": "b"}, {"bbox_2d": [0, 0, 100, 100], "label": "a"}]
    assert compare_set(model, human) == (False, 0.0)


def test_set_of_regions_uses_text_tolerance() -> None:
    lines = [{"bbox": [0, 0, 100, 20], "text": "TOTAL RM8.75"}, {"bbox": [0, 30, 100, 50], "text": "CASH"}]
    typo = [lines[0] | {"text": "TOTAL RM8.76"}, lines[1]]
    assert compare_set(lines, typo, tolerance=0.0) == (True, pytest.approx(1 / 2))
    assert compare_set(lines, typo, tolerance=0.1) == (False, 0.0)


def test_set_of_plain_values_is_multiset_equality() -> None:
    assert compare_set(["a", "b", "b"], ["b", "a", "b"]) == (False, 0.0)
    assert compare_set(["a", "b"], ["a", "b", "b"])[0]


def test_compare_field_dispatches_on_the_spec() -> None:
    spec = SpecRegistry().get("vehicle_extraction")
    f = spec.fields
    assert compare_field(f["plate_number"], "ABC123", "abc123") == (False, 0.0)
    assert compare_field(f["brand"], "Toyota", "Toyot") == (False, pytest.approx(1 / 6))  # tolerance 0.2
    assert compare_field(f["brand"], "Toyota", "Honda")[0]
    assert compare_field(f["plate_box"], [0, 0, 10, 10], [20, 20, 30, 30]) == (True, 1.0)
    model = {"plate_number": "ABC123", "plate_color": "blue", "vehicle_box": [0, 0, 100, 100]}
    human = {"plate_number": "ABC128", "plate_color": "blue", "vehicle_box": [2, 2, 100, 100]}
    out = compare_record(spec.fields, model, human)
    assert set(out) == set(spec.fields)
    assert out["plate_number"] == (True, 1.0)
    assert out["plate_color"] == (False, 0.0)
    assert out["vehicle_box"][0] is False
    assert out["brand"] == (False, 0.0)  # both empty
    grounding = SpecRegistry().get("grounding")
    assert compare_field(grounding.fields["objects"], OBJECTS, OBJECTS[::-1]) == (False, 0.0)
