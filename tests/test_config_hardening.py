"""Config and error hardening (issue 11, point 8): secrets never shown, typos never ignored,
Label Studio never holding the platform's write key, and errors from S3, the curation DB and
the model server naming the URL and the step."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
import urllib3
from minio import Minio
from pydantic import SecretStr, ValidationError
from sqlalchemy import text
from typer.testing import CliRunner

from labelloop.cli import app
from labelloop.config import LabelStudioSettings, Settings, StorageSettings, check_environment
from labelloop.db import Database
from labelloop.db.session import DatabaseUnreachable
from labelloop.review.media import MediaError, MediaLinker
from labelloop.storage import ObjectNotFound, StorageError
from labelloop.storage.s3 import S3Store

SECRETS = {
    "db": {"url": "postgresql+psycopg://curator:db-pass-1234@db.example:5432/curation"},
    "storage": {"access_key": "AKIA-platform-rw", "secret_key": "platform-secret-5678"},
    "label_studio": {"token": "ls-token-9012", "s3_access_key": "AKIA-ls-ro", "s3_secret_key": "ls-ro-secret-3456"},
    "vllm": {"api_key": "vllm-key-7890"},
    "mineru": {"api_key": "mineru-key-1111", "cloud_token": "mineru-cloud-2222"},
}
PLAINTEXT = ["db-pass-1234", "platform-secret-5678", "ls-token-9012", "ls-ro-secret-3456", "vllm-key-7890"]
PLAINTEXT += ["mineru-key-1111", "mineru-cloud-2222", "AKIA-platform-rw", "AKIA-ls-ro"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- secrets


def test_no_secret_shows_in_repr_str_dumps_or_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(**SECRETS)
    for shown in (repr(s), str(s), s.model_dump_json(), repr(s.db), str(s.model_dump()), str(s.redacted())):
        for secret in PLAINTEXT:
            assert secret not in shown, (secret, shown[:200])
    assert s.redacted()["db"]["url"] == "postgresql+psycopg://curator:***@db.example:5432/curation"
    assert s.db.url_value.endswith("db-pass-1234@db.example:5432/curation"), "the engine still gets the password"
    assert isinstance(s.db.url, SecretStr)
    for key in list(__import__("os").environ):
        if key.startswith("LABELLOOP_"):
            monkeypatch.delenv(key)
    env = {"LABELLOOP_DB__URL": SECRETS["db"]["url"], "LABELLOOP_STORAGE__SECRET_KEY": "platform-secret-5678"}
    r = CliRunner().invoke(app, ["config", "show"], env=env)
    assert r.exit_code == 0 and "curator:***@" in r.stdout
    assert not any(secret in r.stdout for secret in PLAINTEXT)


# --------------------------------------------------------------------------- typos


def test_an_unknown_labelloop_variable_is_an_error_with_the_closest_name() -> None:
    with pytest.raises(ValueError, match=r"LABELLOOP_VLLM__MODLE \(did you mean LABELLOOP_VLLM__MODEL\?\)"):
        check_environment({"LABELLOOP_VLLM__MODLE": "x"})
    with pytest.raises(ValueError, match=r"LABELLOOP_VLLM_MODEL \(did you mean LABELLOOP_VLLM__MODEL\?\)"):
        check_environment({"LABELLOOP_VLLM_MODEL": "x"})  # one underscore: silently a no-op before
    with pytest.raises(ValueError, match=r"LABELLOOP_ROUTING__DEFAULT_TRESHOLD .*DEFAULT_THRESHOLD"):
        check_environment({"LABELLOOP_ROUTING__DEFAULT_TRESHOLD": "0.5", "LABELLOOP_HOME": "/x"})
    with pytest.raises(ValueError, match="LABELLOOP_QXZ_WVJ") as info:
        check_environment({"LABELLOOP_QXZ_WVJ": "1"})
    assert "did you mean" not in str(info.value)
    # settings, whole sections as JSON, mapping keys, lower case, and tooling variables pass
    check_environment(
        {
            "LABELLOOP_VLLM__MODEL": "m",
            "labelloop_vllm__concurrency": "3",
            "LABELLOOP_VLLM": "{}",
            "LABELLOOP_ROUTING__THRESHOLDS__CAPTION.TEXT": "0.5",
            "LABELLOOP_CONFIG_FILE": "x.yaml",
            "LABELLOOP_SAMPLE_DATA": "/data",
            "LABELLOOP_TEST_PG_ADMIN_URL": "postgresql://",
            "LABELLOOP_SKIP_LS_VENV": "1",
            "NOT_LABELLOOP_X": "1",
        }
    )


def test_settings_and_the_cli_refuse_a_misspelt_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LABELLOOP_LABEL_STUDIO__TOKNE", "t")
    with pytest.raises(ValueError, match=r"did you mean LABELLOOP_LABEL_STUDIO__TOKEN"):
        Settings()
    r = CliRunner().invoke(app, ["status"])
    assert r.exit_code == 2 and "LABELLOOP_LABEL_STUDIO__TOKNE" in r.output


def test_an_unknown_key_in_a_section_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "labelloop.yaml"
    cfg.write_text("vllm:\n  modle: Qwen/Qwen3-VL-8B-Instruct\n")
    monkeypatch.setenv("LABELLOOP_CONFIG_FILE", str(cfg))
    with pytest.raises(ValidationError, match=r"vllm\.modle"):
        Settings()
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        StorageSettings(bucket_name="x")


# --------------------------------------------------------------------------- Label Studio's S3 key


class _RecordingLS:
    """Records what the media linker hands Label Studio's S3 storage API (no server needed for
    this: the real storage creation is covered by test_review_import_sync's s3 media test)."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        ls = self

        class _S3:
            def list(self, project: int) -> list[Any]:
                return []

            def create(self, **kwargs: Any) -> None:
                ls.created.append(kwargs)

        self.import_storage = type("IS", (), {"s3": _S3()})()


