"""MinerUHook: where MinerU runs, kept in an Airflow Connection (default id ``mineru``).

The connection's host/port (and schema, default http) give ``api_url`` (mode=http) or
``cloud_url`` (mode=cloud); its password is the mineru-api key or the mineru.net token (a secret:
never logged, masked by Airflow); its extra may hold ``mode`` (cli|http|cloud), ``command``,
``tier``, ``scan_tier``, ``timeout_s``, ``lang``, ``version``, ``models_present``, ``agreement``,
``max_retries`` and ``cloud_model_version``. With no such connection the environment defaults in
:class:`labelloop.config.Settings` apply unchanged, so a single-machine deployment needs no Airflow setup.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from labelloop.config import MinerUSettings, Settings

#: extra keys copied onto MinerUSettings (validated there)
EXTRA_KEYS = (
    "mode",
    "command",
    "tier",
    "scan_tier",
    "timeout_s",
    "lang",
    "version",
    "max_retries",
    "models_present",
    "agreement",
    "cloud_model_version",
    "poll_interval_s",
)


class MinerUHook(BaseHook):
    conn_name_attr = "mineru_conn_id"
    default_conn_name = "mineru"
    conn_type = "mineru"
    hook_name = "MinerU"

    def __init__(self, mineru_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.mineru_conn_id = mineru_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["login"],
            "relabeling": {
                "host": "mineru-api or mineru.net host",
                "port": "port",
                "password": "API key / mineru.net token",
            },
            "placeholders": {"extra": '{"mode": "http", "tier": "flash", "timeout_s": 1800}'},
        }

    def get_conn(self) -> MinerUSettings | None:
        """The connection as MinerU overrides, or None when the connection is not defined."""
        try:
            conn = self.get_connection(self.mineru_conn_id)
        except AirflowNotFoundException:
            return None
        updates: dict[str, Any] = {k: v for k, v in (conn.extra_dejson or {}).items() if k in EXTRA_KEYS}
        mode = updates.get("mode", "cli")
        if conn.host:
            scheme = conn.schema or ("https" if mode == "cloud" else "http")
            port = f":{conn.port}" if conn.port else ""
            if mode == "cloud":
                updates["cloud_url"] = f"{scheme}://{conn.host}{port}/api/v4"
            else:
                updates["api_url"] = f"{scheme}://{conn.host}{port}"
        if conn.password:
            updates["cloud_token" if mode == "cloud" else "api_key"] = conn.password
        return MinerUSettings.model_validate(updates)

    def apply(self, settings: Settings) -> Settings:
        """``settings`` with the connection's MinerU values on top (fields it does not set keep
        their environment defaults)."""
        conn = self.get_conn()
        if conn is None:
            return settings
        merged = settings.mineru.model_copy(update=conn.model_dump(exclude_unset=True))
        return settings.model_copy(update={"mineru": MinerUSettings.model_validate(merged.model_dump())})
