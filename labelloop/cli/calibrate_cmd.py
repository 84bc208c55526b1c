"""`labelloop calibrate` and `labelloop thresholds`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from labelloop.cli.app import Context, app, console, ensure_db, get_ctx, out

# --------------------------------------------------------------------------- calibration


corrections_app = typer.Typer(help="The correction log: per reviewed field, model vs reviewer.", no_args_is_help=True)
app.add_typer(corrections_app, name="corrections")


@corrections_app.command("export")
def corrections_export(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="JSONL file to write, one object per reviewed field.")],
    spec: Annotated[str | None, typer.Option(help="Only this spec.")] = None,
) -> None:
    """Write the correction log with each row's sampling design (route, inclusion_prob)."""
    from labelloop.calibration.offline import export_rows, write_log

    c = get_ctx(ctx)
    ensure_db(c)
    n = write_log(export_rows(c.db, spec), file)
    out.print(f"{n} reviewed fields written to {file}")


@app.command()
def calibrate(
    ctx: typer.Context,
    report: Annotated[bool, typer.Option(help="Write the HTML/PNG report to reports/calibration/.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    from_log: Annotated[
        Path | None, typer.Option("--from-log", help="Calibrate from an exported log; touches no database.")
    ] = None,
    target: Annotated[float | None, typer.Option(help="Target error (default: settings).")] = None,
    level: Annotated[float | None, typer.Option(help="Confidence level 1 - delta (default: settings).")] = None,
    per_field: Annotated[bool, typer.Option("--per-field", help="Hold the target per field, not per record.")] = False,
) -> None:
    """Certify auto-accept thresholds from the correction log (exit 3 on audit drift).

    By default the statement is on records: at most TARGET of auto-accepted records have any field a
    reviewer would change, with confidence LEVEL."""
    from labelloop.calibration import DriftDetected
    from labelloop.calibration import calibrate as run_calibrate
    from labelloop.calibration.report import write_report

    c = get_ctx(ctx)
    if from_log is not None:
        from labelloop.calibration.offline import calibrate_rows, read_log

        cal = c.settings.calibration
        try:
            rows = read_log(from_log)
            doc, certs = calibrate_rows(
                rows,
                target=target if target is not None else cal.target_error,
                level=level if level is not None else cal.confidence_level,
                per_field=per_field or cal.per_field,
                min_samples=cal.min_samples,
                method=cal.bound,
            )
        except (OSError, ValueError) as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from e
        if as_json:
            out.print_json(json.dumps(doc))
        else:
            for t in doc["thresholds"]:
                thr = "full review" if t["threshold"] is None else f"{t['threshold']:.4f}"
                out.print(f"{t['spec']}.{t['field']} [{t['model_key']}]: {thr} (n={t['n']}, {t['method']})")
            from labelloop.calibration.statement import build_statements

            pf = per_field or cal.per_field
            for st in build_statements(
                rows,
                certs,
                target=target if target is not None else cal.target_error,
                level=level if level is not None else cal.confidence_level,
                per_field=pf,
                min_samples=cal.min_samples,
            ):
                _print_statement(st, None, live_known=False)
        return

    c = get_ctx(ctx)
    ensure_db(c)
    try:
        result = run_calibrate(c.db, c.settings.calibration, raise_on_drift=False)
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    from labelloop.calibration.overview import calibration_overview, describe
    from labelloop.calibration.report import time_saved

    overview = calibration_overview(c.db, c.settings.calibration, c.settings.routing)
    key = (
        write_report(c.db, c.store, result, c.settings.calibration.target_error, overview=overview) if report else None
    )
    if as_json:
        out.print_json(json.dumps({**result.as_dict(), "overview": overview, "report": key}, default=str))
    else:
        _print_thresholds(c)
        saved = time_saved(c.db)
        for st in result.statements:
            _print_statement(st, saved.get(st.spec, {}).get("mean_lead_time_s") or None)
        for row in overview["keys"]:
            if row["uncalibrated"]:
                out.print(f"[bold]{row['spec']} [{row['model_key']}][/bold]: {describe(row)}")
        if key:
            out.print(f"report: {c.store.uri(key)}")
    if result.drift:
        console.print(f"[red]{DriftDetected(result.drift)}[/red]")
        raise typer.Exit(3)


@app.command()
def thresholds(ctx: typer.Context) -> None:
    """Print the current auto-accept thresholds and the evidence behind them."""
    c = get_ctx(ctx)
    ensure_db(c)
    _print_thresholds(c)


def _print_statement(st: Any, review_s: float | None, live_known: bool = True) -> None:
    """The plain-words statement of one key (labelloop.calibration.statement)."""
    out.print(f"\n[bold]{st.title}[/bold]")
    for line in st.lines(review_s, live_known=live_known):
        out.print(f"  {line}", markup=False)


def _print_thresholds(c: Context) -> None:
    from labelloop.calibration import current_thresholds

    with c.db.session() as s:
        rows = sorted(current_thresholds(s).values(), key=lambda t: (t.spec, t.field, t.model, t.model_version))
    table = Table(title="auto-accept thresholds (newest version per field)")
    for col in ("spec.field", "model", "version", "threshold", "upper bound", "n", "target", "why"):
        table.add_column(col)
    for t in rows:
        table.add_row(
            f"{t.spec}.{t.field}",
            f"{t.model} {t.model_version} #{t.prompt_hash[:8]}",
            str(t.version),
            "full review" if t.threshold is None else f"{t.threshold:.4f}",
            "-" if t.upper_bound is None else f"{t.upper_bound:.4f}",
            str(t.n_samples),
            f"{t.target_error:.3f}",
            t.reason,
        )
    if not rows:
        out.print(f"no calibrated thresholds yet: every field uses the default {c.settings.routing.default_threshold}")
    else:
        out.print(table)
