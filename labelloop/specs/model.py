"""Task specs are data: one YAML file per spec describes everything the pipeline needs.

A spec names its media type, the prompt, the JSON schema of its record, the Label Studio label
config (a file beside the spec or in its ``label_config/`` folder), each field's kind and comparison,
and the export template.
The generic code in ``labelloop.prelabel``, ``labelloop.review`` and ``labelloop.export`` reads
these declarations, so a team adds a spec by adding one file (plus its label config) and no code.

Field kinds (what a value looks like, in the record):
  text     a string                      -> Label Studio TextArea
  choice   one of ``choices``            -> Choices
  box      [x1, y1, x2, y2] in original pixels (or null) -> a RectangleLabels region with ``label``
  regions  list of {"bbox": [..], "text": str}             -> rectangles + per-region TextArea
  objects  list of {"bbox_2d": [..], "label": str}         -> RectangleLabels with the object's label
  blocks   document pages with typed blocks (document_layout)
  events   list of {"start": s, "end": s, "label": str, "description": str} in video seconds
           -> TimelineLabels regions on the Video (set comparison, matched by temporal IoU)
  qa       list of {"question": str, "answer": str} -> one TextArea per side, a pair per row

Comparisons (did the reviewer change the value?):
  exact    equality after normalising whitespace/case for strings
  text     normalised edit distance > ``tolerance`` (default 0: any edit)
  iou      box IoU < ``iou_threshold`` (default 0.5), or one side missing
  set      multiset equality of list items (objects/regions matched by IoU then text/label)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FieldKind = Literal["text", "choice", "box", "regions", "objects", "blocks", "events", "qa"]
Comparison = Literal["exact", "text", "iou", "set"]


class LabelStudioField(BaseModel):
    """Where a field lives in the label config."""

    model_config = ConfigDict(extra="forbid")
    from_name: str
    to_name: str = "image"
    #: for box fields: the RectangleLabels label value; for regions/objects: the text control
    label: str | None = None
    text_from_name: str | None = None


class FieldSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: FieldKind
    compare: Comparison
    description: str = ""
    required: bool = True
    choices: list[str] | None = None
    #: regex a valid value must match (validation, and plate-number search in OCR)
    pattern: str | None = None
    max_length: int | None = None
    tolerance: float = 0.0
    iou_threshold: float = 0.5
    ls: LabelStudioField
    #: how this field's value-token probabilities become its confidence, overriding
    #: ``vllm.confidence_aggregator`` (e.g. "joint" for an exact value such as a plate number,
    #: where every token must be right; see tests/test_vllm_confidence_sim.py); part of the
    #: vLLM prediction identity
    confidence_aggregator: Literal["min", "geomean", "joint"] | None = None

    @model_validator(mode="after")
    def _check(self) -> FieldSpec:
        if self.kind == "choice" and not self.choices:
            raise ValueError("a choice field needs 'choices'")
        return self


class ExportTemplate(BaseModel):
    """The fine-tuning conversation: the human turn and how the answer is written."""

    model_config = ConfigDict(extra="forbid")
    question: str
    #: "json": the record as JSON; "text:<field>": that field's text; "grounding": a list of
    #: {"bbox_2d", "label"} in the trainer's coordinate convention; "markdown": document Markdown
    answer: str = "json"
    #: fields left out of the JSON answer (e.g. internal confidences)
    exclude: list[str] = Field(default_factory=list)


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,62}$")
    version: int = 1
    media: Literal["image", "document", "video"]
    description: str = ""
    prompt: str
    #: JSON schema of the model's answer (sent as response_format json_schema to vLLM)
    json_schema: dict[str, Any]
    fields: dict[str, FieldSpec]
    label_config: str
    export: ExportTemplate
    #: free-form options for backends (e.g. OCR plate regex, default labels)
    options: dict[str, Any] = Field(default_factory=dict)
    #: a record as the model should answer, checked by `labelloop spec check` (schema, export
    #: template, comparisons); optional, but a spec without one is only half checked
    example: dict[str, Any] | None = None

    source_path: Path | None = Field(default=None, exclude=True)

    @property
    def prompt_hash(self) -> str:
        """Identity of what the model is asked: a changed prompt or schema is a new prediction."""
        blob = json.dumps({"prompt": self.prompt, "schema": self.json_schema}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def label_config_path(self, root: Path) -> Path:
        return root / self.label_config

    def field_names(self) -> list[str]:
        return list(self.fields)
