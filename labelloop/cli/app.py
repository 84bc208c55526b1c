"""The root `labelloop` Typer app and the per-invocation context every command module shares.

Each command group lives in its own module under `labelloop/cli/` and registers itself on `app`
when `labelloop.cli` imports it, so adding a command means adding a module, not growing one file.
"""

from __future__ import annotations

import logging
import os
from enum import IntEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from labelloop.config import CONFIG_FILE_ENV, Settings

app = typer.Typer(
    help="labelloop: ingest images, documents and videos, pre-label them, review in Label Studio, export datasets.\n\n"
    "Start with `labelloop db upgrade`, then `labelloop ingest FOLDER` and `labelloop status`.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

#: progress and errors go to stderr so that `--json` output on stdout stays machine-readable
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)  # stdout lines (paths, URLs) must stay whole when piped


class ExitCode(IntEnum):
    """Exit codes with a meaning scripts can rely on."""

    OK = 0
    ERROR = 1
    USAGE = 2
    DRIFT = 3
    GATE_FAILED = 4


class Context:
    """What every command needs, built once per invocation (no module-level state)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._db = None
        self._store = None
        self._registry = None

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

    @property
    def registry(self):  # type: ignore[no-untyped-def]
        """The shipped specs plus those in ``LABELLOOP_SPECS__DIRS``; a broken spec folder is a usage error."""
        if self._registry is None:
            from labelloop.specs import SpecError, SpecRegistry

            try:
                self._registry = SpecRegistry.from_settings(self.settings)
            except SpecError as e:
                fail(ExitCode.USAGE, str(e))
        return self._registry

    def spec(self, name: str):  # type: ignore[no-untyped-def]
        """The named spec, or exit 2 listing the known ones."""
        from labelloop.specs import SpecError

        try:
            return self.registry.get(name)
        except SpecError as e:
            fail(ExitCode.USAGE, str(e))


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


class StepFailed(Exception):
    """A step could not do its work; ``code`` is the exit code it means (see :class:`ExitCode`)."""

    def __init__(self, code: ExitCode, message: str, result: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.result = result or {}


def fail(code: ExitCode, message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(int(code))


def get_ctx(ctx: typer.Context) -> Context:
    return ctx.obj  # type: ignore[no-any-return]


def ensure_db(c: Context) -> None:
    from labelloop.db.migrate import current_revision

    if current_revision(c.db.engine) is None:
        console.print("[yellow]curation database is empty: applying migrations[/yellow]")
        c.db.upgrade()
