"""What the document backends share: input checks, page images, the record and its confidence.

Both backends open the PDF with the same checks (encrypted, corrupt, empty, too long -> a failed
prediction with the reason), render the same page images into ``pages/<sha>/<n>.png`` and put
blocks in the pixels of those images, so the review step can use either backend's output.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import pymupdf

from labelloop.config import Settings
from labelloop.db.models import Item
from labelloop.documents.record import Block, DocumentRecord, Page, confidence_summary
from labelloop.documents.render import PYMUPDF_LOCK, DocumentError, PageGeometry, open_pdf, store_page_images
from labelloop.prelabel.base import Backend, PredictionResult
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore


class DocumentBackend(Backend):
    """Base of the document backends (``document_layout`` and specs with a ``blocks`` field)."""

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self.settings = settings
        self.store = store

    def supports(self, spec: TaskSpec) -> bool:
        return spec.media == "document" and any(f.kind == "blocks" for f in spec.fields.values())

    def identity_config(self) -> dict[str, Any]:
        """Settings that change the output; they are part of the prediction identity."""
        return {"render_dpi": self.settings.documents.render_dpi}

    def prompt_hash(self, spec: TaskSpec) -> str:
        """These backends ignore the prompt; what defines their output is the spec's schema and
        the settings that move boxes or change content (the render DPI above all: a new DPI is a
        new set of pixel coordinates, so it must be a new prediction)."""
        blob = json.dumps(
            {"spec": spec.name, "version": spec.version, "schema": spec.json_schema, "config": self.identity_config()},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def prepare(self, item: Item, data: bytes) -> tuple[pymupdf.Document, list[PageGeometry], int]:
        """Open and check the PDF, store its page images; (doc, geometries, images written)."""
        doc = open_pdf(data, max_pages=self.settings.ingest.max_pdf_pages)
        try:
            geoms, written = store_page_images(doc, item.sha256, self.settings.documents.render_dpi, self.store)
        except Exception:
            close(doc)
            raise
        return doc, geoms, written


def close(doc: pymupdf.Document) -> None:
    with PYMUPDF_LOCK:
        doc.close()


def build_result(
    geoms: list[PageGeometry],
    blocks: list[list[Block]],
    markdown: str,
    detail: dict[str, Any],
    *,
    raw_output: str | None = None,
) -> PredictionResult:
    """Assemble and validate the record; its confidence is the weakest block's score."""
    record = DocumentRecord(
        pages=[Page(**g.as_dict(), blocks=b) for g, b in zip(geoms, blocks, strict=True)],
        markdown=markdown,
    )
    field_confidence, confidence_detail = confidence_summary(record)
    detail = dict(detail)
    # per-page evidence from the backend joins the per-page scores rather than replacing them
    for summary, extra in zip(confidence_detail["pages"], detail.pop("pages", []), strict=False):
        summary.update({k: v for k, v in extra.items() if k not in summary})
    confidence_detail.update(detail)
    return PredictionResult(
        status="ok",
        record=record.model_dump(mode="json"),
        field_confidence=field_confidence,
        confidence_detail=confidence_detail,
        raw_output=raw_output,
    )


def guarded(name: str, fn: Callable[[], PredictionResult]) -> PredictionResult:
    """Run ``fn``; a bad document or any backend error becomes a failed result, never a raise."""
    t0 = time.perf_counter()
    try:
        res = fn()
    except DocumentError as e:
        res = PredictionResult.failed(str(e))
    except Exception as e:  # a library crash on one document must not stop the batch
        res = PredictionResult.failed(f"{name} error: {type(e).__name__}: {e}")
    res.latency_ms = (time.perf_counter() - t0) * 1000
    return res
