"""Task specs outside the package: LABELLOOP_SPECS__DIRS, label configs beside the spec, package data."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from labelloop.config import Settings
from labelloop.specs import SpecError, SpecRegistry
from labelloop.specs.registry import shipped_dir


def _user_spec(folder: Path, name: str = "shelf_caption", nested: bool = False) -> Path:
    base = SpecRegistry()
    data = base.get("caption").model_dump(mode="json", exclude={"source_path"})
    data.update(name=name, label_config=f"{name}.xml", description="Describe the shelf.")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    xml_dir = folder / "label_config" if nested else folder
    xml_dir.mkdir(exist_ok=True)
    (xml_dir / f"{name}.xml").write_text(base.label_config(base.get("caption")).replace("caption", "caption "))
    return folder


def test_env_setting_adds_specs_and_finds_their_label_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _user_spec(tmp_path / "a")
    b = _user_spec(tmp_path / "b", "dock_caption", nested=True)
    monkeypatch.setenv("LABELLOOP_SPECS__DIRS", f"{a}:{b}")
    reg = SpecRegistry.from_settings(Settings())
    assert {"shelf_caption", "dock_caption", "caption", "document_layout"} <= set(reg.names())
    assert reg.label_config_path(reg.get("shelf_caption")) == a / "shelf_caption.xml"
    assert reg.label_config_path(reg.get("dock_caption")) == b / "label_config" / "dock_caption.xml"
    assert not reg.is_shipped(reg.get("shelf_caption")) and reg.is_shipped(reg.get("caption"))
    monkeypatch.setenv("LABELLOOP_SPECS__DIRS", f'["{a}"]')  # a JSON list works too
    assert Settings().specs.dirs == [a]


def test_a_user_spec_overrides_a_shipped_one_of_the_same_name(tmp_path: Path) -> None:
    folder = _user_spec(tmp_path, "caption")
    reg = SpecRegistry([folder])
    assert reg.get("caption").description == "Describe the shelf."
    assert reg.label_config_path(reg.get("caption")) == folder / "caption.xml"


def test_missing_folder_or_label_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        SpecRegistry([tmp_path / "nowhere"])
    folder = _user_spec(tmp_path)
    (folder / "shelf_caption.xml").unlink()
    reg = SpecRegistry([folder])
    with pytest.raises(SpecError, match=r"shelf_caption\.xml.*not found"):
        reg.label_config(reg.get("shelf_caption"))


def test_shipped_label_configs_are_package_data() -> None:
    """Found inside the package (importlib.resources), not through the checkout's layout."""
    reg = SpecRegistry()
    for spec in reg:
        path = reg.label_config_path(spec)
        assert path.parent == shipped_dir() / "label_config", path


# --------------------------------------------------------------------------- the spec commands


def _cli(*args: str, env: dict[str, str] | None = None, code: int = 0) -> str:
    from typer.testing import CliRunner

    from labelloop.cli import app

    r = CliRunner().invoke(app, list(args), env=env or {})
    assert r.exit_code == code, f"{args}: exit {r.exit_code}\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.parametrize("media", ["image", "document"])
def test_spec_new_writes_a_skeleton_that_checks_and_lists(tmp_path: Path, media: str) -> None:
    import json

    folder = tmp_path / "team-specs"
    env = {"LABELLOOP_SPECS__DIRS": str(folder), "LABELLOOP_HOME": str(tmp_path)}
    _cli("spec", "new", "shelf_labels", "--media", media, env=env)
    report = json.loads(_cli("spec", "check", str(folder / "shelf_labels.yaml"), "--json", env=env))
    assert report["ok"] and not report["warnings"], report
    assert any("export template renders" in p for p in report["passed"])
    listed = json.loads(_cli("spec", "list", "--json", env=env))
    mine = [s for s in listed["specs"] if s["name"] == "shelf_labels"]
    assert mine and mine[0]["origin"] == "user" and mine[0]["media"] == media
    _cli("spec", "new", "shelf_labels", env=env, code=2)  # never overwrites silently


def test_spec_check_names_each_problem(tmp_path: Path) -> None:
    import json

    _cli("spec", "new", "broken", "--dir", str(tmp_path))
    path = tmp_path / "broken.yaml"
    data = yaml.safe_load(path.read_text())
    data["fields"]["lines"]["ls"]["from_name"] = "boxes"  # no such control
    data["example"]["lines"][0]["bbox"] = [1, 2, 3]  # breaks the schema's minItems
    path.write_text(yaml.safe_dump(data))
    report = json.loads(_cli("spec", "check", str(path), "--json", code=1))
    problems = " | ".join(report["problems"])
    assert "from_name 'boxes' is no control" in problems
    assert "example does not match json_schema at lines/0/bbox" in problems

    data = yaml.safe_load(path.read_text())
    data["fields"]["lines"]["ls"]["from_name"] = "bbox"
    data["example"]["lines"][0]["bbox"] = [1, 2, 3, 4]
    data["export"]["answer"] = "text:nowhere"  # a template that cannot render this record
    path.write_text(yaml.safe_dump(data))
    report = json.loads(_cli("spec", "check", str(path), "--json", code=1))
    assert any("does not render the example" in p for p in report["problems"]), report

    (tmp_path / "broken.xml").write_text("<View><Image name='image' value='$image'/><RectangleLabels")
    data["export"]["answer"] = "json"
    path.write_text(yaml.safe_dump(data))
    report = json.loads(_cli("spec", "check", str(path), "--json", code=1))
    assert any("label config does not parse" in p for p in report["problems"]), report


def test_dag_params_offer_user_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DAGs' spec choices (Param enums) come from the same registry, user folders included."""
    import importlib

    folder = _user_spec(tmp_path / "team")
    monkeypatch.setenv("LABELLOOP_SPECS__DIRS", str(folder))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "dags"))
    common = importlib.import_module("_common")
    assert {"shelf_caption", "ocr_lines"} <= set(common.spec_names())
