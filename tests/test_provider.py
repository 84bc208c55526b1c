"""The Airflow side installs as a provider under a name that cannot clash with other packages."""

from __future__ import annotations

import importlib.util
import runpy
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def _setup_kwargs(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What setup.py hands to setuptools (the package layout lives there, see its docstring)."""
    import setuptools

    captured: dict[str, Any] = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(REPO)
    runpy.run_path(str(REPO / "setup.py"))
    return captured


def test_no_generic_top_level_operators_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # `operators/` is only the source folder; what the wheel installs has project-specific names
    assert not (REPO / "operators" / "__init__.py").exists()
    found = _setup_kwargs(monkeypatch)["packages"]
    assert {p.split(".")[0] for p in found} == {"labelloop", "labelloop_airflow"}
    assert {"labelloop_airflow.hooks", "labelloop.cli", "labelloop.db.migrations"} <= set(found)
    spec = importlib.util.find_spec("labelloop_airflow")
    assert spec is not None and spec.origin == str(REPO / "operators" / "labelloop_airflow" / "__init__.py")


def test_package_data_covers_specs_label_configs_and_migrations(monkeypatch: pytest.MonkeyPatch) -> None:
    kw = _setup_kwargs(monkeypatch)
    data = kw["package_data"]
    assert kw["package_dir"]["labelloop.db.migrations"] == "sql/migrations"
    for pkg, folder in (
        ("labelloop.specs", REPO / "labelloop/specs"),
        ("labelloop.db.migrations", REPO / "sql/migrations"),
    ):
        shipped = {p for pattern in data[pkg] for p in folder.glob(pattern)}
        wanted = {*folder.glob("*.yaml"), *folder.glob("label_config/*.xml"), *folder.glob("versions/*.py")}
        assert wanted and wanted <= shipped, pkg


def test_declared_provider_dependencies_supply_our_connection_types() -> None:
    """apache-airflow-providers-postgres/-amazon are never imported: they are what gives the
    curation DB and object store hooks their connection types (postgres, aws) in Airflow's form."""
    from airflow.providers_manager import ProvidersManager
    from labelloop_airflow.hooks.curation_db import CurationDBHook
    from labelloop_airflow.hooks.object_store import ObjectStoreHook

    hooks = ProvidersManager().hooks
    for hook, package in (
        (CurationDBHook, "apache-airflow-providers-postgres"),
        (ObjectStoreHook, "apache-airflow-providers-amazon"),
    ):
        info = hooks[hook.conn_type]
        assert info is not None and info.package_name == package, hook.conn_type


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
