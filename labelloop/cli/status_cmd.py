"""`labelloop status`: counts per pipeline stage."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from labelloop.cli.app import Context, app, ensure_db, get_ctx, out

# --------------------------------------------------------------------------- status


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    rejects: Annotated[
        bool, typer.Option("--rejects", help="List rejected files and rejected annotations with their reasons.")
    ] = False,
) -> None:
    """Counts per stage and spec: predictions (failures by reason), review tasks by route/state, records, rejects;
    and per spec and model where calibration stands (certified, full review, or uncalibrated)."""
    from labelloop.calibration.overview import calibration_overview
    from labelloop.status import pipeline_status

    c = get_ctx(ctx)
    ensure_db(c)
    st = pipeline_status(c.db)
    st["calibration"] = calibration_overview(c.db, c.settings.calibration, c.settings.routing)
    if rejects:
        st["reject_list"] = _reject_list(c)
        st["annotation_reject_list"] = _annotation_reject_list(c)
    if as_json:
        out.print_json(json.dumps(st))
        return
    table = Table(title="labelloop status", show_header=True)
    table.add_column("stage")
    table.add_column("group")
    table.add_column("count", justify="right")
    for stage, value in st.items():
        if stage in ("reject_list", "annotation_reject_list", "calibration"):
            continue
        if isinstance(value, dict):
            if not value:
                table.add_row(stage, "-", "0")
            for group, n in value.items():
                table.add_row(stage, group, str(n))
        else:
            table.add_row(stage, "", str(value))
    out.print(table)
    _print_calibration(st["calibration"])
    for row in st.get("reject_list", []):
        out.print(f"  {row['reason']:<20} {row['source_uri']}  ({row['detail']})")
    for row in st.get("annotation_reject_list", []):
        out.print(
            f"  annotation {row['annotation_id']} of task {row['task_id']} (project {row['project_id']},"
            f" {row['spec']}): {row['reason']}"
        )


def _print_calibration(cal: dict[str, object]) -> None:
    from labelloop.calibration.overview import describe

    keys = cal["keys"]
    assert isinstance(keys, list)
    if not keys:
        out.print("calibration: no predictions yet")
    table = Table(title="calibration (per spec and model)", show_header=True)
    for col in ("spec", "model", "state"):
        table.add_column(col)
    for row in keys:
        table.add_row(row["spec"], row["model_key"], describe(row))
    if keys:
        out.print(table)
    manual = cal["decisions_on_manual_thresholds"]
    assert isinstance(manual, dict)
    for spec, n in manual.items():
        out.print(f"  {spec}: {n} items auto-accepted or audited on uncalibrated manual thresholds (no guarantee)")


def _reject_list(c: Context) -> list[dict[str, str]]:
    from sqlalchemy import select

    from labelloop.db import Item, Reject

    with c.db.session() as s:
        rows = s.scalars(select(Reject).where(~Reject.sha256.in_(select(Item.sha256))).order_by(Reject.source_uri))
        return [{"source_uri": r.source_uri, "reason": r.reason, "detail": r.detail} for r in rows]


def _annotation_reject_list(c: Context) -> list[dict[str, object]]:
    """Rejected annotation versions not superseded by a synced later version of the same annotation."""
    from sqlalchemy import select

    from labelloop.db import Annotation, AnnotationReject

    with c.db.session() as s:
        synced = select(Annotation.ls_annotation_id).where(Annotation.ls_updated_at > AnnotationReject.ls_updated_at)
        rows = s.scalars(
            select(AnnotationReject)
            .where(~AnnotationReject.ls_annotation_id.in_(synced.scalar_subquery().correlate(AnnotationReject)))
            .order_by(AnnotationReject.id)
        )
        return [
            {
                "spec": r.spec,
                "project_id": r.ls_project_id,
                "task_id": r.ls_task_id,
                "annotation_id": r.ls_annotation_id,
                "annotator": r.annotator,
                "reason": r.reason,
            }
            for r in rows
        ]
