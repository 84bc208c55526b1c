"""A simulated pre-labeller for the calibration tests: records of F fields, each with a confidence and a
hidden "a reviewer would change it", with how errors correlate across fields chosen per scenario.

Confidence of a correct value is high (Beta(25, 1)), of a wrong one lower (Beta(4, 2)), the way a VLM's
token probabilities behave; the scenarios change who is wrong and where:

- ``independent``: every field wrong with probability 3%, independently.
- ``harder``: 30% of records are hard (blurred, night shots): every field errs at 12% and even correct
  values are less sure. Records sent to review for one low field are *more* often wrong elsewhere than
  audited ones.
- ``easier``: 30% of records have a field-0 the model is always unsure of (a plate it can't read, but
  guesses right) and clean other fields; in the rest, fields err at 0.8% (``easier_per_field``: 4%)
  with *confident* errors. Records sent to review for one low field are *less* often wrong elsewhere
  than audited ones: pooling them with the audit sample makes the auto-accept region look cleaner than it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

F = 3


def draw(rng: np.random.Generator, n: int, scenario: str, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, wrong), both (n, F). ``shift`` multiplies error probabilities (a distribution shift)."""
    if scenario == "independent":
        wrong = rng.random((n, F)) < 0.03 * shift
        conf = np.where(wrong, rng.beta(4, 2, (n, F)), rng.beta(25, 1, (n, F)))
    elif scenario == "harder":
        hard = rng.random((n, 1)) < 0.3
        wrong = rng.random((n, F)) < np.where(hard, 0.12, 0.005) * shift
        right_conf = np.where(hard, rng.beta(12, 1, (n, F)), rng.beta(30, 1, (n, F)))
        conf = np.where(wrong, rng.beta(4, 2, (n, F)), right_conf)
    elif scenario in ("easier", "easier_per_field"):
        odd = rng.random((n, 1)) < 0.3
        q = np.where(odd, 0.002, 0.008 if scenario == "easier" else 0.04) * shift
        wrong = rng.random((n, F)) < q
        wrong[:, :1] &= ~odd  # field 0 of the odd records is right, just unsure
        conf = np.where(wrong, rng.beta(12, 1.5, (n, F)), rng.beta(25, 1, (n, F)))
        conf[:, 0] = np.where(odd[:, 0], rng.beta(3, 3, n), conf[:, 0])
    else:
        raise ValueError(scenario)
    return conf, wrong


@dataclass
class Truth:
    """Population risks from a large fresh sample: what the simulator knows and calibration doesn't."""

    conf: np.ndarray
    wrong: np.ndarray

    @classmethod
    def of(cls, scenario: str, n: int = 400_000, shift: float = 1.0, seed: int = 10_000) -> Truth:
        return cls(*draw(np.random.default_rng(seed), n, scenario, shift))

    def item_risk(self, tau: float | None) -> float:
        """Share of auto-accepted records (every field >= tau) with any wrong field."""
        if tau is None:
            return 0.0
        m = self.conf.min(1) >= tau
        return float(self.wrong.any(1)[m].mean()) if m.any() else 0.0

    def item_risk_per_field_thresholds(self, taus: list[float | None]) -> float:
        m = np.ones(self.conf.shape[0], bool)
        for f, t in enumerate(taus):
            m &= False if t is None else self.conf[:, f] >= t
        return float(self.wrong.any(1)[m].mean()) if m.any() else 0.0

    def field_risk(self, f: int, tau: float | None, taus: list[float | None] | None = None) -> float:
        """Error share of field f among auto-accepted records (all fields at or above their thresholds)."""
        taus = taus if taus is not None else [tau] * self.conf.shape[1]
        m = np.ones(self.conf.shape[0], bool)
        for g, t in enumerate(taus):
            m &= False if t is None else self.conf[:, g] >= t
        return float(self.wrong[m, f].mean()) if m.any() else 0.0

    def coverage(self, tau: float | None) -> float:
        return 0.0 if tau is None else float((self.conf.min(1) >= tau).mean())

    def oracle(self, target: float, grid: np.ndarray) -> float:
        """Coverage of the lowest grid threshold whose true item risk meets the target (descending,
        stopping where it first fails, the way a monotone risk would be searched)."""
        best = None
        for tau in grid:
            if self.item_risk(float(tau)) > target:
                break
            best = float(tau)
        return self.coverage(best)


