"""`labelloop prelabel`: run one backend over the items of a spec that lack its prediction."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from labelloop.cli.app import Context, ExitCode, StepFailed, app, console, ensure_db, get_ctx, out


def prelabel_step(
    c: Context,
    spec_name: str,
    backend: str,
    *,
    limit: int | None = None,
    retry_failed: bool = False,
    concurrency: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """The same runner as ``PrelabelOperator``; bad items become failed predictions, not errors."""
    from labelloop.prelabel.factory import default_concurrency, make_backend
    from labelloop.prelabel.plan import resolve_backend_name
    from labelloop.prelabel.retry import reset_failed
    from labelloop.prelabel.runner import count_pending, run_prelabel

    spec = c.spec(spec_name)
    try:
        name = resolve_backend_name(spec, backend)
        be = make_backend(name, c.settings, c.store)
    except ValueError as e:
        raise StepFailed(ExitCode.USAGE, str(e)) from e
    retried = reset_failed(c.db, spec, be) if retry_failed else {}
    pending = count_pending(c.db, spec, be)
    total = pending if limit is None else min(limit, pending)

    async def go() -> Any:
        with Progress(
            SpinnerColumn(),
            TextColumn(f"[bold]prelabel[/bold] {spec.name} with {name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("ok {task.fields[ok]} failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not show_progress,
        ) as bar:
            task = bar.add_task("prelabel", total=total, ok=0, failed=0)
            counts = {"ok": 0, "failed": 0}

            def progress(_item_id: int, res: Any) -> None:
                counts["ok" if res.status == "ok" else "failed"] += 1
                bar.update(task, advance=1, **counts)

            try:
                return await run_prelabel(
                    c.db,
                    c.store,
                    spec,
                    be,
                    limit=limit,
                    concurrency=concurrency or default_concurrency(name, c.settings),
                    progress=progress,
                )
            finally:
                await be.aclose()  # in the loop that opened its connections

    stats = asyncio.run(go())
    return {**stats.as_dict(), "backend": name, "retried": retried}


@app.command()
def prelabel(
    ctx: typer.Context,
    spec: Annotated[str, typer.Option("--spec", "-s", help="Task spec (see `labelloop spec list`).")],
    backend: Annotated[
        str,
        typer.Option(
            "--backend", "-b", help="cpu (the offline backend for the spec's media), vllm, rapidocr, pymupdf or mineru."
        ),
    ] = "cpu",
    source: Annotated[str | None, typer.Option(help="Ingest this folder / s3:// prefix first.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Pre-label at most this many items.")] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Predict again the items whose prediction failed (not yet routed).")
    ] = False,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Predictions in flight (default per backend).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Pre-label the items of a spec that lack this backend's prediction (reruns do only what is missing)."""
    from labelloop.cli.ingest_cmd import ingest_step

    c = get_ctx(ctx)
    ensure_db(c)
    result: dict[str, Any] = {}
    try:
        if source:
            result["ingest"] = ingest_step(c, source, show_progress=not as_json)
        result["prelabel"] = prelabel_step(
            c, spec, backend, limit=limit, retry_failed=retry_failed, concurrency=concurrency, show_progress=not as_json
        )
    except StepFailed as e:
        console.print(f"[red]error:[/red] {e}")
        if as_json:
            out.print_json(json.dumps({**result, "error": str(e)}))
        raise typer.Exit(int(e.code)) from e
    if as_json:
        out.print_json(json.dumps(result if source else result["prelabel"]))
        return
    print_prelabel(result["prelabel"])


def print_prelabel(p: dict[str, Any]) -> None:
    out.print(
        f"{p['spec']} with {p['backend']} ({p['model']} {p['model_version']}): {p['considered']} items, "
        f"{p['ok']} ok, {p['failed']} failed, {p['already_done']} done meanwhile by another run, in {p['seconds']:.1f}s"
    )
    for reason, n in sorted(p.get("retried", {}).items()):
        out.print(f"  retried {n} earlier failures: {reason}")
    for f in p["failures"][:10]:
        out.print(f"  item {f['item_id']} failed: {f['reason']}")
