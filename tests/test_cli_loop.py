"""The whole loop with the CLI alone: ingest -> prelabel (CPU backends) -> route -> import into a
real Label Studio -> annotations through its API -> sync -> validate -> export, checking
`labelloop status --json` after each step; plus the offline path (no Label Studio) and exit codes."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from labelloop.cli import app
from labelloop.config import DatabaseSettings
from labelloop.db import Database, Prediction

pytest_plugins = ["fixtures_labelstudio"]

IMAGES = ["qwen-ocr_example2.jpg", "qwen-ocr_example4.jpg", "qwen-multiple_items.png"]


def _images(sample_data: Path, dest: Path) -> Path:
    """Three small sample images (RapidOCR on two shared cores: keep the loop quick)."""
    dest.mkdir(parents=True)
    for name in IMAGES:
        shutil.copy(sample_data / "images" / name, dest / name)
    return dest


def cli(env: dict[str, str], *args: str, code: int = 0) -> dict[str, Any]:
    r = CliRunner().invoke(app, [*args, "--json"], env=env)
    assert r.exit_code == code, f"{args}: exit {r.exit_code}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return json.loads(r.stdout)


def status(env: dict[str, str]) -> dict[str, Any]:
    return cli(env, "status")


@pytest.fixture
def offline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    return {
        "LABELLOOP_HOME": str(tmp_path / "home"),
        "LABELLOOP_DB__URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "LABELLOOP_STORAGE__ROOT": str(tmp_path / "objects"),
        "LABELLOOP_LABEL_STUDIO__URL": "http://127.0.0.1:9",  # nothing listens: import must fail loudly
        "LABELLOOP_LABEL_STUDIO__TOKEN": "t",
    }


def test_offline_loop_retry_and_exit_codes(offline_env: dict[str, str], sample_data: Path, tmp_path: Path) -> None:
    env = offline_env
    src = _images(sample_data, tmp_path / "in")
    p = cli(env, "prelabel", "--spec", "ocr_lines", "--backend", "cpu", "--source", str(src), "--limit", "2")
    assert p["ingest"]["new_items"] == 3
    assert (p["prelabel"]["backend"], p["prelabel"]["considered"], p["prelabel"]["ok"]) == ("rapidocr", 2, 2)
    st = status(env)
    assert st["items"] == {"image": 3} and st["predictions"] == {"ocr_lines/ok": 2}

    # a failure is counted by reason, and --retry-failed predicts that item again
    db = Database(DatabaseSettings(url=env["LABELLOOP_DB__URL"]))
    with db.transaction() as s:
        failed = {"status": "failed", "record": None, "error": "OCR failed: x"}
        s.execute(update(Prediction).where(Prediction.id == 1).values(**failed))
    st = status(env)
    assert st["predictions"] == {"ocr_lines/failed": 1, "ocr_lines/ok": 1}
    assert st["prediction_failures"] == {"ocr_lines/OCR failed": 1}
    p = cli(env, "prelabel", "--spec", "ocr_lines", "--retry-failed")
    assert p["retried"] == {"OCR failed": 1} and (p["considered"], p["ok"]) == (2, 2)  # the retried + the third
    assert status(env)["predictions"] == {"ocr_lines/ok": 3}

    # unknown spec / wrong backend: usage errors before any work
    assert CliRunner().invoke(app, ["prelabel", "--spec", "nope"], env=env).exit_code == 2
    r = CliRunner().invoke(app, ["prelabel", "--spec", "ocr_lines", "--backend", "pymupdf"], env=env)
    assert r.exit_code == 2 and "not an image backend" in r.stderr

    # Label Studio down: the import step fails with exit 1, naming the URL and the step
    r = CliRunner().invoke(app, ["run", "--spec", "ocr_lines", "--no-export"], env=env)
    assert r.exit_code == 1 and "http://127.0.0.1:9" in r.stderr and "step sync failed" in r.stderr

    # routing without review; the gate holds 0 records so validate passes, export has nothing
    out = cli(env, "run", "--spec", "ocr_lines", "--no-review")
    assert list(out["steps"]) == ["prelabel", "calibrate", "route", "validate", "export"]
    assert out["steps"]["route"]["considered"] == 3
    st = status(env)
    routes = st["review_tasks"]
    assert sum(routes.values()) == 3 and all(k.startswith("ocr_lines/") for k in routes)
    # no reviewed records yet: validation has nothing to fail, export says there is nothing to publish
    assert out["steps"]["validate"]["passed_gate"] and not out["steps"]["export"]["created"]


@pytest.mark.labelstudio
def test_whole_loop_with_the_cli_alone(label_studio: Any, sample_data: Path, tmp_path: Path) -> None:
    store_root = label_studio.files_root / f"objects-{uuid.uuid4().hex[:10]}"
    env = {
        "LABELLOOP_HOME": str(tmp_path / "home"),
        "LABELLOOP_DB__URL": f"sqlite:///{tmp_path / 'loop.db'}",
        "LABELLOOP_STORAGE__ROOT": str(store_root),
        "LABELLOOP_LABEL_STUDIO__URL": label_studio.url,
        "LABELLOOP_LABEL_STUDIO__TOKEN": label_studio.token,
        "LABELLOOP_LABEL_STUDIO__LOCAL_FILES_ROOT": str(label_studio.files_root),
        "LABELLOOP_LABEL_STUDIO__PROJECT_PREFIX": f"cli{uuid.uuid4().hex[:6]}",
        # every field to review, so each item comes back through Label Studio
        "LABELLOOP_ROUTING__DEFAULT_THRESHOLD": "1.0001",
    }
    src = _images(sample_data, tmp_path / "in")
    assert cli(env, "ingest", str(src))["new_items"] == 3
    assert status(env)["items"] == {"image": 3}

    p = cli(env, "prelabel", "--spec", "ocr_lines", "--backend", "cpu")
    assert (p["considered"], p["ok"], p["failed"]) == (3, 3, 0)
    assert status(env)["predictions"] == {"ocr_lines/ok": 3}

    r = cli(env, "route", "--spec", "ocr_lines")
    assert (r["considered"], r["review"], r["auto"]) == (3, 3, 0)
    assert status(env)["review_tasks"] == {"ocr_lines/review/pending_import": 3}

    i = cli(env, "review", "import", "--spec", "ocr_lines")
    assert (i["imported"], i["already_there"]) == (3, 0)
    assert status(env)["review_tasks"] == {"ocr_lines/review/imported": 3}
    assert cli(env, "review", "import", "--spec", "ocr_lines")["imported"] == 0  # rerun: nothing twice

    # annotators: accept two pre-annotations as they are, correct one line of the third
    ls = label_studio.client()
    tasks = list(ls.tasks.list(project=i["project_id"], fields="all"))
    assert len(tasks) == 3
    for n, task in enumerate(tasks):
        result = [dict(r) for r in task.predictions[0].result]
        if n == 2:
            for r in result:
                if r["type"] == "textarea":
                    r["value"] = {**r["value"], "text": ["corrected by a human"]}
                    break
        ls.annotations.create(id=task.id, result=result, lead_time=3.0)

    s = cli(env, "review", "sync", "--spec", "ocr_lines")
    assert (s["completed"], s["records"]) == (3, 3)
    st = status(env)
    assert st["review_tasks"] == {"ocr_lines/review/completed": 3}
    assert st["records"] == {"ocr_lines/human": 3}
    assert st["field_corrections"] == 3 and st["annotations"] == 3

    v = cli(env, "validate", "--spec", "ocr_lines")
    assert (v["n_records"], v["passed_gate"]) == (3, True)
    e = cli(env, "export", "--spec", "ocr_lines")
    assert e["export"]["created"] and e["export"]["counts"]
    assert status(env)["dataset_versions"] == {"ocr_lines": 1}
    again = cli(env, "export", "--spec", "ocr_lines")
    assert not again["export"]["created"]  # unchanged records: no new version
    assert status(env)["dataset_versions"] == {"ocr_lines": 1}


def test_failed_gate_exits_4_and_nothing_is_exported(
    offline_env: dict[str, str], sample_data: Path, tmp_path: Path
) -> None:
    from labelloop.db import Record

    env = {
        **offline_env,
        "LABELLOOP_ROUTING__DEFAULT_THRESHOLD": "0",
        "LABELLOOP_ROUTING__AUDIT_RATE": "0",
        "LABELLOOP_ROUTING__USE_MANUAL_THRESHOLDS": "true",
    }
    src = _images(sample_data, tmp_path / "in")
    # no calibrate step here: `run` would put a new model under full review (calibration's policy)
    cli(env, "prelabel", "--spec", "ocr_lines", "--source", str(src), "--limit", "1")
    assert cli(env, "route", "--spec", "ocr_lines")["auto"] == 1
    assert cli(env, "export", "--spec", "ocr_lines")["export"]["created"]
    db = Database(DatabaseSettings(url=env["LABELLOOP_DB__URL"]))
    with db.transaction() as s:  # a record no schema allows: the text of a line is far too long
        rec = s.query(Record).one()
        rec.record = {"lines": [{"bbox": [1, 2, 30, 40], "text": "x" * 5000}]}
    bad = cli(env, "validate", "--spec", "ocr_lines", "--max-failed-share", "0", code=4)
    assert bad["passed_gate"] is False and bad["n_failed"] == 1 and "quality gate failed" in bad["error"]
    again = cli(env, "export", "--spec", "ocr_lines", code=4)  # export validates first, and stops at the gate
    assert again["passed_gate"] is False and "export" not in again
    assert status(env)["dataset_versions"] == {"ocr_lines": 1}  # nothing new was published
