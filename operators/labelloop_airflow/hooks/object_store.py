"""ObjectStoreHook: MinIO/S3 as an Airflow Connection of type ``aws`` (default id ``labelloop_s3``).

login/password are the access and secret keys; extra holds ``endpoint_url`` (http://minio:9000),
``region_name``, and optionally ``bucket`` and ``public_endpoint`` - the same connection the Amazon
provider's S3Hook reads. Without the connection the environment defaults apply.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from labelloop.config import Settings, StorageSettings


class ObjectStoreHook(BaseHook):
    conn_name_attr = "s3_conn_id"
    default_conn_name = "labelloop_s3"
    conn_type = "aws"
    hook_name = "labelloop object store"

    def __init__(self, s3_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.s3_conn_id = s3_conn_id

    def get_storage_settings(self, base: StorageSettings) -> StorageSettings | None:
        try:
            conn = self.get_connection(self.s3_conn_id)
        except AirflowNotFoundException:
            return None
        extra: dict[str, Any] = conn.extra_dejson or {}
        updates: dict[str, Any] = {"backend": "s3"}
        endpoint = extra.get("endpoint_url")
        if endpoint:
            parsed = urlparse(endpoint)
            updates["endpoint"] = parsed.netloc or parsed.path
            updates["secure"] = parsed.scheme == "https"
        if conn.login:
            updates["access_key"] = conn.login
        if conn.password:
            updates["secret_key"] = conn.password
        for key, field in (("region_name", "region"), ("bucket", "bucket"), ("public_endpoint", "public_endpoint")):
            if extra.get(key):
                updates[field] = extra[key]
        return StorageSettings.model_validate({**base.model_dump(), **updates})

    def apply(self, settings: Settings) -> Settings:
        storage = self.get_storage_settings(settings.storage)
        return settings if storage is None else settings.model_copy(update={"storage": storage})
