"""Two backends on the same item, each checking the other: Qwen-VL (vLLM) with an OCR backend.

Why: a general VLM generalises but has blind spots (rare plates, new car models); OCR cannot
answer questions but reads text precisely. Where both fill a field, their values are compared
after normalisation (plates: :func:`~labelloop.prelabel.plates.syntax.normalise_plate`; other
fields: the spec's own comparison, :func:`~labelloop.specs.compare.compare_field`):

* agreement raises confidence: ``1 - (1 - c_primary)(1 - c_checker)``, the chance that not both
  are wrong if they erred independently. They do not, quite; the combined score is a raw score
  like any other, and calibration (labelloop.calibration) fits the threshold that holds the
  stated error rate on it;
* disagreement sends the field to review: confidence 0, the primary's value pre-filled, and both
  candidates in ``confidence_detail`` (the Label Studio task shows the checker's value as a hint,
  labelloop.review.importer);
* a field only one of them fills keeps that backend's value and confidence;
* a plate number that is no official format is never filled in, whichever backend said it.

The record's fields each name where they came from in ``confidence_detail["fields"][name]``
(``source: ensemble``, ``agree``, ``candidates``), and the members' own details are kept under
``confidence_detail["members"]``. When one member fails, the other's result stands alone, with
the failure recorded; when both fail, the prediction fails.

Members: images use ``vllm`` with ``plate`` (specs with a plate number) or ``rapidocr``;
documents use ``mineru`` with ``pymupdf``.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from labelloop.config import Settings
from labelloop.db.models import Item
from labelloop.prelabel.base import Backend, PredictionResult
from labelloop.prelabel.plates.syntax import colour_problem, normalise_plate, parse_plate
from labelloop.specs import TaskSpec
from labelloop.specs.compare import compare_field
from labelloop.storage import ObjectStore

PLATE_FIELD = "plate_number"


def default_members(spec: TaskSpec) -> tuple[str, str]:
    if spec.media == "document":
        return "mineru", "pymupdf"
    return "vllm", ("plate" if PLATE_FIELD in spec.fields else "rapidocr")


def _filled(res: PredictionResult, name: str) -> bool:
    """Did a member actually read this field (not just leave it empty for review)?"""
    detail = ((res.confidence_detail or {}).get("fields") or {}).get(name) or {}
    if isinstance(detail, dict) and detail.get("source") == "none":
        return False
    value = (res.record or {}).get(name)
    return value not in (None, "", [], {})


def _agree(spec: TaskSpec, name: str, a: Any, b: Any) -> bool:
    if name == PLATE_FIELD:
        return normalise_plate(str(a)) == normalise_plate(str(b))
    changed, _ = compare_field(spec.fields[name], a, b)
    return not changed


def combine(
    spec: TaskSpec, primary: tuple[str, PredictionResult], checker: tuple[str, PredictionResult]
) -> PredictionResult:
    """One record from two members' results; see the module docstring for the rules."""
    (pname, p), (cname, c) = primary, checker
    members = {
        pname: {"status": p.status, "error": p.error, "detail": p.confidence_detail},
        cname: {"status": c.status, "error": c.error, "detail": c.confidence_detail},
    }
    if p.status != "ok" and c.status != "ok":
        return PredictionResult.failed(
            f"both members failed: {pname}: {p.error}; {cname}: {c.error}", confidence_detail={"members": members}
        )
    if p.status != "ok" or c.status != "ok":
        alone_name, alone = (cname, c) if p.status != "ok" else (pname, p)
        failed = pname if p.status != "ok" else cname
        detail = {
            **(alone.confidence_detail or {}),
            "members": members,
            "ensemble": {"alone": alone_name, "failed": failed},
        }
        record = dict(alone.record or {})
        conf = dict(alone.field_confidence)
        _guard_plate(record, conf, detail.setdefault("fields", {}), {alone_name: record.get(PLATE_FIELD)})
        return PredictionResult(
            status="ok",
            record=record,
            field_confidence=conf,
            confidence_detail=detail,
            raw_output=alone.raw_output,
            latency_ms=alone.latency_ms,
        )
    record: dict[str, Any] = {}
    conf: dict[str, float] = {}
    fields_detail: dict[str, Any] = {}
    disagreements: dict[str, dict[str, Any]] = {}
    for name in spec.fields:
        pv, cv = (p.record or {}).get(name), (c.record or {}).get(name)
        pc, cc = float(p.field_confidence.get(name, 0.0)), float(c.field_confidence.get(name, 0.0))
        has_p, has_c = _filled(p, name), _filled(c, name)
        cands = {pname: {"value": pv, "confidence": pc}, cname: {"value": cv, "confidence": cc}}
        if has_p and has_c:
            agree = _agree(spec, name, pv, cv)
            record[name] = pv
            conf[name] = 1.0 - (1.0 - pc) * (1.0 - cc) if agree else 0.0
            fields_detail[name] = {"source": "ensemble", "agree": agree, "candidates": cands}
            if not agree:
                disagreements[name] = cands
        elif has_c:
            record[name], conf[name] = cv, cc
            fields_detail[name] = {"source": "ensemble", "from": cname, "candidates": cands}
        else:
            record[name], conf[name] = pv, pc if has_p else 0.0
            fields_detail[name] = {"source": "ensemble", "from": pname, "candidates": cands}
    _guard_plate(
        record,
        conf,
        fields_detail,
        {pname: (p.record or {}).get(PLATE_FIELD), cname: (c.record or {}).get(PLATE_FIELD)},
    )
    detail = {
        "fields": fields_detail,
        "members": members,
        "ensemble": {"primary": pname, "checker": cname, "disagreements": disagreements},
    }
    return PredictionResult(
        status="ok",
        record=record,
        field_confidence=conf,
        confidence_detail=detail,
        raw_output=p.raw_output,
        latency_ms=max(p.latency_ms or 0.0, c.latency_ms or 0.0) or None,
        prompt_tokens=p.prompt_tokens,
        completion_tokens=p.completion_tokens,
    )


