"""Find and load task specs: the shipped ones in this folder plus any in extra folders."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml
from pydantic import ValidationError

from labelloop.specs.model import TaskSpec

SHIPPED_DIR = Path(__file__).parent
LABEL_CONFIG_DIR = Path(__file__).resolve().parents[2] / "label_config"


class SpecError(ValueError):
    pass


def load_spec_file(path: Path) -> TaskSpec:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    try:
        spec = TaskSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{path}: {e}") from e
    if spec.name != path.stem:
        raise SpecError(f"{path}: spec name {spec.name!r} must match the file name")
    spec.source_path = path
    return spec


class SpecRegistry:
    """All specs known to a deployment, by name."""

    def __init__(self, dirs: Iterable[Path] = (), label_config_dir: Path = LABEL_CONFIG_DIR) -> None:
        self.label_config_dir = label_config_dir
        self._specs: dict[str, TaskSpec] = {}
        for d in (SHIPPED_DIR, *dirs):
            for path in sorted(Path(d).glob("*.yaml")):
                spec = load_spec_file(path)
                self._specs[spec.name] = spec

    def get(self, name: str) -> TaskSpec:
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(sorted(self._specs)) or "none"
            raise SpecError(f"unknown task spec {name!r}; known specs: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._specs.values())

    def label_config(self, spec: TaskSpec) -> str:
        path = self.label_config_dir / spec.label_config
        if not path.is_file():
            raise SpecError(f"spec {spec.name}: label config {path} not found")
        return path.read_text(encoding="utf-8")