class Loop:
    """Nightly routing with the thresholds in force: below -> review (probability 1), above -> audit
    sample at ``audit_rate`` (else auto-accepted, never seen by calibration); no threshold -> full review.
    Accumulates the reviewed records with their sampling design, as the correction log would."""

    def __init__(self, rng: np.random.Generator, scenario: str, audit_rate: float = 0.1) -> None:
        self.rng, self.scenario, self.audit_rate = rng, scenario, audit_rate
        self.conf: list[np.ndarray] = []
        self.wrong: list[np.ndarray] = []
        self.route: list[np.ndarray] = []  # 0 full review, 1 review, 2 audit
        self.pi: list[np.ndarray] = []
        self.floor: list[np.ndarray] = []

    def night(self, n: int, taus: list[float | None], shift: float = 1.0) -> None:
        conf, wrong = draw(self.rng, n, self.scenario, shift)
        if any(t is None for t in taus):
            keep = np.ones(n, bool)
            route = np.zeros(n, int)
            pi = np.ones(n)
            floor = np.ones(n)
        else:
            passes = np.all(conf >= np.asarray(taus, float)[None, :], axis=1)
            audited = self.rng.random(n) < self.audit_rate
            keep = ~passes | audited
            route = np.where(passes, 2, 1)[keep]
            pi = np.where(passes, self.audit_rate, 1.0)[keep]
            floor = np.full(int(keep.sum()), self.audit_rate)
        self.conf.append(conf[keep])
        self.wrong.append(wrong[keep])
        self.route.append(route)
        self.pi.append(pi)
        self.floor.append(floor)

    def data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.concatenate(self.conf),
            np.concatenate(self.wrong),
            np.concatenate(self.pi),
            np.concatenate(self.floor),
        )


# --------------------------------------------------------------------------- a correction log in the DB


def log_records(
    db: Any,
    records: list[tuple[dict[str, tuple[float, bool]], str]],
    *,
    spec: str = "vehicle_extraction",
    model: str = "qwen",
    mv: str = "v1",
    ph: str = "p1",
    audit_rate: float = 0.05,
) -> None:
    """Insert reviewed records the way routing and review sync would: per record an item, a prediction,
    a routing decision with its sampling design, an annotation and one correction row per field.
    ``records``: ({field: (confidence, changed)}, route); "review" rows stand for the full-review phase
    (a random sample, probability 1), "audit" rows for the hash sample at ``audit_rate``."""
    from sqlalchemy import func, select
    from synthetic import synthetic_items

    from labelloop.db import Annotation, FieldCorrection, Item, Prediction, ReviewTask
    from labelloop.db.types import utcnow

    with db.transaction() as s:
        base = int(s.scalar(select(func.count()).select_from(Item)) or 0)
        items = synthetic_items(s, (f"calibration-record-{base + i}" for i in range(len(records))))
        for i, ((fields, route), item) in enumerate(zip(records, items, strict=True)):
            n = base + i
            pred = Prediction(
                item_id=item.id,
                spec=spec,
                backend="vllm",
                model=model,
                model_version=mv,
                prompt_hash=ph,
                status="ok",
                record={f: "A" for f in fields},
                field_confidence={f: c for f, (c, _) in fields.items()},
                confidence=min(c for c, _ in fields.values()),
            )
            s.add(pred)
            s.flush()
            task = ReviewTask(
                prediction_id=pred.id,
                item_id=item.id,
                spec=spec,
                route=route,
                status="completed",
                external_id=f"t{n}",
                design="audit" if route == "audit" else "full_review",
                inclusion_prob=audit_rate if route == "audit" else 1.0,
                audit_rate=audit_rate,
            )
            s.add(task)
            s.flush()
            ann = Annotation(
                review_task_id=task.id,
                ls_annotation_id=n,
                ls_task_id=n,
                ls_updated_at=utcnow(),
                lead_time_s=12.0,
                result=[],
                record={f: "B" if ch else "A" for f, (_, ch) in fields.items()},
            )
            s.add(ann)
            s.flush()
            for f, (conf, changed) in fields.items():
                s.add(
                    FieldCorrection(
                        annotation_id=ann.id,
                        review_task_id=task.id,
                        item_id=item.id,
                        spec=spec,
                        field=f,
                        model=model,
                        model_version=mv,
                        prompt_hash=ph,
                        route=route,
                        model_value="A",
                        model_confidence=conf,
                        human_value="B" if changed else "A",
                        changed=changed,
                        distance=float(changed),
                    )
                )
