"""The CLI as a user runs it, and the settings object (env, YAML file, secrets never shown)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labelloop.cli import app, settings_markdown
from labelloop.config import Settings, iter_setting_docs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    return {
        "LABELLOOP_HOME": str(tmp_path / "home"),
        "LABELLOOP_DB__URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "LABELLOOP_STORAGE__ROOT": str(tmp_path / "objects"),
    }


def test_ingest_then_status_then_rerun(env: dict[str, str], sample_data: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["ingest", str(sample_data), "--json"], env=env)
    assert r.exit_code == 0, r.output
    first = json.loads(r.stdout)
    assert first["new_items"] == 13 and first["rejected"] == 1
    r = runner.invoke(app, ["ingest", str(sample_data), "--json"], env=env)
    assert json.loads(r.stdout)["new_items"] == 0
    r = runner.invoke(app, ["status", "--json", "--rejects"], env=env)
    st = json.loads(r.stdout)
    assert st["items"] == {"document": 4, "image": 9}
    assert st["rejects"] == {"unsupported_type": 1}
    assert st["reject_list"][0]["source_uri"].endswith("README.md")
    r = runner.invoke(app, ["status"], env=env)
    assert r.exit_code == 0 and "unsupported_type" in r.stdout


def test_missing_source_exits_2_with_message(env: dict[str, str], tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["ingest", str(tmp_path / "nowhere")], env=env)
    assert r.exit_code == 2 and "does not exist" in r.output


def test_db_upgrade_hides_password(env: dict[str, str]) -> None:
    r = CliRunner().invoke(app, ["db", "upgrade"], env=env)
    assert r.exit_code == 0 and "at revision 0" in r.stdout


def test_config_show_masks_secrets(env: dict[str, str]) -> None:
    env = {
        **env,
        "LABELLOOP_LABEL_STUDIO__TOKEN": "tok-very-secret",
        "LABELLOOP_STORAGE__SECRET_KEY": "sk-secret",
        "LABELLOOP_DB__URL": "postgresql+psycopg://u:dbpass-secret@h/db",
    }
    r = CliRunner().invoke(app, ["config", "show"], env=env)
    assert r.exit_code == 0
    for secret in ("tok-very-secret", "sk-secret", "dbpass-secret"):
        assert secret not in r.stdout
    shown = json.loads(r.stdout)
    assert shown["label_studio"]["token"] == "**********"
    assert shown["db"]["url"] == "postgresql+psycopg://u:***@h/db"


def test_settings_from_env_and_yaml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "labelloop.yaml"
    cfg.write_text("vllm:\n  concurrency: 7\n  model: from-file\nrouting:\n  audit_rate: 0.1\n")
    monkeypatch.setenv("LABELLOOP_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("LABELLOOP_VLLM__MODEL", "from-env")
    s = Settings()
    assert s.vllm.concurrency == 7 and s.routing.audit_rate == 0.1
    assert s.vllm.model == "from-env"  # env beats the file
    assert "tok-xyz-123" not in repr(Settings(label_studio={"token": "tok-xyz-123"}))


def test_bad_settings_are_refused_with_the_field_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELLOOP_VLLM__CONCURRENCY", "0")
    with pytest.raises(Exception, match="concurrency"):
        Settings()
    r = CliRunner().invoke(app, ["status"])
    assert r.exit_code == 2 and "concurrency" in r.output


def test_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LABELLOOP_CONFIG_FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        Settings()


def test_every_setting_is_documented() -> None:
    docs = (REPO / "docs" / "configuration.md").read_text()
    for env_name, _default, description in iter_setting_docs():
        assert description, f"{env_name} has no description"
        assert f"`{env_name}`" in docs, f"{env_name} missing from docs/configuration.md (run `labelloop config docs`)"
    assert settings_markdown().count("\n") + 1 == len(iter_setting_docs()) + 2
