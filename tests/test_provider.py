"""The Airflow side installs as a provider under a name that cannot clash with other packages."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

from setuptools import find_namespace_packages

REPO = Path(__file__).resolve().parents[1]


def test_no_generic_top_level_operators_package() -> None:
    # `operators/` is only the source folder; what the wheel installs has project-specific names
    assert not (REPO / "operators" / "__init__.py").exists()
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = [p for where in find["where"] for p in find_namespace_packages(REPO / where, include=find["include"])]
    assert {p.split(".")[0] for p in found} == {"labelloop", "labelloop_airflow"}
    assert "labelloop_airflow.hooks" in found
    spec = importlib.util.find_spec("labelloop_airflow")
    assert spec is not None and spec.origin == str(REPO / "operators" / "labelloop_airflow" / "__init__.py")


def test_provider_registers_connection_types() -> None:
    from airflow.providers_manager import ProvidersManager

    pm = ProvidersManager()
    assert "labelloop" in pm.providers
    hooks = pm.hooks
    for conn_type, cls in (
        ("label_studio", "LabelStudioHook"),
        ("vllm", "VLLMHook"),
        ("mineru", "MinerUHook"),
    ):
        info = hooks[conn_type]
        assert info is not None, conn_type
        assert info.package_name == "labelloop"
        assert info.hook_class_name.endswith(cls)
