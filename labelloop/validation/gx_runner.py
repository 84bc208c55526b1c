"""Run checks with Great Expectations 1.x in an ephemeral context, inside our own process.

The GX Airflow provider cannot be installed beside Airflow 3.3 (structlog pin), and we want the
same validation from the CLI and tests anyway, so GX runs as a library: an ephemeral (in-memory)
context, progress bars off, analytics off, a pandas batch per frame, ``COMPLETE`` results with
``unexpected_index_column_names`` so every failing row comes back with its record id.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from labelloop.validation.frames import PARTS_INDEX, RECORDS_INDEX
from labelloop.validation.suite import Check

INDEX_COLUMNS: dict[str, list[str]] = {"records": RECORDS_INDEX, "parts": PARTS_INDEX}


class ValidationError(RuntimeError):
    """GX itself failed (an expectation raised), as opposed to records failing checks."""


@dataclass
class CheckResult:
    check: Check
    success: bool
    element_count: int
    unexpected_count: int
    #: one dict per failing row: the index columns plus the checked column's value
    rows: list[dict[str, Any]] = field(default_factory=list)


def to_py(value: Any) -> Any:
    """numpy scalars -> Python, NaN -> None: GX hands back numpy values that JSON refuses."""
    if hasattr(value, "item") and not isinstance(value, list | dict | str):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class CheckRunner:
    """GX validation definitions built once per spec and run on many batches of frames.

    Validation streams records in chunks; building the context, suites and definitions once and
    passing each chunk's DataFrame as a batch parameter (GX's ``whole_dataframe`` batch
    definition) keeps the per-chunk cost to the checks themselves.
    """

    def __init__(self, checks: Sequence[Check]) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.checks = list(checks)
        self._gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self._source = self.context.data_sources.add_pandas(name="labelloop")
        self._definitions: dict[str, Any] = {}

    def _definition(self, frame_name: str, frame_checks: list[Check]) -> Any:
        if frame_name not in self._definitions:
            gx = self._gx
            asset = self._source.add_dataframe_asset(name=frame_name)
            batch = asset.add_batch_definition_whole_dataframe("all")
            suite = self.context.suites.add(
                gx.ExpectationSuite(name=f"labelloop.{frame_name}", expectations=[c.build() for c in frame_checks])
            )
            self._definitions[frame_name] = self.context.validation_definitions.add(
                gx.ValidationDefinition(name=f"labelloop.{frame_name}", data=batch, suite=suite)
            )
        return self._definitions[frame_name]

    def run(self, frames: dict[str, pd.DataFrame]) -> list[CheckResult]:
        """Validate each frame against its checks; results come back in ``checks`` order."""
        by_check: dict[str, CheckResult] = {}
        for frame_name, df in frames.items():
            frame_checks = [c for c in self.checks if c.frame == frame_name]
            if not frame_checks:
                continue
            result = self._definition(frame_name, frame_checks).run(
                batch_parameters={"dataframe": df},
                result_format={
                    "result_format": "COMPLETE",
                    "unexpected_index_column_names": INDEX_COLUMNS[frame_name],
                },
            )
            known = {c.check: c for c in frame_checks}
            for r in result.results:
                check = known[r.expectation_config.meta["check"]]
                info = r.exception_info or {}
                if info.get("raised_exception"):
                    raise ValidationError(
                        f"{check.check} ({check.type} on {check.column}): {info.get('exception_message')}"
                    )
                res = r.result or {}
                rows = [{k: to_py(v) for k, v in row.items()} for row in res.get("unexpected_index_list") or []]
                by_check[check.check] = CheckResult(
                    check=check,
                    success=bool(r.success),
                    element_count=int(res.get("element_count") or len(df)),
                    unexpected_count=int(res.get("unexpected_count") or 0),
                    rows=rows,
                )
        return [by_check[c.check] for c in self.checks if c.check in by_check]


def run_checks(frames: dict[str, pd.DataFrame], checks: Sequence[Check]) -> list[CheckResult]:
    """Validate each frame against its checks once (a fresh :class:`CheckRunner`)."""
    return CheckRunner(checks).run(frames)
