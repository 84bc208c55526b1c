"""The coordinate frame a trainer reads boxes in, for one image.

Records keep boxes in original pixels. Qwen2.5-VL is trained on absolute pixels of the image *as
its processor resizes it* (``smart_resize`` with the trainer's ``min_pixels``/``max_pixels``),
Qwen2-VL and Qwen3-VL on a 0-1000 grid. The conversion itself lives in
:mod:`labelloop.prelabel.qwen_resize` (one implementation for serving and training); this module
only binds it to the export settings and knows the frame's bounds for the export checker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from labelloop.config import ExportSettings
from labelloop.prelabel.qwen_resize import CoordinateMode, ResizePlan, box_to_model

RELATIVE_GRID = 1000


@dataclass(frozen=True)
class ModelFrame:
    """Original image size and the frame its boxes are written in for the trainer."""

    plan: ResizePlan
    mode: CoordinateMode

    @property
    def bounds(self) -> tuple[int, int]:
        """(width, height) that every converted box must lie within."""
        if self.mode == "absolute_resized":
            return self.plan.width, self.plan.height
        return RELATIVE_GRID, RELATIVE_GRID

    @property
    def original(self) -> tuple[int, int]:
        return self.plan.orig_width, self.plan.orig_height

    def to_model(self, box: Sequence[float]) -> list[int]:
        return box_to_model(box, self.plan, self.mode)


def model_frame(width: int, height: int, export: ExportSettings) -> ModelFrame:
    """The frame for an image of ``width`` x ``height`` original pixels under ``export``."""
    return _frame(int(width), int(height), export.min_pixels, export.max_pixels, export.qwen_coordinate_mode)


@lru_cache(maxsize=4096)
def _frame(width: int, height: int, min_pixels: int, max_pixels: int, mode: CoordinateMode) -> ModelFrame:
    # a dataset has few distinct image sizes; smart_resize per record is measurable at 100k
    plan = ResizePlan.for_size(width, height, min_pixels=min_pixels, max_pixels=max_pixels)
    return ModelFrame(plan=plan, mode=mode)
