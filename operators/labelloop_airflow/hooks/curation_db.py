"""CurationDBHook: the curation database as an Airflow Connection (default id ``labelloop_db``).

Any SQLAlchemy-style connection works (postgres, sqlite). Without the connection the environment
default (``LABELLOOP_DB__URL``) applies, so a one-machine deployment needs no Airflow setup.
"""

from __future__ import annotations

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from pydantic import SecretStr

from labelloop.config import Settings


class CurationDBHook(BaseHook):
    conn_name_attr = "curation_conn_id"
    default_conn_name = "labelloop_db"
    conn_type = "postgres"
    hook_name = "labelloop curation DB"

    def __init__(self, curation_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.curation_conn_id = curation_conn_id

    def get_url(self) -> str | None:
        try:
            conn = self.get_connection(self.curation_conn_id)
        except AirflowNotFoundException:
            return None
        uri = conn.get_uri()
        # Airflow normalises the scheme to postgres://; SQLAlchemy wants postgresql+psycopg://
        for prefix in ("postgres://", "postgresql://"):
            if uri.startswith(prefix):
                return "postgresql+psycopg://" + uri[len(prefix) :]
        return uri

    def apply(self, settings: Settings) -> Settings:
        url = self.get_url()
        if url is None:
            return settings
        return settings.model_copy(update={"db": settings.db.model_copy(update={"url": SecretStr(url)})})
