"""What every pre-labeling backend returns, and the interface it implements.

Backends (vLLM/Qwen-VL, RapidOCR, MinerU, the pymupdf layout backend) turn one item's bytes into a
:class:`PredictionResult`. They never raise for a bad item: a model error, an unparsable answer
or a timeout becomes ``status="failed"`` with a reason, and the item goes to review.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from labelloop.db.models import Item
from labelloop.specs import TaskSpec


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

    @property
    def confidence(self) -> float | None:
        """Item confidence: the weakest field decides."""
        if self.status != "ok" or not self.field_confidence:
            return None
        return min(self.field_confidence.values())

    @classmethod
    def failed(cls, reason: str, **kw: Any) -> PredictionResult:
        return cls(status="failed", error=reason, **kw)


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
