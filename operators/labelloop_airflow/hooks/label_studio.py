"""LabelStudioHook: where Label Studio runs and how to log in, kept in an Airflow Connection.

Connection (default id ``label_studio``): ``host`` is the base URL (``http://label-studio:8080``,
or a bare host name with ``schema``/``port``), ``password`` the token -- a legacy API token or a
personal access token, the SDK tells them apart. ``extra`` may override other
:class:`labelloop.config.LabelStudioSettings` fields (``project_prefix``, ``media_mode``,
``import_chunk``, ``local_files_root``, ``s3_endpoint`` ...). Without the connection the
environment defaults (``LABELLOOP_LABEL_STUDIO__*``) apply unchanged, so a single-machine setup
needs no Airflow configuration.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from label_studio_sdk import LabelStudio

from labelloop.config import LabelStudioSettings, Settings
from labelloop.review.client import client_from_settings

#: ``extra`` keys copied onto LabelStudioSettings (validated there)
EXTRA_KEYS = tuple(k for k in LabelStudioSettings.model_fields if k not in ("url", "token"))


def connection_url(host: str, schema: str | None, port: int | None) -> str:
    """Base URL from a connection's parts; a host that already is a URL wins."""
    host = host.rstrip("/")
    if "://" in host:
        return f"{host}:{port}" if port and host.count(":") == 1 else host
    scheme = schema if schema in ("http", "https") else "http"
    return f"{scheme}://{host}" + (f":{port}" if port else "")


class LabelStudioHook(BaseHook):
    conn_name_attr = "label_studio_conn_id"
    default_conn_name = "label_studio"
    conn_type = "label_studio"
    hook_name = "Label Studio"

    def __init__(self, label_studio_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.label_studio_conn_id = label_studio_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["login"],
            "relabeling": {"host": "Label Studio URL", "password": "API token or personal access token"},
            "placeholders": {"host": "http://label-studio:8080", "extra": '{"project_prefix": "labelloop"}'},
        }

    def overrides(self) -> dict[str, Any] | None:
        """The connection as LabelStudioSettings values, or None when it is not defined."""
        try:
            conn = self.get_connection(self.label_studio_conn_id)
        except AirflowNotFoundException:
            return None
        updates: dict[str, Any] = {k: v for k, v in (conn.extra_dejson or {}).items() if k in EXTRA_KEYS}
        if conn.host:
            updates["url"] = connection_url(conn.host, conn.schema, conn.port)
        if conn.password:
            updates["token"] = conn.password
        return updates

    def apply(self, settings: Settings) -> Settings:
        """``settings`` with the connection's values on top (unset ones keep their defaults)."""
        updates = self.overrides()
        if not updates:
            return settings
        merged = settings.label_studio.model_dump()
        merged.update(updates)
        merged["token"] = updates.get("token", settings.label_studio.token)
        return settings.model_copy(update={"label_studio": LabelStudioSettings.model_validate(merged)})

    def get_conn(self, settings: Settings | None = None) -> LabelStudio:
        """A verified SDK client (one ``whoami``; a bad token fails here with a clear message)."""
        return client_from_settings(self.apply(settings or Settings()).label_studio)