def _guard_plate(record: dict[str, Any], conf: dict[str, float], detail: dict[str, Any], said: dict[str, Any]) -> None:
    """No invalid plate number is ever filled in; a colour that contradicts the format gets 0."""
    if PLATE_FIELD not in record or record[PLATE_FIELD] in (None, ""):
        return
    syn = parse_plate(str(record[PLATE_FIELD]))
    d = detail.setdefault(PLATE_FIELD, {})
    if syn is None:
        d["rejected"] = {"value": record[PLATE_FIELD], "reason": "not an official plate format", "said": said}
        record[PLATE_FIELD], conf[PLATE_FIELD] = "", 0.0
        return
    record[PLATE_FIELD] = syn.plate
    problem = colour_problem(syn.plate, record.get("plate_color"))
    if problem and "plate_color" in record:
        conf[PLATE_FIELD] = 0.0
        conf["plate_color"] = 0.0
        d["conflict"] = problem


def hint_text(detail: dict[str, Any] | None) -> str:
    """What the annotator sees beside the form when the members disagreed (Label Studio ``$hints``)."""
    ens = (detail or {}).get("ensemble") or {}
    parts = []
    for name, cands in (ens.get("disagreements") or {}).items():
        said = "; ".join(f"{who} says {c['value']!r} ({c['confidence']:.2f})" for who, c in cands.items())
        parts.append(f"{name}: {said}")
    rejected = (((detail or {}).get("fields") or {}).get(PLATE_FIELD) or {}).get("rejected")
    if rejected:
        parts.append(f"{PLATE_FIELD}: {rejected['value']!r} rejected ({rejected['reason']})")
    return "\n".join(parts)


class EnsembleBackend(Backend):
    """Runs two member backends concurrently on each item and combines them (:func:`combine`)."""

    name = "ensemble"
    model = "ensemble"

    def __init__(
        self,
        settings: Settings | None = None,
        store: ObjectStore | None = None,
        members: dict[str, Backend] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._members: dict[str, Backend] = dict(members or {})

    def member(self, name: str) -> Backend:
        if name not in self._members:
            from labelloop.prelabel.factory import make_backend

            if self.settings is None or self.store is None:
                raise ValueError(f"ensemble member {name!r} needs settings and a store")
            self._members[name] = make_backend(name, self.settings, self.store)
        return self._members[name]

    def pair(self, spec: TaskSpec) -> tuple[Backend, Backend]:
        a, b = default_members(spec)
        return self.member(a), self.member(b)

    @property
    def model_version(self) -> str:  # type: ignore[override]
        return "+".join(f"{b.name}:{b.model_version}" for b in self._members.values()) or "ensemble"

    def model_version_for(self, spec: TaskSpec) -> str:
        a, b = self.pair(spec)
        return f"{a.name}:{a.model_version}+{b.name}:{b.model_version}"

    def supports(self, spec: TaskSpec) -> bool:
        a, b = self.pair(spec)
        return a.supports(spec) and b.supports(spec)

    def prompt_hash(self, spec: TaskSpec) -> str:
        a, b = self.pair(spec)
        return hashlib.sha256(f"{a.prompt_hash(spec)}+{b.prompt_hash(spec)}".encode()).hexdigest()[:16]

    async def predict(self, item: Item, data: bytes, spec: TaskSpec) -> PredictionResult:
        a, b = self.pair(spec)
        ra, rb = await asyncio.gather(a.predict(item, data, spec), b.predict(item, data, spec))
        return combine(spec, (a.name, ra), (b.name, rb))

    async def aclose(self) -> None:
        for m in self._members.values():
            await m.aclose()
