"""Training samples: one per image record, one per page of a document record.

A sample knows its images (names inside the version), the human turn, the trainer answer and the
ms-swift answer. Serialising it into each format is ``formats.py``'s job; checking it, the
checker's. Documents give one sample per page so every sample has exactly one image and the
answer refers to that page's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from labelloop.config import ExportSettings
from labelloop.export.answers import SwiftAnswer, swift_answer, trainer_answer
from labelloop.export.coords import ModelFrame, model_frame
from labelloop.specs import TaskSpec

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"


@dataclass
class Sample:
    record_id: int
    page: int | None
    split: str
    images: list[str]
    question: str
    answer: str
    swift: SwiftAnswer
    #: the trainer frame of the (single) image; its bounds limit the boxes in ``answer``
    frame: ModelFrame
    #: videos (names inside the version), one ``<video>`` each in the human turn
    videos: list[str] = field(default_factory=list)


def question_for(spec: TaskSpec, n_images: int) -> str:
    """The human turn: the template's question, with one ``<image>`` per image.

    A template that already places its ``<image>`` tags keeps them (the checker verifies the
    count); one without gets them prepended, as qwen-vl-finetune's examples do.
    """
    q = spec.export.question
    token = VIDEO_TOKEN if spec.media == "video" else IMAGE_TOKEN
    if token in q:
        return q
    return token * n_images + "\n" + q


def build_samples(
    spec: TaskSpec,
    *,
    record_id: int,
    record: dict[str, Any],
    split: str,
    images: list[tuple[str, int, int]],
    export: ExportSettings,
) -> list[Sample]:
    """Samples of one record. ``images`` is (name, width, height) per image, per page for documents."""
    out: list[Sample] = []
    pages: list[int | None] = list(range(len(images))) if spec.media == "document" else [None]
    for page in pages:
        name, width, height = images[page or 0]
        frame = model_frame(width, height, export)
        if spec.media == "video":  # answers hold times, not boxes: the frame bounds nothing here
            out.append(
                Sample(
                    record_id=record_id,
                    page=None,
                    split=split,
                    images=[],
                    videos=[name],
                    question=question_for(spec, 1),
                    answer=trainer_answer(spec, record, None, frame.to_model),
                    swift=swift_answer(spec, record, None),
                    frame=frame,
                )
            )
            continue
        out.append(
            Sample(
                record_id=record_id,
                page=page,
                split=split,
                images=[name],
                question=question_for(spec, 1),
                answer=trainer_answer(spec, record, page, frame.to_model),
                swift=swift_answer(spec, record, page),
                frame=frame,
            )
        )
    return out
