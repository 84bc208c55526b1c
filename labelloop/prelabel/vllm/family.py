"""Which Qwen-VL family the server runs, and what that means for the image and the boxes.

The families differ in exactly the two things that decide where a box lands:

==============  ====================  ======  ===========================  =====================
family          boxes                 factor  processor min/max pixels     source
==============  ====================  ======  ===========================  =====================
``qwen2_vl``    0-1000 grid           28      3136 / 12845056              patch 14 x merge 2
``qwen2_5_vl``  absolute pixels of    28      3136 / 12845056              patch 14 x merge 2
                the resized image
``qwen3_vl``    0-1000 grid           32      65536 / 16777216             patch 16 x merge 2
==============  ====================  ======  ===========================  =====================

(vLLM's ``Qwen3VLProcessingInfo._get_vision_info`` resizes with ``factor=patch_size *
spatial_merge_size`` and the image processor's ``size["shortest_edge"]``/``["longest_edge"]``,
and counts ``(h / patch) * (w / patch) / merge**2`` image tokens, i.e. ``(h/32) * (w/32)``;
Qwen2/2.5-VL go through the same code with patch 14. qwen-vl-utils' ``fetch_image`` uses
``image_patch_size * SPATIAL_MERGE_SIZE`` likewise.)

The family comes from the served model name unless ``vllm.model_family`` names it;
``vllm.coordinate_mode``, ``vllm.resize_factor`` and ``vllm.min_pixels`` override single
consequences (a fine-tune taught another box convention, say). A model whose family cannot be
told and whose convention is not stated is a configuration error: guessing would read 0-1000
boxes as pixels or the other way round, silently.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from labelloop.config import VLLMSettings
from labelloop.prelabel.qwen_resize import CoordinateMode


@dataclass(frozen=True)
class FamilyDefaults:
    coordinate_mode: CoordinateMode
    resize_factor: int
    min_pixels: int
    #: the id of ``<|image_pad|>``, repeated once per image token in the prompt
    image_token_id: int


FAMILIES: dict[str, FamilyDefaults] = {
    "qwen2_vl": FamilyDefaults("relative_1000", 28, 3136, 151655),
    "qwen2_5_vl": FamilyDefaults("absolute_resized", 28, 3136, 151655),
    "qwen3_vl": FamilyDefaults("relative_1000", 32, 65536, 151655),
}

#: served-name patterns, most specific first ("qwen2.5-vl" also contains "qwen2" and "vl")
_NAME_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"qwen[-_]?3(\.\d+)?[-_.]?vl"), "qwen3_vl"),
    (re.compile(r"qwen[-_]?2[._]5[-_.]?vl"), "qwen2_5_vl"),
    (re.compile(r"qwen[-_]?2[-_.]?vl"), "qwen2_vl"),
)


class ModelFamilyError(ValueError):
    """The settings do not say how to read this model's boxes."""


def family_from_name(model: str) -> str | None:
    name = model.lower()
    for pattern, family in _NAME_PATTERNS:
        if pattern.search(name):
            return family
    return None


@dataclass(frozen=True)
class ModelProfile:
    """Everything about the model that changes the image sent or how its answer is read."""

    family: str | None
    coordinate_mode: CoordinateMode
    resize_factor: int
    min_pixels: int
    max_pixels: int
    image_token_id: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_profile(cfg: VLLMSettings) -> ModelProfile:
    """The profile of ``cfg``: explicit settings first, then the family's defaults.

    Raises :class:`ModelFamilyError` when a consequence is neither set nor derivable.
    """
    family = cfg.model_family if cfg.model_family != "auto" else family_from_name(cfg.model)
    defaults = FAMILIES.get(family) if family else None
    missing = [
        name
        for name, value in (
            ("coordinate_mode", None if cfg.coordinate_mode == "auto" else cfg.coordinate_mode),
            ("resize_factor", cfg.resize_factor),
            ("min_pixels", cfg.min_pixels),
        )
        if value is None
    ]
    if defaults is None and missing:
        raise ModelFamilyError(
            f"vllm.model={cfg.model!r}: cannot tell the Qwen-VL family from the name, so it is unknown how "
            f"its boxes are written; set vllm.model_family ({', '.join(FAMILIES)}) or vllm." + ", vllm.".join(missing)
        )
    mode = cfg.coordinate_mode if cfg.coordinate_mode != "auto" else defaults.coordinate_mode  # type: ignore[union-attr]
    factor = cfg.resize_factor if cfg.resize_factor is not None else defaults.resize_factor  # type: ignore[union-attr]
    min_pixels = cfg.min_pixels if cfg.min_pixels is not None else defaults.min_pixels  # type: ignore[union-attr]
    if cfg.max_pixels < min_pixels:
        raise ModelFamilyError(f"vllm.max_pixels ({cfg.max_pixels}) is below min_pixels ({min_pixels})")
    return ModelProfile(
        family=family,
        coordinate_mode=mode,
        resize_factor=factor,
        min_pixels=min_pixels,
        max_pixels=cfg.max_pixels,
        image_token_id=defaults.image_token_id if defaults else None,
    )
