"""`labelloop spec list|check|new`: a team's own task specs, outside the package.

Specs live in the folders named by ``LABELLOOP_SPECS__DIRS`` (each holds ``NAME.yaml`` and the label
config it names); `spec new` writes a working skeleton there, `spec check` says what is wrong with one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml
from rich.table import Table

from labelloop.cli.app import ExitCode, app, console, fail, get_ctx, out

spec_app = typer.Typer(help="Task specs: list them, check one, start a new one.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print as JSON.")]

#: what a new spec starts from: a shipped spec that the offline CPU backends pre-label
SKELETON_BASE = {"image": "ocr_lines", "document": "document_layout"}

SKELETON_EXAMPLE: dict[str, dict[str, Any]] = {
    "image": {"lines": [{"bbox": [12, 20, 220, 48], "text": "TOTAL 12.50"}]},
    "document": {
        "pages": [
            {
                "page": 0,
                "width_pt": 595.0,
                "height_pt": 842.0,
                "dpi": 144,
                "width_px": 1190,
                "height_px": 1684,
                "image_key": "pages/" + "ab" * 32 + "/0.png",
                "blocks": [
                    {
                        "type": "title",
                        "bbox": [100, 80, 900, 140],
                        "content": "Annual report",
                        "score": 0.98,
                        "source": "text_layer",
                    },
                    {
                        "type": "text",
                        "bbox": [100, 160, 1000, 400],
                        "content": "Revenue grew.",
                        "score": 0.95,
                        "source": "text_layer",
                    },
                ],
            }
        ],
        "markdown": "# Annual report\n\nRevenue grew.",
    },
}


@spec_app.command("list")
def spec_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every spec this deployment knows: shipped ones and those in LABELLOOP_SPECS__DIRS."""
    c = get_ctx(ctx)
    reg = c.registry
    rows = [
        {
            "name": s.name,
            "media": s.media,
            "version": s.version,
            "fields": list(s.fields),
            "origin": "shipped" if reg.is_shipped(s) else "user",
            "path": str(s.source_path),
            "description": s.description,
        }
        for s in reg
    ]
    rows.sort(key=lambda r: r["name"])
    if as_json:
        out.print_json(json.dumps({"dirs": [str(d) for d in reg.dirs], "specs": rows}))
        return
    table = Table(title="task specs")
    for col in ("name", "media", "fields", "origin", "path"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["media"], ", ".join(r["fields"]), r["origin"], r["path"])
    out.print(table)
    if not reg.dirs:
        out.print("no spec folders configured: set LABELLOOP_SPECS__DIRS to add your own (`labelloop spec new`)")


@spec_app.command("check")
def spec_check(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The spec's YAML file.", exists=True, dir_okay=False)],
    as_json: JsonOpt = False,
) -> None:
    """Check a spec: schema, label config (Label Studio's parser), field names, export template, comparisons."""
    from labelloop.specs.check import check_spec_file
    from labelloop.specs.registry import shipped_dir

    result = check_spec_file(file, fallback_label_dir=shipped_dir() / "label_config")
    if as_json:
        out.print_json(json.dumps(result.as_dict()))
    else:
        for line in result.passed:
            out.print(f"[green]ok[/green]      {line}")
        for line in result.warnings:
            out.print(f"[yellow]warning[/yellow] {line}")
        for line in result.problems:
            out.print(f"[red]problem[/red] {line}")
    if not result.ok:
        raise typer.Exit(int(ExitCode.ERROR))


@spec_app.command("new")
def spec_new(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Spec name: lower case, digits and _ (also the file name).")],
    media: Annotated[Literal["image", "document"], typer.Option(help="What the spec labels.")] = "image",
    folder: Annotated[
        Path | None, typer.Option("--dir", help="Where to write (default: the first LABELLOOP_SPECS__DIRS folder).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
) -> None:
    """Write a working skeleton spec (NAME.yaml + NAME.xml) that the offline backends pre-label as it is."""
    import re

    from labelloop.specs.check import check_spec_file
    from labelloop.specs.registry import SpecRegistry

    c = get_ctx(ctx)
    if not re.fullmatch(r"[a-z][a-z0-9_]{1,62}", name):
        fail(ExitCode.USAGE, f"spec name {name!r}: use 2-63 lower-case letters, digits and _ (starting with a letter)")
    folder = folder or (c.settings.specs.dirs[0] if c.settings.specs.dirs else None)
    if folder is None:
        fail(ExitCode.USAGE, "no folder: pass --dir or set LABELLOOP_SPECS__DIRS")
    shipped = SpecRegistry()
    base = shipped.get(SKELETON_BASE[media])
    yaml_path, xml_path = folder / f"{name}.yaml", folder / f"{name}.xml"
    for p in (yaml_path, xml_path):
        if p.exists() and not force:
            fail(ExitCode.USAGE, f"{p} exists (use --force to overwrite)")
    data = base.model_dump(mode="json", exclude={"source_path"})
    data.update(
        name=name,
        version=1,
        description=f"TODO: what {name} labels, for annotators (shown as the Label Studio project's instructions).",
        label_config=xml_path.name,
        example=SKELETON_EXAMPLE[media],
    )
    folder.mkdir(parents=True, exist_ok=True)
    header = (
        f"# {name}: started from the shipped spec {base.name} by `labelloop spec new`.\n"
        "# Edit the prompt, json_schema, fields and label config together; `labelloop spec check` tells\n"
        "# what no longer fits. Format: labelloop/specs/model.py.\n"
    )
    yaml_path.write_text(header + yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    xml_path.write_text(shipped.label_config(base), encoding="utf-8")
    result = check_spec_file(yaml_path)
    if not result.ok:  # the skeleton must work as written; if it does not, that is our bug
        fail(ExitCode.ERROR, f"skeleton {yaml_path} does not pass its own check: {result.problems}")
    out.print(f"wrote {yaml_path} and {xml_path}")
    if folder not in c.settings.specs.dirs:
        console.print(f"[yellow]add {folder} to LABELLOOP_SPECS__DIRS so labelloop finds the spec[/yellow]")
