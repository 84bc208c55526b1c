"""Provider metadata, found by Airflow through the ``apache_airflow_provider`` entry point.

This is what makes the Label Studio, vLLM and MinerU connection types appear in Airflow's
connection form, as Airflow's own provider packages do. The curation DB and object store hooks
reuse the ``postgres`` and ``aws`` connection types of their providers, so they are not listed.
"""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "labelloop",
        "name": "labelloop",
        "description": "Pre-labeling, Label Studio review, calibration and dataset export for Qwen-VL fine-tuning.",
        "integrations": [
            {"integration-name": "Label Studio", "external-doc-url": "https://labelstud.io/", "tags": ["service"]},
            {"integration-name": "vLLM", "external-doc-url": "https://docs.vllm.ai/", "tags": ["service"]},
            {
                "integration-name": "MinerU",
                "external-doc-url": "https://github.com/opendatalab/MinerU",
                "tags": ["service"],
            },
        ],
        "hooks": [
            {"integration-name": "Label Studio", "python-modules": ["labelloop_airflow.hooks.label_studio"]},
            {"integration-name": "vLLM", "python-modules": ["labelloop_airflow.hooks.vllm"]},
            {"integration-name": "MinerU", "python-modules": ["labelloop_airflow.hooks.mineru"]},
        ],
        "connection-types": [
            {
                "hook-class-name": "labelloop_airflow.hooks.label_studio.LabelStudioHook",
                "connection-type": "label_studio",
            },
            {"hook-class-name": "labelloop_airflow.hooks.vllm.VLLMHook", "connection-type": "vllm"},
            {"hook-class-name": "labelloop_airflow.hooks.mineru.MinerUHook", "connection-type": "mineru"},
        ],
    }
