"""`labelloop db` and `labelloop config`: schema maintenance and the settings in effect."""

from __future__ import annotations

import json

import typer

from labelloop.cli.app import app, get_ctx, out
from labelloop.config import iter_setting_docs

db_app = typer.Typer(help="Curation database maintenance.", no_args_is_help=True)
config_app = typer.Typer(help="Show the settings in effect.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")


# --------------------------------------------------------------------------- db


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: str = typer.Option("head", help="Target revision.")) -> None:
    """Create or migrate the curation database schema (safe to run repeatedly)."""
    from labelloop.db.migrate import current_revision

    c = get_ctx(ctx)
    c.db.upgrade(revision)
    out.print(f"curation database {c.settings.db.url_redacted} at revision {current_revision(c.db.engine)}")


# --------------------------------------------------------------------------- config


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the settings in effect as JSON (secrets masked)."""
    out.print_json(json.dumps(get_ctx(ctx).settings.redacted(), default=str))


@config_app.command("docs")
def config_docs() -> None:
    """Print every setting as a Markdown table (docs/configuration.md is made with this)."""
    typer.echo(settings_markdown())


def settings_markdown() -> str:
    lines = ["| Environment variable | Default | Meaning |", "|---|---|---|"]
    for env, default, desc in iter_setting_docs():
        lines.append(f"| `{env}` | `{default}` | {desc.replace('|', '/')} |")
    return "\n".join(lines)
