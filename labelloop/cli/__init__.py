"""The `labelloop` command line: the same core functions the DAGs run, for people and scripts.

Configuration comes from LABELLOOP_* environment variables and an optional YAML file
(`--config` or LABELLOOP_CONFIG_FILE); `labelloop config show` prints what is in effect.
Every command module registers itself on the shared `app` when imported here.
"""

from labelloop.cli import (  # noqa: F401  (register commands)
    admin,
    calibrate_cmd,
    dataset_cmd,
    eval_cmd,
    ingest_cmd,
    prelabel_cmd,
    review_cmd,
    run_cmd,
    spec_cmd,
    status_cmd,
)
from labelloop.cli.admin import settings_markdown
from labelloop.cli.app import ExitCode, app

__all__ = ["ExitCode", "app", "settings_markdown"]
