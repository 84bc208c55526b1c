"""Find and load task specs: the shipped ones (package data) plus those in the folders a deployment
names (``LABELLOOP_SPECS__DIRS``), so a team writes its own specs without touching the package.

A spec folder holds ``NAME.yaml`` and the label config it names, either beside it or in a
``label_config/`` subfolder (the layout of the shipped specs). Shipped files are read through
``importlib.resources``, so a plain wheel install finds them as well as a source checkout.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import ValidationError

from labelloop.specs.model import TaskSpec

if TYPE_CHECKING:
    from labelloop.config import Settings


def shipped_dir() -> Path:
    """The folder of the shipped specs; a real folder for both checkouts and wheel installs
    (labelloop is never imported from a zip, so ``as_file`` is not needed)."""
    return Path(str(resources.files("labelloop.specs")))


class SpecError(ValueError):
    pass


def load_spec_file(path: Path) -> TaskSpec:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from e
    except OSError as e:
        raise SpecError(f"{path}: cannot read: {e}") from e
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


def label_config_path(spec: TaskSpec, fallback_dir: Path | None = None) -> Path:
    """Where ``spec``'s label config is: beside its YAML, or in ``label_config/`` next to it."""
    folders = [spec.source_path.parent] if spec.source_path else []
    if fallback_dir is not None:
        folders.append(fallback_dir)
    tried = []
    for folder in folders:
        for candidate in (folder / spec.label_config, folder / "label_config" / spec.label_config):
            if candidate.is_file():
                return candidate
            tried.append(str(candidate))
    raise SpecError(f"spec {spec.name}: label config {spec.label_config!r} not found (looked at {', '.join(tried)})")


class SpecRegistry:
    """All specs known to a deployment, by name: shipped ones, then each extra folder in order
    (a later spec of the same name replaces an earlier one, so a team can override a shipped spec)."""

    def __init__(self, dirs: Iterable[Path] = (), label_config_dir: Path | None = None) -> None:
        self.label_config_dir = label_config_dir
        self.dirs = [Path(d) for d in dirs]
        self._specs: dict[str, TaskSpec] = {}
        for d in (shipped_dir(), *self.dirs):
            if not d.is_dir():
                raise SpecError(f"spec folder {d} does not exist (LABELLOOP_SPECS__DIRS)")
            for path in sorted(d.glob("*.yaml")):
                spec = load_spec_file(path)
                self._specs[spec.name] = spec

    @classmethod
    def from_settings(cls, settings: Settings) -> SpecRegistry:
        return cls(settings.specs.dirs)

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

    def is_shipped(self, spec: TaskSpec) -> bool:
        return spec.source_path is not None and spec.source_path.parent == shipped_dir()

    def label_config_path(self, spec: TaskSpec) -> Path:
        return label_config_path(spec, self.label_config_dir)

    def label_config(self, spec: TaskSpec) -> str:
        return self.label_config_path(spec).read_text(encoding="utf-8")
