"""Did the server encode the image we sent, at the size we sent it?

We resize on the client so that the image sent *is* the image the model sees (see
:mod:`labelloop.prelabel.qwen_resize`). That holds only while the server's processor leaves it
alone: a server started with a smaller ``max_pixels`` (or a larger ``min_pixels``), or a
different patch factor than the client assumes, resizes it again, and then Qwen2.5-VL's
absolute boxes are in a frame the client does not know. The image token count gives it away:
the processor turns an ``h x w`` image into ``(h / factor) * (w / factor)`` tokens
(``Qwen2VLProcessingInfo._get_vision_info`` in vLLM), so the count the client expects from its
own resize must be the count the server encoded.

Two checks, the exact one when the server allows it:

* **exact**: with ``return_token_ids`` vLLM returns ``prompt_token_ids``; the number of
  ``<|image_pad|>`` ids in it is the image token count, nothing to estimate.
* **bound**: otherwise only ``usage.prompt_tokens`` is known, the image tokens plus the text
  tokens of the chat template and our prompt, and the client has no tokenizer to count the
  latter. It can bound them soundly, though. Qwen's tokenizer is a byte-level BPE whose
  pre-tokenizer never joins two whitespace-separated runs, so the text takes at least one token
  per run of non-space characters and at most one per UTF-8 byte; the chat template (role
  markers, vision start/end, Qwen2.5's default system prompt) adds fewer than
  :data:`TEMPLATE_TOKENS_MAX`. So ``prompt_tokens - expected_image_tokens`` must lie in
  ``[runs, bytes + TEMPLATE_TOKENS_MAX]``. Outside it, the server encoded another image size.
  Inside it, a small difference can hide (upscales by fewer tokens than the bytes-minus-tokens
  slack, downscales by fewer than the tokens-minus-runs slack): the bound never fails a correct
  prediction but is weaker than the exact check, which is why the exact one is asked for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from labelloop.prelabel.qwen_resize import ResizePlan

#: an upper bound on what Qwen's chat templates add to one user turn with one image (about 21
#: tokens for Qwen2.5-VL with its default system prompt, fewer for Qwen3-VL): generous on
#: purpose, since a bound that is too tight would fail correct predictions
TEMPLATE_TOKENS_MAX = 96
_RUN = re.compile(r"\S+")


def expected_image_tokens(plan: ResizePlan, factor: int) -> int:
    """Image tokens the processor makes of the image we send (already a multiple of ``factor``)."""
    return (plan.height // factor) * (plan.width // factor)


def text_token_bounds(texts: Iterable[str]) -> tuple[int, int]:
    """(fewest, most) prompt tokens that are not image tokens, for these text parts."""
    texts = list(texts)
    runs = sum(len(_RUN.findall(t)) for t in texts)
    size = sum(len(t.encode("utf-8")) for t in texts)
    return runs, size + TEMPLATE_TOKENS_MAX


@dataclass(frozen=True)
class TokenCheck:
    """The outcome, stored with the prediction (``confidence_detail["image_tokens"]``)."""

    method: str  # "exact" | "bound" | "unavailable"
    expected: int
    #: exact: the image tokens the server encoded; bound: prompt_tokens minus the expected ones
    observed: int | None
    bounds: tuple[int, int] | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "expected": self.expected, "observed": self.observed}
        if self.bounds is not None:
            out["text_token_bounds"] = list(self.bounds)
        return out


def check_image_tokens(
    plan: ResizePlan,
    factor: int,
    texts: Iterable[str],
    *,
    prompt_tokens: int | None,
    prompt_token_ids: list[int] | None,
    image_token_id: int | None,
) -> TokenCheck:
    """Compare what the server encoded with what our resize implies; ``error`` says what is wrong."""
    expected = expected_image_tokens(plan, factor)
    frame = f"{plan.width}x{plan.height} sent (factor {factor}, {expected} image tokens)"
    if prompt_token_ids is not None and image_token_id is not None:
        served = sum(1 for t in prompt_token_ids if t == image_token_id)
        error = None
        if served != expected:
            error = (
                f"the server encoded {served} image tokens for the {frame}: it resized the image again, "
                "so its boxes are not in the frame we map back from"
            )
        return TokenCheck("exact", expected, served, error=error)
    if prompt_tokens is None:
        return TokenCheck("unavailable", expected, None)
    lo, hi = text_token_bounds(texts)
    rest = prompt_tokens - expected
    error = None
    if not lo <= rest <= hi:
        error = (
            f"the server counted {prompt_tokens} prompt tokens; the {frame} leaves {rest} for the text, "
            f"which takes between {lo} and {hi}: it resized the image again, so its boxes are not in the "
            "frame we map back from"
        )
    return TokenCheck("bound", expected, rest, bounds=(lo, hi), error=error)


def remedy(base_url: str) -> str:
    return (
        f"(server {base_url}, step: image token check) make vllm.min_pixels/max_pixels lie within the server's "
        "--mm-processor-kwargs min/max_pixels and vllm.resize_factor/model_family match the served model, then "
        "rerun (labelloop prelabel --retry-failed if only the server changed)"
    )
