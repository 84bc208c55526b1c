"""What every pre-labeling backend returns, and the interface it implements.

Backends (vLLM/Qwen-VL, RapidOCR, MinerU, the pymupdf layout backend) turn one item's bytes into a
:class:`PredictionResult`. They never raise for a bad item: a model error, an unparsable answer
or a timeout becomes ``status="failed"`` with a reason and a kind: ``transient`` (the server was
unreachable, timed out, said 429 or 5xx: a later run retries it) or ``permanent`` (the answer or
the file is bad: retried only after a prompt/model change or on request).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from labelloop.db.models import Item
from labelloop.specs import TaskSpec

FAILURE_TRANSIENT = "transient"
FAILURE_PERMANENT = "permanent"
FAILURE_KINDS = (FAILURE_TRANSIENT, FAILURE_PERMANENT)


@dataclass
class PredictionResult:
    status: str  # "ok" | "failed"
    record: dict[str, Any] | None = None
    #: routing confidence per field in [0, 1]
    field_confidence: dict[str, float] = field(default_factory=dict)
    confidence_detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    raw_output: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: failed only: FAILURE_TRANSIENT or FAILURE_PERMANENT
    failure_kind: str | None = None

    @property
    def confidence(self) -> float | None:
        """Item confidence: the weakest field decides."""
        if self.status != "ok" or not self.field_confidence:
            return None
        return min(self.field_confidence.values())

    @classmethod
    def failed(cls, reason: str, *, kind: str = "permanent", **kw: Any) -> PredictionResult:
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}")
        return cls(status="failed", error=reason, failure_kind=kind, **kw)

    @property
    def transient(self) -> bool:
        return self.status != "ok" and self.failure_kind == FAILURE_TRANSIENT


class Backend(abc.ABC):
    """One model behind one API. ``model``/``model_version`` go into the prediction identity."""

    name: str
    model: str
    model_version: str

    @abc.abstractmethod
    def supports(self, spec: TaskSpec) -> bool: ...

    def prompt_hash(self, spec: TaskSpec) -> str:
        """Identity of the instructions; backends that ignore the prompt override this."""
        return spec.prompt_hash

    @abc.abstractmethod
    async def predict(self, item: Item, data: bytes, spec: TaskSpec) -> PredictionResult:
        """Predict one item. Must not raise for problems with the item or the model's answer."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients/sessions."""
