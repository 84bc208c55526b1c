"""`labelloop validate` and `labelloop export`: the same core functions as the export DAG's tasks.

Exit codes: 4 when the quality gate fails (retrying cannot fix data), 1 when the export breaks.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from labelloop.cli.app import Context, ExitCode, StepFailed, app, console, ensure_db, get_ctx, out
from labelloop.cli.review_cmd import JsonOpt, SpecOpt, run_one

MaxFailedOpt = Annotated[
    float | None,
    typer.Option(min=0, max=1, help="Allowed share of failed records (default: export.max_failed_share)."),
]


def validate_step(
    c: Context, spec_name: str, *, max_failed_share: float | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Validate, then apply the gate: a failed gate is :class:`StepFailed` with exit code 4."""
    from labelloop.validation import QualityGateError, check_gate, validate_spec

    spec = c.spec(spec_name)
    with console.status(f"[bold]validate {spec.name}[/bold]") if show_progress else _null():
        summary = validate_spec(c.db, c.store, c.settings, spec, max_failed_share=max_failed_share).as_dict()
    summary["report_uri"] = c.store.uri(summary["report_key"])
    try:
        check_gate(summary)
    except QualityGateError as e:
        raise StepFailed(ExitCode.GATE_FAILED, str(e), summary) from e
    return summary


def export_step(
    c: Context, spec_name: str, *, validation_run_id: int | None = None, threads: int = 16, show_progress: bool = True
) -> dict[str, Any]:
    from labelloop.export import ExportCheckError, ExportError, export_dataset

    spec = c.spec(spec_name)
    try:
        with console.status(f"[bold]export {spec.name}[/bold]") if show_progress else _null():
            result = export_dataset(
                c.db, c.store, c.settings, spec, validation_run_id=validation_run_id, threads=threads
            )
    except (ExportCheckError, ExportError) as e:
        raise StepFailed(ExitCode.ERROR, f"export {spec.name}: {e}") from e
    return result.as_dict()


def _null() -> Any:
    from contextlib import nullcontext

    return nullcontext()


def print_validate(s: dict[str, Any]) -> None:
    out.print(
        f"validated {s['spec']}: {s['n_records']} records, {s['n_failed']} failed ({s['failed_share']:.2%}, "
        f"allowed {s['max_failed_share']:.2%}), gate {'passed' if s['passed_gate'] else 'FAILED'}; "
        f"run {s['validation_run_id']}, report {s['report_uri']}"
    )
    for check, n in sorted(s.get("failed_checks", {}).items()):
        out.print(f"  {check}: {n}")


def print_export(r: dict[str, Any]) -> None:
    if r["created"]:
        out.print(f"published {r['spec']} {r['version']} at {r['uri']}: {r['counts']}")
    elif r["version"]:
        out.print(f"{r['spec']}: unchanged, {r['reason']} ({r['version']} at {r['uri']})")
    else:
        out.print(f"{r['spec']}: nothing exported: {r['reason']}")


@app.command()
def validate(
    ctx: typer.Context, spec: SpecOpt, max_failed_share: MaxFailedOpt = None, as_json: JsonOpt = False
) -> None:
    """Validate every record of a spec with Great Expectations; failures are quarantined (exit 4 on a failed gate)."""
    c = get_ctx(ctx)
    ensure_db(c)
    run_one(
        lambda: validate_step(c, spec, max_failed_share=max_failed_share, show_progress=not as_json),
        as_json,
        print_validate,
    )


@app.command()
def export(
    ctx: typer.Context,
    spec: SpecOpt,
    validation_run: Annotated[
        int | None, typer.Option(help="Export from this validation run instead of validating now.")
    ] = None,
    max_failed_share: MaxFailedOpt = None,
    threads: Annotated[
        int,
        typer.Option(
            min=1,
            help="Threads per export process for image copies on S3 (a local store links inline; "
            "processes: export.workers).",
        ),
    ] = 16,
    as_json: JsonOpt = False,
) -> None:
    """Validate, check the quality gate, and publish an immutable dataset version (only when the records changed)."""
    c = get_ctx(ctx)
    ensure_db(c)

    def step() -> dict[str, Any]:
        run_id = validation_run
        result: dict[str, Any] = {}
        if run_id is None:
            result["validation"] = validate_step(c, spec, max_failed_share=max_failed_share, show_progress=not as_json)
            run_id = result["validation"]["validation_run_id"]
        result["export"] = export_step(c, spec, validation_run_id=run_id, threads=threads, show_progress=not as_json)
        return result

    def show(r: dict[str, Any]) -> None:
        if "validation" in r:
            print_validate(r["validation"])
        print_export(r["export"])

    run_one(step, as_json, show)
