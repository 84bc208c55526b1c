"""mineru.net v4 contract tests against tests/mineru_cloud_server.py: success (layout.json scores
used), failed task, waiting-file that never ends, rate limits, expired download URL, limits checked
before upload, the token never in an error or the settings' repr."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from mineru_cloud_server import TOKEN, CloudServer
from synthetic import pdf_item
from test_mineru_backend import a4_pdf

from labelloop.config import MinerUSettings, Settings
from labelloop.documents.record import DocumentRecord
from labelloop.prelabel.base import PredictionResult
from labelloop.prelabel.documents.mineru import MinerUBackend
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore


@pytest.fixture
def cloud(request: pytest.FixtureRequest) -> Iterator[CloudServer]:
    srv = CloudServer(getattr(request, "param", "ok"))
    yield srv
    srv.close()


def predict(settings: Settings, store: LocalStore, url: str, **kw: Any) -> PredictionResult:
    cfg = MinerUSettings(mode="cloud", cloud_url=url, cloud_token=TOKEN, poll_interval_s=0.01, timeout_s=5, **kw)
    docs = settings.documents.model_copy(update={"ocr_min_chars": 1})
    b = MinerUBackend(settings.model_copy(update={"mineru": cfg, "documents": docs}), store)
    b.retry_wait_s = 0.01
    data = a4_pdf()
    return asyncio.run(b.predict(pdf_item(data), data, SpecRegistry().get("document_layout")))


def test_success_uses_layout_scores(cloud: CloudServer, sqlite_settings: Settings, store: LocalStore) -> None:
    res = predict(sqlite_settings, store, cloud.url)
    assert res.status == "ok", res.error
    rec = DocumentRecord.model_validate(res.record)
    assert rec.pages[0].blocks[0].type == "title"
    assert res.confidence_detail["pages"][1]["block_scores"][0] == {"layout": 0.93, "ocr": 0.874}
    assert res.confidence_detail["origin"].startswith("mineru.net batch ")
    assert "agreement" not in res.confidence_detail["pages"][0]  # MinerU's own scores are used
    (batch,) = cloud.uploads
    # the uploaded bytes are the document (its data_id is the item's sha256)
    assert cloud.batches[batch]["files"][0]["data_id"] == hashlib.sha256(cloud.uploads[batch]).hexdigest()
    assert [m for m, _ in cloud.log][:2] == ["POST", "PUT"]
    assert all(a == f"Bearer {TOKEN}" for a in cloud.auth_seen)


@pytest.mark.parametrize(
    ("cloud", "error"),
    [
        ("failed", "mineru.net batch .* failed: file parse failed: encrypted"),
        ("stuck", "still waiting-file after 5 s"),
        ("expired", "download of batch .* HTTP 403 \\(expired URL\\?\\)"),
    ],
    indirect=["cloud"],
)
def test_failures_are_failed_predictions(
    cloud: CloudServer, error: str, sqlite_settings: Settings, store: LocalStore
) -> None:
    res = predict(sqlite_settings, store, cloud.url)
    assert res.status == "failed"
    assert __import__("re").search(error, res.error), res.error
    assert TOKEN not in res.error


@pytest.mark.parametrize("cloud", ["rate_limit"], indirect=True)
def test_rate_limits_are_retried(cloud: CloudServer, sqlite_settings: Settings, store: LocalStore) -> None:
    res = predict(sqlite_settings, store, cloud.url)
    assert res.status == "ok", res.error
    assert cloud.rate_limited >= 6  # two 429s before each answered API call
    res = predict(sqlite_settings, store, cloud.url, max_retries=1)
    assert res.status == "failed" and "HTTP 429 after 2 attempts" in res.error


def test_limits_checked_before_upload(cloud: CloudServer, sqlite_settings: Settings, store: LocalStore) -> None:
    res = predict(sqlite_settings, store, cloud.url, cloud_max_bytes=100)
    assert res.status == "failed" and "over the 100-byte limit" in res.error
    res = predict(sqlite_settings, store, cloud.url, cloud_max_pages=1)
    assert res.status == "failed" and "2 pages, over the 1-page limit" in res.error
    assert cloud.log == []  # nothing was sent
    cfg = MinerUSettings(mode="cloud", cloud_token=TOKEN)
    assert TOKEN not in repr(cfg) and TOKEN not in str(Settings(mineru=cfg).redacted())
