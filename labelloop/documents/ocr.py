"""OCR of pages without a usable text layer (scans), with RapidOCR's per-line scores.

RapidOCR ships its ONNX models in the wheel, so this runs offline. The page is rendered at
``ocr_dpi`` capped so the long side stays within ``ocr_max_side_px``; the text detector runs on
that rendering scaled to ``ocr_detect_max_side_px`` (memory), the recognizer on the lines cut
from the full rendering (accuracy), and the line boxes are mapped to the record's page pixels. Lines are grouped into
paragraph blocks; a block's score is the minimum of its lines' scores (a field derived from lines
is as weak as its weakest line).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pymupdf

from labelloop.config import DocumentSettings
from labelloop.documents.record import Block, make_block
from labelloop.documents.render import POINTS_PER_INCH, PYMUPDF_LOCK, PageGeometry
from labelloop.documents.text import join_fragments


@dataclass(frozen=True)
class OcrLine:
    bbox: tuple[float, float, float, float]  # record pixels (the page image's)
    text: str
    score: float


def ocr_version() -> str:
    from importlib.metadata import version

    return version("rapidocr")


class PageOCR:
    """A lazily created RapidOCR engine, shared by the threads of one backend."""

    def __init__(self, settings: DocumentSettings) -> None:
        self.settings = settings
        self._engine: Any = None
        self._lock = threading.Lock()

    def _get_engine(self) -> Any:
        if self._engine is None:
            from rapidocr import RapidOCR

            # the detector sees the page with its long side at most ocr_detect_max_side_px (RapidOCR's
            # default never scales a page down: at 2000 px its activations take ~400 MB, most of
            # the backend's peak); recognition still reads each line from the full rendering
            self._engine = RapidOCR(
                params={
                    "Global.log_level": "warning",
                    "Det.limit_type": "max",
                    "Det.limit_side_len": self.settings.ocr_detect_max_side_px,
                }
            )
        return self._engine

    def dpi_for(self, geom: PageGeometry) -> float:
        """OCR DPI for a page: the setting, lowered so the long side fits ``ocr_max_side_px``."""
        long_side_pt = max(geom.width_pt, geom.height_pt)
        return min(float(self.settings.ocr_dpi), self.settings.ocr_max_side_px * POINTS_PER_INCH / long_side_pt)

    def read_page(self, page: pymupdf.Page, geom: PageGeometry) -> tuple[list[OcrLine], float]:
        """OCR one page; returns its lines (record pixels, reading order) and the DPI used."""
        dpi = self.dpi_for(geom)
        with PYMUPDF_LOCK:
            zoom = dpi / POINTS_PER_INCH
            pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False)
            img = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width, 3).copy()
        with self._lock:
            result = self._get_engine()(img)
        # pixels of the OCR rendering -> record pixels, through the shared point coordinates
        sx, sy = geom.width_px / pix.width, geom.height_px / pix.height
        lines: list[OcrLine] = []
        for box, text, score in zip(
            result.boxes if result.boxes is not None else [],
            result.txts or (),
            result.scores or (),
            strict=False,
        ):
            pts = np.asarray(box, dtype=float)
            x1, y1 = pts[:, 0].min() * sx, pts[:, 1].min() * sy
            x2, y2 = pts[:, 0].max() * sx, pts[:, 1].max() * sy
            if text.strip():
                lines.append(OcrLine((x1, y1, x2, y2), text.strip(), float(score)))
        return lines, dpi


def group_lines(lines: list[OcrLine], geom: PageGeometry) -> list[tuple[Block, list[OcrLine]]]:
    """Group OCR lines into paragraph blocks (in RapidOCR's top-to-bottom order).

    A line continues the current block when it starts within ~0.8 line heights below it and
    overlaps it horizontally by at least 30% of the narrower of the two; otherwise it starts a new
    block. Simple, but it keeps a column's paragraph together and page numbers apart.
    """
    groups: list[list[OcrLine]] = []
    for line in lines:
        if groups and _continues(groups[-1], line):
            groups[-1].append(line)
        else:
            groups.append([line])
    out: list[tuple[Block, list[OcrLine]]] = []
    for g in groups:
        bbox = (
            min(ln.bbox[0] for ln in g),
            min(ln.bbox[1] for ln in g),
            max(ln.bbox[2] for ln in g),
            max(ln.bbox[3] for ln in g),
        )
        block = make_block(
            "text",
            bbox,
            geom.width_px,
            geom.height_px,
            content=join_fragments(ln.text for ln in g),
            score=min(ln.score for ln in g),
            source="ocr",
        )
        out.append((block, g))
    return out


def _continues(group: list[OcrLine], line: OcrLine) -> bool:
    last = group[-1]
    height = max(last.bbox[3] - last.bbox[1], line.bbox[3] - line.bbox[1], 1.0)
    gap = line.bbox[1] - last.bbox[3]
    if gap > 0.8 * height or gap < -0.5 * height:
        return False
    overlap = min(last.bbox[2], line.bbox[2]) - max(last.bbox[0], line.bbox[0])
    narrower = min(last.bbox[2] - last.bbox[0], line.bbox[2] - line.bbox[0])
    return narrower > 0 and overlap >= 0.3 * narrower
