"""`labelloop eval`: score backends, an ensemble, or two model versions against reviewed records."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from labelloop.cli.app import ExitCode, app, console, ensure_db, get_ctx, out


def _target(text: str) -> tuple[str, str | None]:
    backend, _, version = text.partition("@")
    return backend, (version or None)


@app.command("eval")
def eval_command(
    ctx: typer.Context,
    spec: Annotated[str, typer.Argument(help="Task spec whose human-reviewed records are the truth.")],
    backends: Annotated[
        list[str],
        typer.Option(
            "--backend",
            "-b",
            help="backend, or backend@model_version, to score (repeatable; e.g. plate, ensemble, vllm@qwen-ft-2). "
            "With two, they are compared on the items both predicted.",
        ),
    ],
    report: Annotated[bool, typer.Option(help="Write report.json and PNG plots to reports/eval/.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Per-field accuracy, coverage and error at the calibrated threshold, confusion tables, A/B comparison."""
    from labelloop.evaluation.run import run_eval
    from labelloop.specs import SpecRegistry
    from labelloop.specs.registry import SpecError

    c = get_ctx(ctx)
    ensure_db(c)
    try:
        task_spec = SpecRegistry().get(spec)
        result = run_eval(
            c.db, c.store if report else None, task_spec, [_target(b) for b in backends], c.settings.routing
        )
    except (SpecError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(ExitCode.USAGE) from e
    if as_json:
        out.print_json(json.dumps(result.as_dict(), ensure_ascii=False))
        return
    for sc in result.scores:
        table = Table(title=f"{sc.label} on {sc.n_items} reviewed {spec} items")
        for col in ("field", "accuracy", "coverage@t", "error@t", "error 95% upper", "threshold"):
            table.add_column(col)
        for name, fs in sc.fields.items():
            d = fs.as_dict()

            def pct(v: float | None) -> str:
                return "-" if v is None else f"{v:.1%}"

            table.add_row(
                name,
                pct(d["accuracy"]),
                pct(d["coverage"]),
                pct(d["error_at_threshold"]),
                pct(d["error_upper_95"]),
                ",".join(f"{t:g}" for t in d["thresholds"]) or "full review",
            )
        out.print(table)
        for name, fs in sc.fields.items():
            if fs.confusion:
                ct = Table(title=f"{sc.label}: {name} (rows reviewed, columns predicted)")
                cols = sorted({p for row in fs.confusion.values() for p in row})
                ct.add_column("reviewed")
                for col in cols:
                    ct.add_column(col)
                for h, row in sorted(fs.confusion.items()):
                    ct.add_row(h, *[str(row.get(col, 0)) for col in cols])
                out.print(ct)
    if result.comparison:
        cmp = result.comparison
        table = Table(title=f"{cmp['a']} vs {cmp['b']} on {cmp['n_common']} common items (exact McNemar)")
        for col in ("field", "acc A", "acc B", "A right B wrong", "B right A wrong", "p", "better"):
            table.add_column(col)
        for name, f in cmp["fields"].items():
            acc = [("-" if v is None else f"{v:.1%}") for v in (f["accuracy_a"], f["accuracy_b"])]
            table.add_row(
                name,
                *acc,
                str(f["a_right_b_wrong"]),
                str(f["b_right_a_wrong"]),
                f"{f['p_value']:.3g}",
                f["better"] or "no significant difference",
            )
        out.print(table)
    if result.keys:
        out.print(f"report: {c.store.uri(result.keys['json'])}")
