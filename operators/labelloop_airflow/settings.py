"""Settings for code running inside Airflow: environment defaults, then Airflow Connections on top.

Each hook owns one connection (curation DB, object store, vLLM, MinerU, Label Studio) and knows
how to overlay it onto :class:`labelloop.config.Settings`; a missing connection leaves the
environment default in place, so the embedded deployment needs no Airflow configuration.
"""

from __future__ import annotations

import importlib

from labelloop.config import Settings

#: "module:Hook" whose ``Hook().apply(settings)`` overlays its connection
HOOKS = (
    "labelloop_airflow.hooks.curation_db:CurationDBHook",
    "labelloop_airflow.hooks.object_store:ObjectStoreHook",
    "labelloop_airflow.hooks.vllm:VLLMHook",
    "labelloop_airflow.hooks.mineru:MinerUHook",
    "labelloop_airflow.hooks.label_studio:LabelStudioHook",
)


def airflow_settings(base: Settings | None = None) -> Settings:
    settings = base or Settings()
    for target in HOOKS:
        module, name = target.split(":")
        try:
            hook_module = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue  # that hook is not part of this deployment
        settings = getattr(hook_module, name)().apply(settings)
    return settings
