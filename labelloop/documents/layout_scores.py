"""Recover the layout model's confidence, which pymupdf-layout computes but does not return.

pymupdf-layout 2.0 classifies every text/image box of a page with a graph network (softmax over
the classes), groups boxes into regions and labels each region by majority vote, then drops the
probabilities: ``page.get_layout(return_raw=True)`` gives regions with a class but no score.
A block confidence that is always 1.0 would make calibration useless, so this module wraps two
functions of the installed package:

* ``BoxRFDGNN.group_node_by_edge`` (which receives the per-box probabilities) to add a region
  score: the summed winning-class probability of the member boxes that voted for the region's
  class, divided by the number of member boxes. A region whose boxes disagree scores low even
  when each box is confident.
* ``pymupdf._get_layout`` (what ``Page.get_layout`` calls) to hand each page's raw regions to the
  caller inside :func:`capture`.

Both wrappers pass results through unchanged otherwise. If the package layout ever changes,
:func:`install` returns False and the backend scores every text-layer block 0, i.e. review
(saying so in its detail).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from labelloop.documents.render import iou

SCORE_KEY = "labelloop_score"
_MARK = "_labelloop_wrapped"
_state = threading.local()
_install_lock = threading.Lock()
_installed: bool | None = None


@dataclass(frozen=True)
class RawRegion:
    """One region as the layout model returned it, in PDF points."""

    bbox: tuple[float, float, float, float]
    class_name: str
    score: float | None


def install() -> bool:
    """Install the wrappers once per process; True when scores will be available."""
    global _installed
    with _install_lock:
        if _installed is not None:
            return _installed
        _installed = _install()
        return _installed


def _install() -> bool:
    try:
        import pymupdf
        import pymupdf4llm  # noqa: F401 - importing it activates the layout model
        from pymupdf.layout.onnx import BoxRFDGNN as gnn
    except ImportError:
        return False
    original_group = getattr(gnn, "group_node_by_edge", None)
    original_layout = getattr(pymupdf, "_get_layout", None)
    if not callable(original_group) or not callable(original_layout):
        return False
    if not getattr(original_group, _MARK, False):

        def group_with_scores(node_cls: Any, node_score: Any, *args: Any, **kwargs: Any) -> list[dict]:
            groups = original_group(node_cls, node_score, *args, **kwargs)
            for g in groups:
                idx = g.get("indicies") or []
                if idx:
                    cls = g.get("group_class")
                    agree = sum(float(node_score[i]) for i in idx if int(node_cls[i]) == cls)
                    g[SCORE_KEY] = agree / len(idx)
            return groups

        setattr(group_with_scores, _MARK, True)
        gnn.group_node_by_edge = group_with_scores
    if not getattr(original_layout, _MARK, False):

        def layout_with_capture(page: Any, **kwargs: Any) -> Any:
            result = original_layout(page, **kwargs)
            sink = getattr(_state, "sink", None)
            if sink is not None and kwargs.get("return_raw") and isinstance(result, list):
                sink[page.number] = [_region(g) for g in result if isinstance(g, dict)]
            return result

        setattr(layout_with_capture, _MARK, True)
        pymupdf._get_layout = layout_with_capture
    return True


def _region(group: dict[str, Any]) -> RawRegion:
    x1, y1, x2, y2 = (float(v) for v in group["group_bbox"][:4])
    score = group.get(SCORE_KEY)
    return RawRegion((x1, y1, x2, y2), str(group.get("class_name", "")), None if score is None else float(score))


@contextmanager
def capture() -> Iterator[dict[int, list[RawRegion]]]:
    """Collect {page number: raw regions} for layout runs made by this thread inside the block."""
    previous = getattr(_state, "sink", None)
    sink: dict[int, list[RawRegion]] = {}
    _state.sink = sink
    try:
        yield sink
    finally:
        _state.sink = previous


def match_score(
    bbox: tuple[float, float, float, float], regions: list[RawRegion], min_iou: float = 0.5
) -> float | None:
    """Score of the raw region that best overlaps ``bbox`` (IoU >= ``min_iou``), else None.

    pymupdf4llm adjusts regions after the model (reading order, table normalisation), so the
    final boxes are matched back to the model's regions by overlap rather than by identity.
    """
    best, best_iou = None, min_iou
    for r in regions:
        v = iou(bbox, r.bbox)
        if v >= best_iou and r.score is not None:
            best, best_iou = r.score, v
    return best