def test_label_studio_never_gets_the_platforms_write_key(s3_settings: StorageSettings) -> None:
    s3_settings = s3_settings.model_copy(update={"secret_key": SecretStr("platform-rw-secret")})
    store = S3Store(s3_settings)
    base = Settings(storage=s3_settings, label_studio={"media_mode": "s3"})
    with pytest.raises(MediaError, match=r"read-only key of bucket .*media_mode=presigned.*step: media setup"):
        MediaLinker(base, store, _RecordingLS(), 1)  # type: ignore[arg-type]
    same = base.model_copy(
        update={
            "label_studio": LabelStudioSettings(
                media_mode="s3", s3_access_key=s3_settings.access_key, s3_secret_key=s3_settings.secret_key
            )
        }
    )
    with pytest.raises(MediaError, match="platform's own storage key"):
        MediaLinker(same, store, _RecordingLS(), 1)  # type: ignore[arg-type]
    own = base.model_copy(
        update={"label_studio": LabelStudioSettings(media_mode="s3", s3_access_key="ls-ro", s3_secret_key="ls-ro-s")}
    )
    ls = _RecordingLS()
    MediaLinker(own, store, ls, 1).prepare(["items/a.png"])  # type: ignore[arg-type]
    (created,) = ls.created
    assert (created["aws_access_key_id"], created["aws_secret_access_key"]) == ("ls-ro", "ls-ro-s")
    assert s3_settings.secret_key.get_secret_value() not in str(created)
    # presigned mode hands out single-object, expiring GET URLs and no key at all
    presigned = base.model_copy(update={"label_studio": LabelStudioSettings(media_mode="presigned")})
    store.put("items/a.png", b"png")
    url = MediaLinker(presigned, store, _RecordingLS(), 1).url("items/a.png")  # type: ignore[arg-type]
    assert "X-Amz-Expires=" in url and "X-Amz-Signature=" in url
    assert s3_settings.secret_key.get_secret_value() not in url


# --------------------------------------------------------------------------- errors name the URL and the step


def test_s3_errors_name_the_url_the_object_and_the_step(s3_settings: StorageSettings) -> None:
    port = _closed_port()
    down = s3_settings.model_copy(update={"endpoint": f"127.0.0.1:{port}"})
    # no SDK retries: the SDK's own backoff would only make the test slow
    client = Minio(
        down.endpoint,
        access_key="k",
        secret_key="s",
        secure=False,
        http_client=urllib3.PoolManager(retries=urllib3.Retry(total=0)),
    )
    store = S3Store(down, client=client)
    with pytest.raises(StorageError, match=rf"S3 bucket check of bucket {down.bucket} at http://127.0.0.1:{port}: "):
        store.get("items/x.jpg")
    store._bucket_checked = True  # the bucket was fine a moment ago; the server died since
    for step, call in (
        ("get", lambda: store.get("items/x.jpg")),
        ("put", lambda: store.put("items/x.jpg", b"x")),
        ("stat", lambda: store.stat("items/x.jpg")),
        ("list", lambda: list(store.list("items/"))),
    ):
        with pytest.raises(StorageError, match=rf"S3 {step} of {down.bucket}/items/x?.*at http://127.0.0.1:{port}"):
            call()
    live = S3Store(s3_settings)
    with pytest.raises(ObjectNotFound):
        live.get("items/missing.jpg")  # a missing object stays ObjectNotFound
    strict = S3Store(s3_settings.model_copy(update={"bucket": "t-absent-bucket", "create_bucket": False}))
    with pytest.raises(StorageError, match=rf"t-absent-bucket.*does not exist at http://{s3_settings.endpoint}"):
        strict.get("items/x.jpg")


def test_database_errors_name_the_url_without_its_password_and_the_step() -> None:
    url = f"postgresql+psycopg://curator:db-pass-1234@127.0.0.1:{_closed_port()}/curation"
    db = Database(Settings(db={"url": url}).db)
    with pytest.raises(DatabaseUnreachable) as info, db.session() as s:
        s.execute(text("select 1"))
    message = str(info.value)
    assert "curator:***@127.0.0.1" in message and "(step: connect)" in message
    assert "db-pass-1234" not in message
    db.dispose()


def test_model_server_errors_name_the_url_and_the_step(sqlite_settings: Settings) -> None:
    from fixtures_vllm import make_image

    from labelloop.db.models import Item
    from labelloop.prelabel.vllm import VLLMBackend
    from labelloop.specs import SpecRegistry

    base_url = f"http://127.0.0.1:{_closed_port()}/v1"
    settings = sqlite_settings.model_copy(
        update={"vllm": sqlite_settings.vllm.model_copy(update={"base_url": base_url, "max_retries": 0})}
    )
    backend = VLLMBackend(settings)
    item = Item(sha256="ab" * 32, media_type="image")

    async def go() -> Any:
        try:
            return await backend.predict(item, make_image(64, 48), SpecRegistry().get("caption"))
        finally:
            await backend.aclose()

    res = asyncio.run(go())
    assert res.status == "failed" and res.failure_kind == "transient"
    assert base_url in res.error and "step: chat completion" in res.error
