"""The `labelloop` command line: the same operations the DAGs run, for people and scripts.

Configuration comes from LABELLOOP_* environment variables and an optional YAML file
(`--config` or LABELLOOP_CONFIG_FILE); `labelloop config show` prints what is in effect.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from labelloop.config import CONFIG_FILE_ENV, Settings, iter_setting_docs

app = typer.Typer(
    help="labelloop: ingest images and PDFs, pre-label them, review in Label Studio, export datasets.\n\n"
    "Start with `labelloop db upgrade`, then `labelloop ingest FOLDER` and `labelloop status`.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
db_app = typer.Typer(help="Curation database maintenance.", no_args_is_help=True)
config_app = typer.Typer(help="Show the settings in effect.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")

console = Console(stderr=True, soft_wrap=True)
out = Console()


class Context:
    """What every command needs, built once per invocation (no module-level state)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._db = None
        self._store = None

    @property
    def db(self):  # type: ignore[no-untyped-def]
        if self._db is None:
            from labelloop.db import Database

            self._db = Database(self.settings.db)
        return self._db

    @property
    def store(self):  # type: ignore[no-untyped-def]
        if self._store is None:
            from labelloop.storage import open_store

            self._store = open_store(self.settings.storage)
        return self._store


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML settings file.", exists=True, dir_okay=False)
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details to stderr.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if config is not None:
        os.environ[CONFIG_FILE_ENV] = str(config)
    try:
        ctx.obj = Context(Settings())
    except Exception as e:
        console.print(f"[red]invalid settings:[/red] {e}")
        raise typer.Exit(2) from e


def _ctx(ctx: typer.Context) -> Context:
    return ctx.obj  # type: ignore[no-any-return]


def _ensure_db(c: Context) -> None:
    from labelloop.db.migrate import current_revision

    if current_revision(c.db.engine) is None:
        console.print("[yellow]curation database is empty: applying migrations[/yellow]")
        c.db.upgrade()


# --------------------------------------------------------------------------- db


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: str = typer.Option("head", help="Target revision.")) -> None:
    """Create or migrate the curation database schema (safe to run repeatedly)."""
    from labelloop.config import redact_url
    from labelloop.db.migrate import current_revision

    c = _ctx(ctx)
    c.db.upgrade(revision)
    out.print(f"curation database {redact_url(c.settings.db.url)} at revision {current_revision(c.db.engine)}")


# --------------------------------------------------------------------------- config


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the settings in effect as JSON (secrets masked)."""
    out.print_json(json.dumps(_ctx(ctx).settings.redacted(), default=str))


@config_app.command("docs")
def config_docs() -> None:
    """Print every setting as a Markdown table (docs/configuration.md is made with this)."""
    typer.echo(settings_markdown())


def settings_markdown() -> str:
    lines = ["| Environment variable | Default | Meaning |", "|---|---|---|"]
    for env, default, desc in iter_setting_docs():
        lines.append(f"| `{env}` | `{default}` | {desc.replace('|', '/')} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- ingest


@app.command()
def ingest(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="A folder, a file, or s3://bucket/prefix.")],
    limit: Annotated[int | None, typer.Option(help="Stop after this many files.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Register images and PDFs by content (sha256); bad files are recorded with a reason."""
    from labelloop.ingest import ingest as run_ingest
    from labelloop.ingest import open_source

    c = _ctx(ctx)
    try:
        src = open_source(source, c.settings.storage, c.settings.ingest.follow_symlinks)
    except (FileNotFoundError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    _ensure_db(c)
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]ingest[/bold] {task.fields[name]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("new {task.fields[new]} known {task.fields[known]} rejected {task.fields[rej]}"),
        TimeElapsedColumn(),
        console=console,
        transient=as_json,
        disable=as_json,
    ) as bar:
        task = bar.add_task("ingest", total=limit, name="", new=0, known=0, rej=0)
        counts = {"new": 0, "known": 0, "rej": 0}

        def progress(f: Any, outcome: str) -> None:
            counts["rej" if outcome.startswith("rejected") else outcome] += 1
            bar.update(task, advance=1, name=f.uri.rsplit("/", 1)[-1][:40], **counts)

        stats = run_ingest(c.db, c.store, c.settings, src, limit=limit, progress=progress)
    if as_json:
        out.print_json(json.dumps(stats.as_dict()))
        return
    out.print(
        f"{stats.seen} files from {stats.source}: {stats.new_items} new items, {stats.known} already known "
        f"({stats.new_aliases} new names), {stats.rejected} rejected, in {stats.seconds:.1f}s"
    )
    for reason, n in sorted(stats.reject_reasons.items()):
        out.print(f"  rejected {reason}: {n}")


# --------------------------------------------------------------------------- status


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    rejects: Annotated[bool, typer.Option("--rejects", help="List rejected files with their reasons.")] = False,
) -> None:
    """Counts per pipeline stage and per reject reason."""
    from labelloop.status import pipeline_status

    c = _ctx(ctx)
    _ensure_db(c)
    st = pipeline_status(c.db)
    if rejects:
        st["reject_list"] = _reject_list(c)
    if as_json:
        out.print_json(json.dumps(st))
        return
    table = Table(title="labelloop status", show_header=True)
    table.add_column("stage")
    table.add_column("group")
    table.add_column("count", justify="right")
    for stage, value in st.items():
        if stage == "reject_list":
            continue
        if isinstance(value, dict):
            if not value:
                table.add_row(stage, "-", "0")
            for group, n in value.items():
                table.add_row(stage, group, str(n))
        else:
            table.add_row(stage, "", str(value))
    out.print(table)
    for row in st.get("reject_list", []):
        out.print(f"  {row['reason']:<20} {row['source_uri']}  ({row['detail']})")


def _reject_list(c: Context) -> list[dict[str, str]]:
    from sqlalchemy import select

    from labelloop.db import Item, Reject

    with c.db.session() as s:
        rows = s.scalars(select(Reject).where(~Reject.sha256.in_(select(Item.sha256))).order_by(Reject.source_uri))
        return [{"source_uri": r.source_uri, "reason": r.reason, "detail": r.detail} for r in rows]


# --------------------------------------------------------------------------- calibration


@app.command()
def calibrate(
    ctx: typer.Context,
    report: Annotated[bool, typer.Option(help="Write the HTML/PNG report to reports/calibration/.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Pick per-field auto-accept thresholds from the correction log (exit 3 on audit drift)."""
    from labelloop.calibration import DriftDetected
    from labelloop.calibration import calibrate as run_calibrate
    from labelloop.calibration.report import write_report

    c = _ctx(ctx)
    _ensure_db(c)
    try:
        result = run_calibrate(c.db, c.settings.calibration, raise_on_drift=False)
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    key = write_report(c.db, c.store, result, c.settings.calibration.target_error) if report else None
    if as_json:
        out.print_json(json.dumps({**result.as_dict(), "report": key}))
    else:
        _print_thresholds(c)
        if key:
            out.print(f"report: {c.store.uri(key)}")
    if result.drift:
        console.print(f"[red]{DriftDetected(result.drift)}[/red]")
        raise typer.Exit(3)


@app.command()
def thresholds(ctx: typer.Context) -> None:
    """Print the current auto-accept thresholds and the evidence behind them."""
    c = _ctx(ctx)
    _ensure_db(c)
    _print_thresholds(c)


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


if __name__ == "__main__":  # pragma: no cover
    app()
