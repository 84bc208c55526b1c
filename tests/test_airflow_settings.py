"""Airflow Connections overlay the environment defaults; missing connections change nothing."""

from __future__ import annotations

import json

import pytest

from labelloop.config import Settings


def test_no_connections_means_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from labelloop_airflow.settings import airflow_settings

    for var in ("AIRFLOW_CONN_LABELLOOP_DB", "AIRFLOW_CONN_LABELLOOP_S3"):
        monkeypatch.delenv(var, raising=False)
    base = Settings()
    assert airflow_settings(base).db.url_value == base.db.url_value
    assert airflow_settings(base).storage.backend == base.storage.backend


def test_curation_db_and_object_store_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    from labelloop_airflow.settings import airflow_settings

    monkeypatch.setenv("AIRFLOW_CONN_LABELLOOP_DB", "postgresql://cur:pw@db.example:5432/labelloop")
    monkeypatch.setenv(
        "AIRFLOW_CONN_LABELLOOP_S3",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "AKIA1",
                "password": "s3cr3t",
                "extra": {
                    "endpoint_url": "https://minio.example:9000",
                    "region_name": "eu-west-1",
                    "bucket": "curated",
                },
            }
        ),
    )
    s = airflow_settings(Settings())
    assert s.db.url_value == "postgresql+psycopg://cur:pw@db.example:5432/labelloop"
    st = s.storage
    assert (st.backend, st.endpoint, st.secure, st.region, st.bucket) == (
        "s3",
        "minio.example:9000",
        True,
        "eu-west-1",
        "curated",
    )
    assert st.access_key.get_secret_value() == "AKIA1" and st.secret_key.get_secret_value() == "s3cr3t"
