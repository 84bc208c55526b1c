"""`labelloop spec check`: everything about a spec that can be wrong before a model ever runs.

Each check names what is wrong and where, so a team fixing its own spec does not have to read a
traceback from deep inside a pre-label or export run. The label config is parsed with
label-studio-sdk's own parser (``LabelInterface``), the one Label Studio itself agrees with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelloop.specs.model import TaskSpec
from labelloop.specs.registry import SpecError, label_config_path, load_spec_file


@dataclass
class SpecCheck:
    path: str
    name: str | None = None
    label_config: str | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "label_config": self.label_config,
            "ok": self.ok,
            "problems": self.problems,
            "warnings": self.warnings,
            "passed": self.passed,
        }


def _check_label_config(spec: TaskSpec, config: str, out: SpecCheck) -> None:
    from label_studio_sdk.label_interface import LabelInterface

    try:
        li = LabelInterface(config)
    except Exception as e:  # the SDK raises plain Exception / XML errors for a bad config
        out.problems.append(f"label config does not parse: {e}")
        return
    controls = {c.name: c for c in li.controls}
    objects = {o.name for o in li.objects}
    if not objects:
        out.problems.append("label config has no object tag (Image) for the controls to point at")
    for fname, f in spec.fields.items():
        ctl = controls.get(f.ls.from_name)
        if ctl is None:
            known = ", ".join(sorted(controls)) or "none"
            out.problems.append(f"field {fname}: from_name {f.ls.from_name!r} is no control of the config ({known})")
            continue
        if f.ls.to_name not in objects:
            out.problems.append(f"field {fname}: to_name {f.ls.to_name!r} is no object of the config")
        elif f.ls.to_name not in (ctl.to_name or []):
            out.problems.append(
                f"field {fname}: control {f.ls.from_name!r} points at {ctl.to_name}, not {f.ls.to_name!r}"
            )
        if f.ls.text_from_name and f.ls.text_from_name not in controls:
            out.problems.append(f"field {fname}: text_from_name {f.ls.text_from_name!r} is no control of the config")
        if f.kind in ("box", "regions") and f.ls.label not in (getattr(ctl, "labels", None) or []):
            out.problems.append(f"field {fname}: label {f.ls.label!r} is not a label of control {f.ls.from_name!r}")
        if f.kind == "choice" and f.choices:
            have = [c.value for c in ctl.labels_attrs.values()] if getattr(ctl, "labels_attrs", None) else []
            have = have or list(getattr(ctl, "labels", []) or [])
            missing = [c for c in f.choices if c not in have]
            if missing:
                out.problems.append(f"field {fname}: choices {missing} missing from control {f.ls.from_name!r}")
    if not out.problems:
        out.passed.append("label config parsed; every field's from_name/to_name is in it")


def _check_example(spec: TaskSpec, out: SpecCheck) -> None:
    from labelloop.export.answers import AnswerError, swift_answer, trainer_answer
    from labelloop.specs.compare import compare_field
    from labelloop.specs.schema_check import compile_check

    if spec.example is None:
        out.warnings.append("no 'example' record: the export template and comparisons were not tried")
        return
    check = compile_check(spec.json_schema)
    if check is None or not check(spec.example):
        # the fast subset check says only yes/no (or does not cover the schema): jsonschema says why
        import jsonschema

        try:
            jsonschema.validate(spec.example, spec.json_schema)
        except jsonschema.ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path) or "(top)"
            out.problems.append(f"example does not match json_schema at {where}: {e.message}")
            return
    page = 0 if spec.media == "document" else None
    try:
        answer = trainer_answer(spec, spec.example, page, lambda b: b)
        swift_answer(spec, spec.example, page)
    except (AnswerError, KeyError, TypeError, ValueError) as e:
        out.problems.append(f"export template {spec.export.answer!r} does not render the example: {e}")
        return
    if spec.export.question.count("<image>") != 1:
        out.problems.append("export question must hold exactly one <image> placeholder")
    out.passed.append(f"export template renders the example ({len(answer)} characters)")
    for fname, f in spec.fields.items():
        value = spec.example.get(fname)
        try:
            changed, _ = compare_field(f, value, value)
        except Exception as e:
            out.problems.append(f"field {fname}: comparison {f.compare!r} fails on the example: {e}")
            continue
        if changed:
            out.problems.append(f"field {fname}: comparison {f.compare!r} calls the example different from itself")
    out.passed.append("comparisons run on the example")


def check_spec_file(path: Path, fallback_label_dir: Path | None = None) -> SpecCheck:
    out = SpecCheck(path=str(path))
    try:
        spec = load_spec_file(path)
    except SpecError as e:
        out.problems.append(str(e))
        return out
    out.name = spec.name
    out.passed.append("spec file valid")
    try:
        cfg_path = label_config_path(spec, fallback_label_dir)
    except SpecError as e:
        out.problems.append(str(e))
    else:
        out.label_config = str(cfg_path)
        _check_label_config(spec, cfg_path.read_text(encoding="utf-8"), out)
    _check_example(spec, out)
    return out
