"""Start training on a registered version and record the launch and its outcome.

Launchers (``settings.training.launcher``):

* ``subprocess`` (default): ``settings.training.command`` run in the version's run folder. The
  command is a template: it is split like a shell command first, then each word gets the fields
  below, so paths with spaces stay one argument. The default runs
  :mod:`labelloop.training.check_dataset` (loads the dataset as the trainer would; no GPU needed).
  Production: the qwen-vl-finetune ``torchrun`` command (see the package docstring).
* ``http``: POST the registration to ``settings.training.webhook_url`` (a CI job, a training
  service); 2xx means "submitted", the training itself is tracked elsewhere.
* ``kubernetes``: not launched from here; use Airflow's ``KubernetesPodOperator`` in the DAG.

Fields: {annotation_path} {val_annotation_path} {data_path} {dataset_use} {dataset_name}
{registration} {output_dir} {min_pixels} {max_pixels} {spec} {version} {run_dir}.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from labelloop.config import Settings
from labelloop.db import Database, TrainingRun
from labelloop.db.types import utcnow
from labelloop.training.registration import Registration

LOG_TAIL = 4000


class LaunchError(RuntimeError):
    pass


@dataclass
class LaunchResult:
    training_run_id: int
    status: str  # "succeeded" | "failed" | "submitted"
    return_code: int | None
    command: str
    log_path: str | None
    log_tail: str

    @property
    def ok(self) -> bool:
        return self.status in ("succeeded", "submitted")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def command_fields(reg: Registration) -> dict[str, str]:
    return {
        "annotation_path": reg.annotation_path,
        "val_annotation_path": reg.val_annotation_path,
        "data_path": reg.data_path,
        "dataset_use": reg.dataset_use,
        "dataset_name": reg.name,
        "registration": reg.registration_path,
        "output_dir": str(Path(reg.run_dir) / "output"),
        "min_pixels": str(reg.min_pixels),
        "max_pixels": str(reg.max_pixels),
        "spec": reg.spec,
        "version": reg.version,
        "run_dir": reg.run_dir,
    }


def render_command(template: str, reg: Registration) -> list[str]:
    """Split the template like a shell would, then fill each word (no shell ever runs it)."""
    fields = command_fields(reg)
    try:
        return [word.format(**fields) for word in shlex.split(template)]
    except KeyError as e:
        known = ", ".join(sorted(fields))
        raise LaunchError(f"unknown field {e} in training command; known: {known}") from None


def _run_subprocess(argv: list[str], reg: Registration) -> tuple[int, str, str]:
    log_path = Path(reg.run_dir) / "train.log"
    env = dict(os.environ)
    # "python", "torchrun" ... of the environment labelloop runs in come first on PATH
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    with log_path.open("wb") as log:
        proc = subprocess.run(
            argv,
            cwd=reg.run_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    data = log_path.read_bytes()
    return proc.returncode, data[-LOG_TAIL:].decode("utf-8", "replace"), str(log_path)


def _post_webhook(url: str, reg: Registration, summary: dict[str, Any]) -> tuple[int, str]:
    import httpx

    resp = httpx.post(url, json={"registration": reg.as_dict(), "dataset": summary}, timeout=30.0)
    return resp.status_code, resp.text[-LOG_TAIL:]


def launch_training(
    db: Database,
    settings: Settings,
    reg: Registration,
    *,
    summary: dict[str, Any] | None = None,
    airflow_run_id: str | None = None,
) -> LaunchResult:
    """Record a ``training_runs`` row, launch, and record the outcome (never raises on failure)."""
    launcher = settings.training.launcher
    if launcher == "subprocess":
        argv = render_command(settings.training.command, reg)
        shown = shlex.join(argv)
    elif launcher == "http":
        if not settings.training.webhook_url:
            raise LaunchError("launcher=http needs settings.training.webhook_url")
        shown = f"POST {settings.training.webhook_url}"
    else:
        raise LaunchError(
            f"launcher={launcher!r} is not started by labelloop: run the trainer image with Airflow's "
            "KubernetesPodOperator, passing the registration (see labelloop.training)"
        )
    with db.transaction() as s:
        row = TrainingRun(
            dataset_version_id=reg.dataset_version_id,
            dataset_uri=reg.uri,
            launcher=launcher,
            command=shown,
            status="running",
            airflow_run_id=airflow_run_id,
        )
        s.add(row)
        s.flush()
        run_id = row.id
    log_path: str | None = None
    try:
        if launcher == "subprocess":
            rc, tail, log_path = _run_subprocess(argv, reg)
            status = "succeeded" if rc == 0 else "failed"
        else:
            rc, tail = _post_webhook(settings.training.webhook_url or "", reg, summary or {})
            status = "submitted" if 200 <= rc < 300 else "failed"
    except Exception as e:  # launcher broke (command not found, webhook down): a failed run
        rc, tail, status = None, f"{type(e).__name__}: {e}", "failed"
    with db.transaction() as s:
        row = s.get(TrainingRun, run_id)
        assert row is not None
        row.status, row.return_code, row.log_tail, row.finished_at = status, rc, tail, utcnow()
    return LaunchResult(run_id, status, rc, shown, log_path, tail)
