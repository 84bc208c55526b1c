"""One Label Studio project per task spec, found or created once and then known by its id.

The project title is ``<prefix>-<spec>``. The first import finds the oldest project with that
title or creates it, under the import lock (:mod:`labelloop.db.locks`), and stores its id in
``ls_projects``; from then on import and sync use the stored id, never the title, so a second
project with the same title (made by hand, or by a race before the id was stored) never takes
over. The project is set up for review of pre-labeled tasks:

* ``sampling = "Uncertainty sampling"`` (the CLI's ``--sampling prediction-score-min``): the
  labeling queue serves the task whose prediction has the lowest ``score`` first, among
  predictions whose ``model_version`` equals the project's (``projects.functions.next_task``).
* ``model_version`` is set to the version just imported, because the UI pre-fills only
  predictions of the project's ``model_version`` and Label Studio never moves it past the first
  version it saw (reference 5.6): without this, a new model's pre-annotations are invisible.
* the spec's ``description`` is the project's instructions (shown before labeling), and a
  Data Manager tab :data:`REVIEW_VIEW_TITLE` (organisation-wide) lists the tasks worst-first
  (``tasks:predictions_score`` ascending) with the original file name, the page and the fields
  the model was least sure of, hiding the two sha256 columns (``item``, ``external_id``). Whether
  a task is an audit sample is in no column: audits stay blind.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from xml.sax.saxutils import quoteattr

from label_studio_sdk import LabelStudio

from labelloop.db import Database, LabelStudioProject
from labelloop.review.client import LabelStudioError, call
from labelloop.specs import TaskSpec

log = logging.getLogger(__name__)

#: project ``sampling`` value behind "prediction-score-min" (label_studio/server.py sampling_map)
UNCERTAINTY_SAMPLING = "Uncertainty sampling"

#: title of the Data Manager tab we create; found by this title, so renaming it makes a new one
REVIEW_VIEW_TITLE = "Worst first"
#: task data columns no reviewer needs (content hashes); hidden in the review tab
HIDDEN_DATA_COLUMNS = ("item", "external_id")
#: Data Manager's own columns (label_studio/data_manager/functions.py) that push the file name
#: off screen and tell a reviewer nothing about what to look at next; hidden in the review tab
HIDDEN_TASK_COLUMNS = (
    "inner_id",
    "annotators",
    "annotations_results",
    "annotations_ids",
    "predictions_model_versions",
    "predictions_results",
    "file_upload",
    "storage_filename",
    "created_at",
    "updated_at",
    "updated_by",
    "avg_lead_time",
    "draft_exists",
    "total_predictions",
)


def instructions(spec: TaskSpec) -> str:
    """The project's instructions: what the spec labels, in the spec's own words."""
    text = spec.description.strip() or f"Review the '{spec.name}' pre-labels."
    return f"<p>{text}</p><p>Tasks are ordered worst first: the model's least sure pre-labels come first.</p>"


def review_view_data(spec: TaskSpec) -> dict[str, object]:
    """The Data Manager tab (the ``data`` of ``POST /api/dm/views``) as the frontend stores it."""
    hidden = [f"tasks:data.{c}" for c in HIDDEN_DATA_COLUMNS] + [f"tasks:{c}" for c in HIDDEN_TASK_COLUMNS]
    return {
        "title": REVIEW_VIEW_TITLE,
        "type": "list",
        "target": "tasks",
        "ordering": ["tasks:predictions_score"],
        "filters": {"conjunction": "and", "items": []},
        "hiddenColumns": {"explore": hidden, "labeling": hidden},
    }


def ensure_review_view(ls: LabelStudio, project_id: int, spec: TaskSpec) -> int:
    """Create the worst-first tab unless the project has one (a reviewer's edits to it are kept)."""
    views = call(f"list views of project {project_id}", ls.views.list, project=project_id)
    for v in views:
        if (v.data or {}).get("title") == REVIEW_VIEW_TITLE and v.project == project_id:
            return int(v.id)
    created = call(
        f"create review view of project {project_id}", ls.views.create, project=project_id, data=review_view_data(spec)
    )
    return int(created.id)


def project_title(prefix: str, spec: TaskSpec | str) -> str:
    name = spec if isinstance(spec, str) else spec.name
    return f"{prefix}-{name}"


def find_project(ls: LabelStudio, title: str) -> int | None:
    """Id of the oldest project with exactly this title (the API filter is ``icontains``)."""
    ids = [p.id for p in call(f"list projects {title!r}", ls.projects.list, title=title) if p.title == title]
    return min(ids) if ids else None


def ensure_project(
    ls: LabelStudio, prefix: str, spec: TaskSpec, label_config: str, *, project_id: int | None = None
) -> int:
    """Find (``project_id``, else by title) or create the spec's project; keep its label config in
    step with ``label_config``.

    An existing project keeps the labels that imports appended to it (:func:`extend_labels`),
    so a config file update never removes a label annotations may use.
    """
    label_config = label_config.strip()  # Label Studio stores the config stripped
    title = project_title(prefix, spec)
    pid = project_id if project_id is not None else find_project(ls, title)
    if pid is None:
        try:
            created = call(
                f"create project {title!r}",
                ls.projects.create,
                title=title,
                label_config=label_config,
                description=f"labelloop review of '{spec.name}' pre-labels (lowest confidence first)",
                expert_instruction=instructions(spec),
                show_instruction=True,
                sampling=UNCERTAINTY_SAMPLING,
                show_collab_predictions=True,
                show_skip_button=True,
                maximum_annotations=1,
            )
            log.info("created Label Studio project %s (%s)", created.id, title)
            ensure_review_view(ls, int(created.id), spec)
            return int(created.id)
        except LabelStudioError as e:
            pid = find_project(ls, title)  # lost a race with another worker: use its project
            if pid is None:
                raise e from None
    project = call(f"get project {pid}", ls.projects.get, id=pid)
    desired = keep_extra_labels(label_config, project.label_config or "")
    updates: dict[str, object] = {}
    if (project.label_config or "").strip() != desired:
        updates["label_config"] = desired
    if project.sampling != UNCERTAINTY_SAMPLING:
        updates["sampling"] = UNCERTAINTY_SAMPLING
    if (project.expert_instruction or "") != instructions(spec):
        updates.update(expert_instruction=instructions(spec), show_instruction=True)
    if updates:
        call(f"update project {pid}", ls.projects.update, id=pid, **updates)
    ensure_review_view(ls, int(pid), spec)
    return int(pid)


def stored_project_id(db: Database, url: str, title: str) -> int | None:
    """The project id stored for ``title`` on the Label Studio at ``url``, if any."""
    with db.session() as s:
        row = s.get(LabelStudioProject, title)
        return row.project_id if row is not None and row.url == url.rstrip("/") else None


def project_for(db: Database, ls: LabelStudio, url: str, prefix: str, spec: TaskSpec, label_config: str) -> int:
    """The spec's project: the stored one, else found by title or created, then stored.

    Call it holding the import lock. A stored project that no longer exists in Label Studio is
    an error (its tasks are gone too; a person must decide), not a silent new project.
    """
    title = project_title(prefix, spec)
    url = url.rstrip("/")
    pid = stored_project_id(db, url, title)
    if pid is not None:
        try:
            call(f"get project {pid}", ls.projects.get, id=pid)
        except LabelStudioError as e:
            if e.status_code == 404:
                raise LabelStudioError(
                    f"project {pid} ({title!r}), stored in the curation DB (ls_projects), no longer exists in "
                    f"Label Studio at {url}; delete that row to start a new project",
                    404,
                ) from None
            raise
        return ensure_project(ls, prefix, spec, label_config, project_id=pid)
    pid = ensure_project(ls, prefix, spec, label_config)
    with db.session() as s:
        row = s.get(LabelStudioProject, title)
        if row is None:
            s.add(LabelStudioProject(title=title, url=url, spec=spec.name, project_id=pid))
        else:  # stored for another Label Studio server: this one is now in use
            row.url, row.project_id = url, pid
        s.commit()
    return pid


def set_model_version(ls: LabelStudio, project_id: int, model_version: str) -> bool:
    """Point the project at ``model_version`` (so its predictions pre-fill the UI); True if changed.

    Label Studio refuses a version for which the project has no predictions yet (400 "Model
    version doesn't exist either as live model or as static predictions"), so this is called
    after the first chunk of that version is in.
    """
    project = call(f"get project {project_id}", ls.projects.get, id=project_id)
    if project.model_version == model_version:
        return False
    call(f"set model_version of {project_id}", ls.projects.update, id=project_id, model_version=model_version)
    return True


# --------------------------------------------------------------------------- open-vocabulary labels


def control_labels(label_config: str, control: str) -> list[str]:
    """Label values of the labels control named ``control`` (RectangleLabels and the like)."""
    root = ET.fromstring(label_config)
    for el in root.iter():
        if el.get("name") == control:
            return [lab.get("value", "") for lab in el if lab.tag == "Label"]
    raise ValueError(f"label config has no control named {control!r}")


def add_labels(label_config: str, control: str, labels: Iterable[str]) -> str:
    """``label_config`` with ``<Label value=.../>`` appended to ``control`` for missing labels.

    Text insertion rather than an XML rewrite keeps the file's comments and layout, so the stored
    config stays diffable against the spec's label config file.
    """
    have = set(control_labels(label_config, control))
    missing = [lab for lab in dict.fromkeys(labels) if lab and lab not in have]
    if not missing:
        return label_config
    pattern = re.compile(
        r"(<(?P<tag>\w+)\b[^>]*\bname=\"" + re.escape(control) + r"\"[^>]*>)(?P<body>.*?)(</(?P=tag)>)",
        re.S,
    )
    m = pattern.search(label_config)
    if m is None:
        raise ValueError(f"cannot find the element of control {control!r} to extend")
    extra = "".join(f"<Label value={quoteattr(lab)}/>" for lab in missing)
    return label_config[: m.end("body")] + extra + label_config[m.end("body") :]


def keep_extra_labels(file_config: str, project_config: str) -> str:
    """The file's config plus the labels the project gained through :func:`extend_labels`."""
    if not project_config:
        return file_config
    out = file_config
    root = ET.fromstring(file_config)
    for el in root.iter():
        name = el.get("name")
        if el.tag.endswith("Labels") and name:
            try:
                theirs = control_labels(project_config, name)
            except (ValueError, ET.ParseError):
                continue
            out = add_labels(out, name, theirs)
    return out


def extend_labels(ls: LabelStudio, project_id: int, wanted: Mapping[str, set[str]]) -> list[str]:
    """Append labels that predictions use but the project's config lacks; returns what was added.

    Grounding is open-vocabulary: a model may say "traffic light" where the seed list has no such
    label. The label becomes one more choice in this project only (appending is always valid for
    existing annotations, unlike removing).
    """
    if not any(wanted.values()):
        return []
    project = call(f"get project {project_id}", ls.projects.get, id=project_id)
    config = project.label_config or ""
    added: list[str] = []
    for control, labels in wanted.items():
        have = set(control_labels(config, control))
        new = sorted(lab for lab in labels if lab and lab not in have)
        if new:
            config = add_labels(config, control, new)
            added += new
    if added:
        call(f"extend labels of {project_id}", ls.projects.update, id=project_id, label_config=config)
        log.info("project %s: added labels %s", project_id, added)
    return added
