"""RapidOCR on CPU: text lines for ``ocr_lines`` and the OCR-derivable fields of other specs.

The ONNX models are the ones inside the ``rapidocr`` wheel, passed by explicit path: RapidOCR
downloads a model only when it is given no path, so an offline worker can never try the
network (a missing file is a clear error instead).

What OCR can fill, per spec:

* a ``regions`` field (``ocr_lines.lines``): every recognised line as ``{"bbox", "text"}``, bbox
  ``[x1, y1, x2, y2]`` in original pixels (after EXIF orientation); per-line recognition scores
  go to ``confidence_detail`` and the field's confidence is the minimum line score (the weakest
  line decides; no line at all gives 0, i.e. review);
* fields named in ``spec.options["ocr_fields"]`` (``vehicle_extraction.plate_number``): the best
  recognised line that matches one of the field's patterns after normalising (uppercase, spaces
  and dots removed), with that line's score as confidence and its box in ``box_field``;
* everything else: left empty (``""`` for text, ``None`` otherwise) with confidence 0, so the item
  goes to review. Empty choice fields do not satisfy the spec's JSON schema: that is intended, a
  human has to fill them.

onnxruntime already uses every core for one image, so OCR calls are serialised by a lock and run
in a worker thread (the event loop stays free for the runner's I/O); running two at once on two
cores would only thrash.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from labelloop.config import Settings
from labelloop.db.models import Item
from labelloop.prelabel.base import Backend, PredictionResult
from labelloop.prelabel.qwen_resize import load_oriented
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore

#: model files shipped in the rapidocr wheel (PP-OCRv6 small det/rec, mobile v2 angle classifier)
DET_MODEL = "PP-OCRv6_det_small.onnx"
REC_MODEL = "PP-OCRv6_rec_small.onnx"
CLS_MODEL = "ch_ppocr_mobile_v2.0_cls_mobile.onnx"

_PLATE_STRIP = re.compile(r"[\s.·•・_]+")


def wheel_models_dir() -> Path:
    import rapidocr

    return Path(rapidocr.__file__).resolve().parent / "models"


def rapidocr_version() -> str:
    from importlib.metadata import version

    return version("rapidocr")


def normalise_plate(text: str) -> str:
    """How plates are compared: uppercase, without spaces, dots or middle dots."""
    return _PLATE_STRIP.sub("", text).upper()


def quad_to_box(quad: Any, width: int, height: int) -> list[int]:
    """A detector quadrilateral as an axis-aligned [x1, y1, x2, y2] box clamped to the image."""
    pts = np.asarray(quad, dtype=float).reshape(-1, 2)
    x1, y1 = pts.min(axis=0)
    x2, y2 = pts.max(axis=0)
    return [
        int(max(0, min(width, round(x1)))),
        int(max(0, min(height, round(y1)))),
        int(max(0, min(width, round(x2)))),
        int(max(0, min(height, round(y2)))),
    ]


class RapidOCRBackend(Backend):
    """CPU OCR with the models of the ``rapidocr`` wheel; see the module docstring."""

    name = "rapidocr"
    model = "rapidocr"

    def __init__(self, settings: Settings | None = None, store: ObjectStore | None = None) -> None:
        self.settings = settings
        self.store = store
        self.model_version = f"rapidocr-{rapidocr_version()}-{Path(DET_MODEL).stem}-{Path(REC_MODEL).stem}"
        self._engine: Any = None
        self._lock = threading.Lock()

    # -- engine

    def engine(self) -> Any:
        """The RapidOCR engine, built once (loading the ONNX sessions takes a second or two)."""
        with self._lock:
            if self._engine is None:
                self._engine = self._build_engine()
            return self._engine

    @staticmethod
    def _build_engine() -> Any:
        from rapidocr import RapidOCR

        models = wheel_models_dir()
        paths = {"Det": models / DET_MODEL, "Rec": models / REC_MODEL, "Cls": models / CLS_MODEL}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"RapidOCR models missing from the wheel: {', '.join(missing)}")
        params: dict[str, Any] = {"Global.log_level": "warning", "Global.model_root_dir": str(models)}
        for stage, path in paths.items():
            params[f"{stage}.model_path"] = str(path)
        return RapidOCR(params=params)

    def ocr_lines(self, data: bytes) -> tuple[list[dict[str, Any]], int, int]:
        """Lines ``{"bbox", "text", "score"}`` in original pixels, top to bottom; blocking."""
        img = load_oriented(data).convert("RGB")
        width, height = img.size
        engine = self.engine()
        with self._lock:
            out = engine(img)  # a PIL image: RapidOCR converts RGB to its BGR itself
        lines: list[dict[str, Any]] = []
        if out.boxes is not None and out.txts is not None:
            for quad, text, score in zip(out.boxes, out.txts, out.scores, strict=True):
                if not str(text).strip():
                    continue
                lines.append({"bbox": quad_to_box(quad, width, height), "text": str(text), "score": float(score)})
        return lines, width, height

    # -- Backend

    def supports(self, spec: TaskSpec) -> bool:
        if spec.media != "image":
            return False
        has_regions = any(f.kind == "regions" for f in spec.fields.values())
        return has_regions or bool(spec.options.get("ocr_fields"))

    def prompt_hash(self, spec: TaskSpec) -> str:
        """OCR ignores the prompt: its output depends only on the fields and the OCR options.

        So a reworded prompt does not re-OCR every image, while new plate patterns do.
        """
        blob = json.dumps(
            {
                "fields": {n: f.kind for n, f in spec.fields.items()},
                "ocr_fields": spec.options.get("ocr_fields") or {},
                **({"plate_syntax": 1} if _uses_plate_syntax(spec) else {}),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    async def predict(self, item: Item, data: bytes, spec: TaskSpec) -> PredictionResult:
        try:
            lines, _, _ = await asyncio.to_thread(self.ocr_lines, data)
        except Exception as e:  # unreadable image or an OCR crash: a failed prediction, not a crash
            return PredictionResult.failed(f"OCR failed: {type(e).__name__}: {e}")
        return build_result(spec, lines)


def _uses_plate_syntax(spec: TaskSpec) -> bool:
    return any(cfg.get("syntax") == "cn_plate" for cfg in (spec.options.get("ocr_fields") or {}).values())


def _empty_value(kind: str) -> Any:
    return "" if kind == "text" else None


def find_pattern_line(
    lines: list[dict[str, Any]], patterns: list[str], syntax: str | None = None
) -> dict[str, Any] | None:
    """The best line whose normalised text fully matches a pattern: earlier patterns win, then score.

    ``syntax: cn_plate`` (vehicle_extraction) accepts only official Chinese plate formats
    (labelloop.prelabel.plates.syntax) instead of patterns: loose patterns took fragments such as
    ``DDS32`` for plates.
    """
    if syntax == "cn_plate":
        from labelloop.prelabel.plates.syntax import PLATE_REGEX

        patterns = [PLATE_REGEX.strip("^$")]
    elif syntax is not None:
        raise ValueError(f"unknown ocr_fields syntax {syntax!r}")
    compiled = [re.compile(p) for p in patterns]
    best: tuple[int, float] | None = None
    found = None
    for line in lines:
        norm = normalise_plate(line["text"])
        for rank, rx in enumerate(compiled):
            if rx.fullmatch(norm):
                key = (-rank, line["score"])
                if best is None or key > best:
                    best, found = key, {**line, "text": norm}
                break
    return found


def build_result(spec: TaskSpec, lines: list[dict[str, Any]]) -> PredictionResult:
    """Fill the spec's record from OCR lines; see the module docstring for the rules."""
    record: dict[str, Any] = {}
    conf: dict[str, float] = {}
    detail: dict[str, Any] = {}
    ocr_fields: dict[str, dict[str, Any]] = spec.options.get("ocr_fields") or {}
    box_fields = {cfg.get("box_field"): name for name, cfg in ocr_fields.items() if cfg.get("box_field")}
    for name, fspec in spec.fields.items():
        if fspec.kind == "regions":
            record[name] = [{"bbox": ln["bbox"], "text": ln["text"]} for ln in lines]
            scores = [ln["score"] for ln in lines]
            conf[name] = min(scores) if scores else 0.0
            detail[name] = {"source": "ocr", "scores": scores, "n_lines": len(lines)}
        elif name in ocr_fields:
            hit = find_pattern_line(lines, list(ocr_fields[name].get("patterns") or []), ocr_fields[name].get("syntax"))
            record[name] = hit["text"] if hit else _empty_value(fspec.kind)
            conf[name] = hit["score"] if hit else 0.0
            detail[name] = {"source": "ocr_pattern", "found": hit is not None}
            box_field = ocr_fields[name].get("box_field")
            if box_field:
                record[box_field] = hit["bbox"] if hit else None
                conf[box_field] = hit["score"] if hit else 0.0
                detail[box_field] = {"source": "ocr_pattern", "of": name, "found": hit is not None}
        elif name not in box_fields:
            record[name] = _empty_value(fspec.kind)
            conf[name] = 0.0
            detail[name] = {"source": "none", "reason": "OCR cannot know this field"}
    return PredictionResult(status="ok", record=record, field_confidence=conf, confidence_detail={"fields": detail})
