"""`labelloop ingest`: register files by content, with a progress bar."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from labelloop.cli.app import Context, ExitCode, StepFailed, app, console, ensure_db, get_ctx, out

# --------------------------------------------------------------------------- ingest


def ingest_step(c: Context, source: str, *, limit: int | None = None, show_progress: bool = True) -> dict[str, Any]:
    """The same ``labelloop.ingest.ingest`` the Airflow ingest task runs; a missing source is exit 2."""
    from labelloop.ingest import IngestError, open_source
    from labelloop.ingest import ingest as run_ingest
    from labelloop.ingest.sources import SourceError

    try:
        src = open_source(source, c.settings.storage, c.settings.ingest.follow_symlinks)
    except (FileNotFoundError, ValueError) as e:
        raise StepFailed(ExitCode.USAGE, str(e)) from e
    except SourceError as e:  # the S3 server cannot be reached: an error, not bad usage
        raise StepFailed(ExitCode.ERROR, str(e)) from e
    ensure_db(c)
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]ingest[/bold] {task.fields[name]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "new {task.fields[new]} known {task.fields[known]} rejected {task.fields[rej]} skipped {task.fields[skip]}"
        ),
        TimeElapsedColumn(),
        console=console,
        transient=not show_progress,
        disable=not show_progress,
    ) as bar:
        task = bar.add_task("ingest", total=limit, name="", new=0, known=0, rej=0, skip=0)
        counts = {"new": 0, "known": 0, "rej": 0, "skip": 0}

        def progress(f: Any, outcome: str) -> None:
            kind = outcome.split(":", 1)[0]
            counts[{"rejected": "rej", "skipped": "skip"}.get(kind, kind)] += 1
            # skipped entries (hidden names, unfollowed links) are not files of the run
            bar.update(task, advance=0 if kind == "skipped" else 1, name=f.uri.rsplit("/", 1)[-1][:40], **counts)

        try:
            stats = run_ingest(c.db, c.store, c.settings, src, limit=limit, progress=progress)
        except (SourceError, IngestError) as e:  # committed batches stay; a rerun goes on from there
            raise StepFailed(ExitCode.ERROR, str(e)) from e
    return stats.as_dict()


@app.command()
def ingest(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="A folder, a file, or s3://bucket/prefix.")],
    limit: Annotated[int | None, typer.Option(help="Stop after this many files.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Register images, documents (PDF, office) and videos by content (sha256); bad files are recorded with a reason."""
    c = get_ctx(ctx)
    try:
        stats = ingest_step(c, source, limit=limit, show_progress=not as_json)
    except StepFailed as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(int(e.code)) from e
    if as_json:
        out.print_json(json.dumps(stats))
        return
    print_ingest(stats)


def print_ingest(stats: dict[str, Any]) -> None:
    out.print(
        f"{stats['seen']} files from {stats['source']}: {stats['new_items']} new items, {stats['known']} already "
        f"known ({stats['new_aliases']} new names), {stats['rejected']} rejected, in {stats['seconds']:.1f}s"
    )
    if stats.get("unchanged"):
        out.print(f"  unchanged since the last ingest (not read): {stats['unchanged']}")
    for reason, n in sorted(stats["reject_reasons"].items()):
        out.print(f"  rejected {reason}: {n}")
    if stats.get("skipped"):
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(stats["skipped_reasons"].items()))
        out.print(f"  skipped (not files of the run): {stats['skipped']} ({why})")
        names = stats.get("skipped_names") or []
        for name in names:
            out.print(f"    {name}", markup=False, highlight=False)
        if stats["skipped"] > len(names):
            out.print(f"    ... and {stats['skipped'] - len(names)} more")
