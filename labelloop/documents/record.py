"""The document record (the ``document_layout`` spec) and its validation.

One record per document: per page, the page size in points, the render DPI and the pixel size of
the stored page image, and typed blocks whose boxes are in page pixels at that DPI, so a box can be
drawn on the review image without any conversion. Validation refuses a box that leaves its page:
producers clamp with :func:`make_block`, so a failure here is a coordinate bug, caught before it
silently ruins a fine-tune.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BlockType = Literal["title", "text", "list", "table", "equation", "image", "caption", "footnote", "discarded"]
#: where a block's content came from: the PDF's text layer, OCR, or a layout/structure model
#: (image regions, and tables/equations that a model rebuilt as HTML/LaTeX)
BlockSource = Literal["text_layer", "ocr", "layout"]

BLOCK_TYPES: tuple[str, ...] = BlockType.__args__  # type: ignore[attr-defined]
#: a box may overshoot its page by this much (float rounding), no more
BBOX_TOLERANCE_PX = 0.5
_IMAGE_KEY = re.compile(r"^pages/[0-9a-f]{8,64}/\d+\.png$")


def page_image_key(sha256: str, page: int) -> str:
    """Object key of the rendered image of page ``page`` (0-based) of the document ``sha256``."""
    return f"pages/{sha256}/{page}.png"


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: BlockType
    #: [x1, y1, x2, y2] in page pixels at the page's render DPI
    bbox: list[float] = Field(min_length=4, max_length=4)
    #: text; tables: HTML; equations: LaTeX (or the text layer's text when no LaTeX exists)
    content: str = ""
    score: float = Field(ge=0.0, le=1.0)
    source: BlockSource

    @field_validator("bbox")
    @classmethod
    def _ordered(cls, v: list[float]) -> list[float]:
        x1, y1, x2, y2 = v
        if x2 < x1 or y2 < y1:
            raise ValueError(f"bbox {v} is not [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2")
        return v


class Page(BaseModel):
    model_config = ConfigDict(extra="forbid")

    page: int = Field(ge=0)
    width_pt: float = Field(gt=0)
    height_pt: float = Field(gt=0)
    dpi: int = Field(gt=0)
    width_px: int = Field(gt=0)
    height_px: int = Field(gt=0)
    image_key: str
    blocks: list[Block] = Field(default_factory=list)

    @field_validator("image_key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not _IMAGE_KEY.match(v):
            raise ValueError(f"image_key {v!r} is not pages/<sha>/<n>.png")
        return v

    @model_validator(mode="after")
    def _inside(self) -> Page:
        if not self.image_key.endswith(f"/{self.page}.png"):
            raise ValueError(f"image_key {self.image_key!r} does not name page {self.page}")
        t = BBOX_TOLERANCE_PX
        for i, b in enumerate(self.blocks):
            x1, y1, x2, y2 = b.bbox
            if x1 < -t or y1 < -t or x2 > self.width_px + t or y2 > self.height_px + t:
                raise ValueError(
                    f"page {self.page} block {i} bbox {b.bbox} lies outside the page "
                    f"({self.width_px}x{self.height_px} px)"
                )
        return self


class DocumentRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pages: list[Page]
    markdown: str = ""

    @model_validator(mode="after")
    def _numbered(self) -> DocumentRecord:
        numbers = [p.page for p in self.pages]
        if numbers != list(range(len(numbers))):
            raise ValueError(f"pages must be numbered 0..n-1 in order, got {numbers}")
        return self


def clamp_bbox(bbox: tuple[float, float, float, float] | list[float], width: float, height: float) -> list[float]:
    """Clip a box to the page and round to 0.01 px (the record stores 2 decimals)."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    return [round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)]


def make_block(
    type_: str,
    bbox_px: tuple[float, float, float, float] | list[float],
    width_px: int,
    height_px: int,
    *,
    content: str,
    score: float,
    source: str,
) -> Block:
    """A validated block with its box clipped to the page and its score clipped to [0, 1]."""
    return Block(
        type=type_,  # type: ignore[arg-type]
        bbox=clamp_bbox(bbox_px, width_px, height_px),
        content=content,
        score=round(min(max(float(score), 0.0), 1.0), 5),
        source=source,  # type: ignore[arg-type]
    )


def confidence_summary(record: DocumentRecord) -> tuple[dict[str, float], dict[str, Any]]:
    """Routing confidence of a document record: ``{"blocks": min block score}`` plus detail.

    The weakest block decides, as for every other multi-part field. A document without a single
    block gets 0.0: an empty result from a text-bearing PDF is more likely a failure than a blank
    document, and a human should look.
    """
    scores = [b.score for p in record.pages for b in p.blocks]
    overall = min(scores) if scores else 0.0
    detail: dict[str, Any] = {
        "blocks": {
            "min": overall,
            "mean": round(sum(scores) / len(scores), 5) if scores else None,
            "n": len(scores),
        },
        "pages": [
            {
                "page": p.page,
                "min": min((b.score for b in p.blocks), default=None),
                "scores": [b.score for b in p.blocks],
            }
            for p in record.pages
        ],
    }
    return {"blocks": overall}, detail
