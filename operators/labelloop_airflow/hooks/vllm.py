"""VLLMHook: the OpenAI-compatible model server, kept in an Airflow Connection (default id ``vllm``).

Connection fields: host and port (schema = URL scheme, default http) give the base URL, with
``extra.base_path`` (default ``/v1``) appended; a host that is already a URL
(``http://vllm:8000/v1``) is used as is. The password is the API key. ``extra`` may set any of
:data:`EXTRA_KEYS` (model, concurrency, coordinate_mode, ...). Without the connection the
environment defaults in :class:`labelloop.config.Settings` apply, so a one-machine deployment
needs no Airflow setup.
"""

from __future__ import annotations

import asyncio
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from labelloop.config import Settings, VLLMSettings
from labelloop.prelabel.vllm.client import ChatClient

#: extra keys copied onto VLLMSettings (validated there)
EXTRA_KEYS = (
    "model",
    "model_version",
    "concurrency",
    "timeout_s",
    "max_retries",
    "retry_backoff_s",
    "retry_backoff_max_s",
    "max_tokens",
    "top_logprobs",
    "model_family",
    "coordinate_mode",
    "resize_factor",
    "min_pixels",
    "max_pixels",
    "jpeg_quality",
    "return_token_ids",
    "confidence_aggregator",
)


def base_url_of(host: str, port: int | None, schema: str | None, base_path: str = "/v1") -> str:
    """The OpenAI base URL for a connection's host/port/schema."""
    if "://" in host:
        return host.rstrip("/")
    scheme = schema or "http"
    netloc = f"{host}:{port}" if port else host
    return f"{scheme}://{netloc}/{base_path.strip('/')}".rstrip("/")


class VLLMHook(BaseHook):
    conn_name_attr = "vllm_conn_id"
    default_conn_name = "vllm"
    conn_type = "vllm"
    hook_name = "vLLM (OpenAI-compatible)"

    def __init__(self, vllm_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.vllm_conn_id = vllm_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["login"],
            "relabeling": {"host": "vLLM host", "port": "vLLM port", "schema": "scheme", "password": "API key"},
            "placeholders": {
                "extra": '{"model": "Qwen/Qwen2.5-VL-7B-Instruct", "concurrency": 64, '
                '"model_family": "qwen2_5_vl"}'
            },
        }

    def get_overrides(self) -> dict[str, Any] | None:
        """The connection as VLLMSettings fields, or None when it is not defined."""
        try:
            conn = self.get_connection(self.vllm_conn_id)
        except AirflowNotFoundException:
            return None
        extra = conn.extra_dejson or {}
        updates: dict[str, Any] = {k: v for k, v in extra.items() if k in EXTRA_KEYS}
        if conn.host:
            updates["base_url"] = base_url_of(conn.host, conn.port, conn.schema, extra.get("base_path", "/v1"))
        if conn.password:
            updates["api_key"] = conn.password
        return updates

    def apply(self, settings: Settings) -> Settings:
        """``settings`` with the connection's vLLM values on top (unset fields keep their
        environment defaults)."""
        updates = self.get_overrides()
        if not updates:
            return settings
        merged = {**settings.vllm.model_dump(), **updates}
        merged["api_key"] = updates.get("api_key", settings.vllm.api_key.get_secret_value())
        return settings.model_copy(update={"vllm": VLLMSettings.model_validate(merged)})

    def get_conn(self, settings: Settings | None = None) -> ChatClient:
        """A pooled chat client for the connection (close it with ``await client.aclose()``)."""
        cfg = self.apply(settings or Settings()).vllm
        return ChatClient(
            cfg.base_url,
            api_key=cfg.api_key.get_secret_value() or None,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            max_connections=cfg.concurrency + 4,
            backoff_initial_s=cfg.retry_backoff_s,
            backoff_max_s=cfg.retry_backoff_max_s,
        )

    def test_connection(self) -> tuple[bool, str]:
        """Airflow UI "Test": list the served models and check ours is among them."""

        async def probe() -> tuple[bool, str]:
            settings = self.apply(Settings())
            client = self.get_conn(settings)
            try:
                models = await client.list_models()
            finally:
                await client.aclose()
            if settings.vllm.model in models:
                return True, f"serving {settings.vllm.model}"
            return False, f"model {settings.vllm.model!r} not served; the server has {models}"

        try:
            return asyncio.run(probe())
        except Exception as e:  # shown in the UI as the test result
            return False, f"{type(e).__name__}: {e}"
