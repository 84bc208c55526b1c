"""`labelloop run`: the nightly's steps in order on this machine, stopping at the first that fails.

ingest (when a source is given) -> pre-label -> sync reviews -> calibrate -> route -> import ->
validate -> quality gate -> export: the order of ``labelloop_nightly`` followed by
``labelloop_export``, calling the same core functions. The exit code is the failing step's
(1 error, 2 usage, 3 audit drift: routing is not run with suspect thresholds, 4 gate failed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer

from labelloop.cli.app import ExitCode, StepFailed, app, console, ensure_db, get_ctx, out
from labelloop.cli.review_cmd import JsonOpt, SpecOpt


@app.command()
def run(
    ctx: typer.Context,
    spec: SpecOpt,
    backend: Annotated[str, typer.Option("--backend", "-b", help="Pre-label backend (cpu, vllm, ...).")] = "cpu",
    source: Annotated[str | None, typer.Option(help="Ingest this folder / s3:// prefix first.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Pre-label at most this many items.")] = None,
    review: Annotated[
        bool, typer.Option(help="Sync from and import into Label Studio (--no-review: route and export only).")
    ] = True,
    do_export: Annotated[bool, typer.Option("--export/--no-export", help="Validate and export at the end.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole loop for one spec: ingest, pre-label, sync, calibrate, route, import, validate, export."""
    from labelloop.cli.dataset_cmd import export_step, print_export, print_validate, validate_step
    from labelloop.cli.ingest_cmd import ingest_step, print_ingest
    from labelloop.cli.prelabel_cmd import prelabel_step, print_prelabel
    from labelloop.cli.review_cmd import import_step, print_import, print_route, print_sync, route_step, sync_step

    c = get_ctx(ctx)
    ensure_db(c)
    c.spec(spec)  # an unknown spec is exit 2 before any work
    show = not as_json
    steps: list[tuple[str, Callable[[], dict[str, Any]], Callable[[dict[str, Any]], None]]] = []
    if source:
        steps.append(("ingest", lambda: ingest_step(c, source, show_progress=show), print_ingest))
    steps.append(("prelabel", lambda: prelabel_step(c, spec, backend, limit=limit, show_progress=show), print_prelabel))
    if review:
        steps.append(("sync", lambda: sync_step(c, spec, show_progress=show), print_sync))
    steps.append(("calibrate", lambda: _calibrate(c), _print_calibrate))
    steps.append(("route", lambda: route_step(c, spec), print_route))
    if review:
        steps.append(("import", lambda: import_step(c, spec, show_progress=show), print_import))
    if do_export:
        steps.append(("validate", lambda: validate_step(c, spec, show_progress=show), print_validate))
        steps.append(
            (
                "export",
                lambda: export_step(
                    c, spec, validation_run_id=results["validate"]["validation_run_id"], show_progress=show
                ),
                print_export,
            )
        )
    results: dict[str, Any] = {}
    for name, step, printer in steps:
        try:
            results[name] = step()
        except StepFailed as e:
            console.print(f"[red]step {name} failed:[/red] {e}")
            if e.result:
                results[name] = e.result
            if as_json:
                out.print_json(json.dumps({"steps": results, "failed_step": name, "error": str(e)}, default=str))
            raise typer.Exit(int(e.code)) from e
        if show:
            printer(results[name])
    if as_json:
        out.print_json(json.dumps({"steps": results}, default=str))


def _calibrate(c: Any) -> dict[str, Any]:
    """Refit thresholds from the correction log; audit drift stops the run before routing."""
    from labelloop.calibration import DriftDetected
    from labelloop.calibration import calibrate as run_calibrate

    try:
        result = run_calibrate(c.db, c.settings.calibration, raise_on_drift=False)
    except ValueError as e:
        raise StepFailed(ExitCode.USAGE, str(e)) from e
    summary = result.as_dict()
    if result.drift:
        raise StepFailed(ExitCode.DRIFT, str(DriftDetected(result.drift)), summary)
    return summary


def _print_calibrate(r: dict[str, Any]) -> None:
    fields = r.get("fields", [])
    out.print(f"calibrated {len(fields)} fields")
