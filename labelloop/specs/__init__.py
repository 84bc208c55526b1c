"""Task specs (see model.py for the format); shipped specs are the YAML files here."""

from labelloop.specs.model import ExportTemplate, FieldSpec, LabelStudioField, TaskSpec
from labelloop.specs.registry import SpecError, SpecRegistry, load_spec_file

__all__ = [
    "ExportTemplate",
    "FieldSpec",
    "LabelStudioField",
    "SpecError",
    "SpecRegistry",
    "TaskSpec",
    "load_spec_file",
]
