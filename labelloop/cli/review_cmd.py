"""`labelloop route` and `labelloop review import|sync`: the review half of the loop, one step at a time.

The same core functions as ``RouteAndImportOperator`` and ``SyncOperator``; each is safe to rerun
(routing never re-decides, the import looks up external ids first, the sync watermark only moves
with committed data).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from labelloop.cli.app import Context, ExitCode, StepFailed, app, console, ensure_db, get_ctx, out

review_app = typer.Typer(help="Label Studio: import review tasks, sync reviewed work back.", no_args_is_help=True)
app.add_typer(review_app, name="review")

SpecOpt = Annotated[str, typer.Option("--spec", "-s", help="Task spec (see `labelloop spec list`).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]


@contextmanager
def label_studio_errors(c: Context, what: str) -> Iterator[None]:
    """Label Studio down, a bad token, a refused request: exit 1 naming the URL and the step."""
    import httpx

    from labelloop.review.client import LabelStudioError

    try:
        yield
    except (LabelStudioError, httpx.HTTPError, OSError) as e:
        raise StepFailed(ExitCode.ERROR, f"{what}: Label Studio at {c.settings.label_studio.url}: {e}") from e


def _spinner(what: str, show: bool) -> Any:
    from contextlib import nullcontext

    return console.status(f"[bold]{what}[/bold]") if show else nullcontext()


def route_step(c: Context, spec_name: str) -> dict[str, Any]:
    from labelloop.review.routing import route_predictions

    spec = c.spec(spec_name)
    return route_predictions(c.db, c.settings.routing, spec).as_dict()


def import_step(c: Context, spec_name: str, *, limit: int | None = None, show_progress: bool = True) -> dict[str, Any]:
    from labelloop.review.client import client_from_settings
    from labelloop.review.importer import import_pending

    spec = c.spec(spec_name)
    with (
        label_studio_errors(c, f"import {spec.name}"),
        _spinner(f"import {spec.name} into Label Studio", show_progress),
    ):
        ls = client_from_settings(c.settings.label_studio)
        label_config = c.registry.label_config(spec)
        return import_pending(c.db, ls, c.settings, spec, label_config, c.store, limit=limit).as_dict()


def sync_step(c: Context, spec_name: str, *, detect_deleted: bool = True, show_progress: bool = True) -> dict[str, Any]:
    from labelloop.review.client import client_from_settings
    from labelloop.review.sync import sync_project

    spec = c.spec(spec_name)
    with label_studio_errors(c, f"sync {spec.name}"), _spinner(f"sync {spec.name} from Label Studio", show_progress):
        ls = client_from_settings(c.settings.label_studio)
        return sync_project(c.db, ls, c.settings, spec, detect_deleted=detect_deleted).as_dict()


def run_one(step: Callable[[], dict[str, Any]], as_json: bool, show: Callable[[dict[str, Any]], None]) -> None:
    """Run a step for a command: its summary on stdout (JSON or text), an error and its exit code."""
    try:
        result = step()
    except StepFailed as e:
        console.print(f"[red]error:[/red] {e}")
        if as_json:
            out.print_json(json.dumps({**e.result, "error": str(e)}, default=str))
        raise typer.Exit(int(e.code)) from e
    if as_json:
        out.print_json(json.dumps(result, default=str))
    else:
        show(result)


def print_route(r: dict[str, Any]) -> None:
    out.print(
        f"routed {r['considered']} predictions of {r['spec']}: {r['auto']} auto-accepted, {r['review']} to review, "
        f"{r['audit']} audit samples ({r['tasks']} review tasks, {r['records']} records)"
    )


def print_import(r: dict[str, Any]) -> None:
    out.print(
        f"{r['spec']}: {r['imported']} tasks imported into project {r['project_id']}, "
        f"{r['already_there']} already there, of {r['pending']} pending"
    )


def print_sync(r: dict[str, Any]) -> None:
    if r["project_id"] is None:
        out.print(f"{r['spec']}: no Label Studio project yet (run `labelloop review import` first)")
        return
    out.print(
        f"{r['spec']} (project {r['project_id']}): {r['tasks_seen']} tasks seen, {r['annotations_new']} new "
        f"annotations, {r['completed']} completed, {r['corrections']} field corrections, {r['records']} records, "
        f"{r['deleted']} deleted"
    )


@app.command()
def route(ctx: typer.Context, spec: SpecOpt, as_json: JsonOpt = False) -> None:
    """Decide per prediction: auto-accept, review, or a blind audit sample (thresholds from calibration)."""
    c = get_ctx(ctx)
    ensure_db(c)
    run_one(lambda: route_step(c, spec), as_json, print_route)


@review_app.command("import")
def review_import(
    ctx: typer.Context,
    spec: SpecOpt,
    limit: Annotated[int | None, typer.Option(min=1, help="Import at most this many tasks.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import the spec's pending review tasks into its Label Studio project (created on first use)."""
    c = get_ctx(ctx)
    ensure_db(c)
    run_one(lambda: import_step(c, spec, limit=limit, show_progress=not as_json), as_json, print_import)


@review_app.command("sync")
def review_sync(
    ctx: typer.Context,
    spec: SpecOpt,
    detect_deleted: Annotated[bool, typer.Option(help="Notice tasks deleted in Label Studio.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Bring annotations made since the last sync back: correction log per field, curated records."""
    c = get_ctx(ctx)
    ensure_db(c)
    run_one(lambda: sync_step(c, spec, detect_deleted=detect_deleted, show_progress=not as_json), as_json, print_sync)
