"""The embedded default document backend: pymupdf4llm layout analysis + RapidOCR, on CPU.

Everything it needs ships in its wheels (the layout model in pymupdf-layout, the OCR models in
rapidocr), so a laptop or an air-gapped worker can pre-label documents. The heavy work runs in a
worker thread so the runner's event loop keeps other items moving.

Office and web documents (DOCX, PPTX, XLSX, ODF, EPUB, HTML) are rendered to PDF first with the same
LibreOffice conversion the MinerU backend uses (:func:`labelloop.documents.office.to_pdf`), so their
pages have geometry and page images and go down the PDF path; the renderer and its version go into
the record's provenance (``confidence_detail.office``). A conversion that fails or times out is a
failed prediction with LibreOffice's reason, never a raise.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from labelloop.config import Settings
from labelloop.db.models import Item
from labelloop.documents import office
from labelloop.documents.pymupdf_layout import PyMuPDFLayoutAnalyzer, versions
from labelloop.prelabel.base import PredictionResult
from labelloop.prelabel.documents.common import DocumentBackend, build_result, close, guarded
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore


class PyMuPDFLayoutBackend(DocumentBackend):
    name = "pymupdf"
    model = "pymupdf4llm-layout"

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        super().__init__(settings, store)
        v = versions()
        self.model_version = f"pymupdf4llm-{v['pymupdf4llm']}+layout-{v['pymupdf_layout']}+rapidocr-{v['rapidocr']}"
        self._analyzer: PyMuPDFLayoutAnalyzer | None = None
        self._analyzer_lock = threading.Lock()

    #: seconds one LibreOffice conversion may take (a DOCX of hundreds of pages takes a minute)
    office_timeout_s: float = 300.0

    def identity_config(self) -> dict[str, Any]:
        d = self.settings.documents
        return {
            "render_dpi": d.render_dpi,
            "ocr_min_chars": d.ocr_min_chars,
            "ocr_dpi": d.ocr_dpi,
            "ocr_max_side_px": d.ocr_max_side_px,
            "ocr_detect_max_side_px": d.ocr_detect_max_side_px,
        }

    @property
    def analyzer(self) -> PyMuPDFLayoutAnalyzer:
        # created on first use: importing pymupdf4llm loads the layout model (seconds)
        with self._analyzer_lock:
            if self._analyzer is None:
                self._analyzer = PyMuPDFLayoutAnalyzer(self.settings.documents)
            return self._analyzer

    async def predict(self, item: Item, data: bytes, spec: TaskSpec) -> PredictionResult:
        return await asyncio.to_thread(guarded, self.name, lambda: self._predict(item, data))

    def _predict(self, item: Item, data: bytes) -> PredictionResult:
        extra: dict[str, Any] = {}
        if item.ext in office.OFFICE_EXTS:
            try:
                data, extra["office"] = office.to_pdf(data, item.ext, timeout_s=self.office_timeout_s)
            except office.OfficeError as e:
                return PredictionResult.failed(str(e))
        doc, geoms, written = self.prepare(item, data)
        try:
            result = self.analyzer.analyze(doc, geoms)
        finally:
            close(doc)
        return build_result(
            geoms, result.blocks, result.markdown, {**result.detail, **extra, "images_written": written}
        )
