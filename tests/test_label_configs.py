"""Label configs: in step with the specs, accepted by Label Studio, projects found or created once."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from labelloop.review import convert, projects
from labelloop.review.client import LabelStudioAuthError, LabelStudioError, make_client
from labelloop.specs import SpecRegistry, TaskSpec

pytest_plugins = ["fixtures_labelstudio"]

REGISTRY = SpecRegistry()
SPECS = REGISTRY.names()
SIZE = {
    "image": convert.ImageSize(640, 480),
    "document": convert.ImageSize(1224, 1584),
    "video": convert.ImageSize(640, 480, fps=25.0),
}
#: the object tag each media type is reviewed in, and the task data key it reads
OBJECT = {"image": ("Image", "image"), "document": ("Image", "image"), "video": ("Video", "video")}


def _controls(config: str) -> dict[str, ET.Element]:
    return {el.get("name"): el for el in ET.fromstring(config).iter() if el.get("name")}


def test_every_shipped_spec_has_a_config() -> None:
    assert set(SPECS) >= {"vehicle_extraction", "ocr_lines", "caption", "grounding", "document_layout"}


@pytest.mark.parametrize("name", SPECS)
def test_config_matches_the_spec(name: str) -> None:
    """Every field's ``ls`` mapping names a control of the right tag (and choices/labels agree)."""
    spec = REGISTRY.get(name)
    controls = _controls(REGISTRY.label_config(spec))
    tag, key = OBJECT[spec.media]
    assert controls[key].tag == tag and controls[key].get("value") == f"${key}"
    for fname, f in spec.fields.items():
        el = controls.get(f.ls.from_name)
        assert el is not None, f"{name}.{fname}: no control {f.ls.from_name!r}"
        assert el.get("toName") == f.ls.to_name
        labels = [c.get("value") for c in el if c.tag == "Label"]
        if f.kind == "text":
            assert el.tag == "TextArea" and el.get("perRegion") != "true"
        elif f.kind == "choice":
            assert el.tag == "Choices" and el.get("choice") == "single"
            assert [c.get("value") for c in el if c.tag == "Choice"] == f.choices
        elif f.kind == "events":
            assert el.tag == "TimelineLabels" and labels == spec.options["labels"]
            assert labels == spec.json_schema["properties"][fname]["items"]["properties"]["label"]["enum"]
            assert controls[key].get("frameRate") == "$fps"  # timeline frames <-> seconds
        elif f.kind == "qa":
            assert el.tag == "TextArea" and controls[f.ls.text_from_name].tag == "TextArea"
            continue
        else:
            assert el.tag == "RectangleLabels" and el.get("canRotate") == "false"
        if f.kind == "box":
            assert f.ls.label in labels
        if f.kind == "regions":
            assert f.ls.label in labels
        if f.kind == "blocks":
            assert labels == spec.options["block_types"]
        if f.kind == "objects":
            assert labels == spec.options["labels"]
        if f.ls.text_from_name:
            text = controls[f.ls.text_from_name]
            assert text.tag == "TextArea" and text.get("perRegion") == "true"


@pytest.mark.labelstudio
@pytest.mark.parametrize("name", SPECS)
def test_label_studio_accepts_each_config(label_studio: Any, review_data: Any, name: str) -> None:
    """A project is created with the config, and a task pre-labeled from a sample record imports."""
    ls = label_studio.client()
    spec: TaskSpec = REGISTRY.get(name)
    prefix = f"cfg{uuid.uuid4().hex[:6]}"
    pid = projects.ensure_project(ls, prefix, spec, REGISTRY.label_config(spec))
    project = ls.projects.get(id=pid)
    assert project.title == f"{prefix}-{name}"
    assert project.sampling == projects.UNCERTAINTY_SAMPLING
    assert project.label_config == REGISTRY.label_config(spec).strip()
    view = convert.task_view(spec, review_data.sample_record(name), 0)
    result = convert.to_result(spec, view, SIZE[spec.media])
    data = (
        {"video": "/data/local-files/?d=x.mp4", "fps": 25}
        if spec.media == "video"
        else {"image": "/data/local-files/?d=x.png", "hints": ""}
    )
    r = ls.projects.import_tasks(
        id=pid,
        request=[{"data": data, "predictions": [{"result": result, "score": 0.5}]}],
        return_task_ids=True,
    )
    task = ls.tasks.get(id=str(r.task_ids[0]))
    assert task.predictions[0].result == result
    # idempotent: found again by title, not created twice
    assert projects.ensure_project(ls, prefix, spec, REGISTRY.label_config(spec)) == pid
    assert [p.id for p in ls.projects.list(title=f"{prefix}-{name}") if p.title == f"{prefix}-{name}"] == [pid]


@pytest.mark.labelstudio
def test_open_vocabulary_labels_extend_the_project_only(label_studio: Any) -> None:
    ls = label_studio.client()
    spec = REGISTRY.get("grounding")
    file_config = REGISTRY.label_config(spec)
    pid = projects.ensure_project(ls, f"voc{uuid.uuid4().hex[:6]}", spec, file_config)
    added = projects.extend_labels(ls, pid, {"label": {"traffic light", "car", 'say "cheese"'}})
    assert sorted(added) == ['say "cheese"', "traffic light"]
    config = ls.projects.get(id=pid).label_config
    assert projects.control_labels(config, "label")[-2:] == ['say "cheese"', "traffic light"]
    assert "<!--" in config  # the file's comments survive
    assert projects.extend_labels(ls, pid, {"label": {"traffic light"}}) == []
    # re-ensuring with the (unchanged) file keeps the extra labels
    title = ls.projects.get(id=pid).title
    prefix = title.rsplit("-grounding", 1)[0]
    assert projects.ensure_project(ls, prefix, spec, file_config) == pid
    assert "traffic light" in projects.control_labels(ls.projects.get(id=pid).label_config, "label")


@pytest.mark.labelstudio
def test_model_version_is_moved_to_the_imported_one(label_studio: Any) -> None:
    ls = label_studio.client()
    spec = REGISTRY.get("caption")
    pid = projects.ensure_project(ls, f"mv{uuid.uuid4().hex[:6]}", spec, REGISTRY.label_config(spec))
    with pytest.raises(LabelStudioError, match="doesn't exist"):  # no predictions of it yet
        projects.set_model_version(ls, pid, "qwen-v0")
    for v in ("qwen-v1", "qwen-v2"):
        task = {"data": {"image": f"/data/local-files/?d={v}.png"}, "predictions": [{"model_version": v, "result": []}]}
        ls.projects.import_tasks(id=pid, request=[task])
    assert ls.projects.get(id=pid).model_version == "qwen-v1"  # Label Studio keeps the first one
    assert projects.set_model_version(ls, pid, "qwen-v2") is True
    assert projects.set_model_version(ls, pid, "qwen-v1") is True
    assert projects.set_model_version(ls, pid, "qwen-v1") is False
    assert ls.projects.get(id=pid).model_version == "qwen-v1"


@pytest.mark.labelstudio
def test_client_errors_are_clear_for_both_token_kinds(label_studio: Any) -> None:
    with pytest.raises(LabelStudioAuthError, match="refused the legacy API token"):
        make_client(label_studio.url, "not-a-valid-token-0000")
    # an expired JWT is refused before any request is made (the SDK decodes it)
    expired = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCIsImV4cCI6MTAwMCwiaWF0IjoxfQ.c2ln"
    with pytest.raises(LabelStudioAuthError, match="expired"):
        make_client(label_studio.url, expired)
    with pytest.raises(LabelStudioAuthError, match="no Label Studio token"):
        make_client(label_studio.url, "")
