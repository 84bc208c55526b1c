"""Brier score and expected calibration error of the three per-field confidence aggregators.

On the simulated answers of ``tests/test_vllm_confidence_sim.py`` (token logprobs and reviewer
verdicts for exact and free-text values, calibrated and overconfident tokens), over many seeds:
mean Brier score per aggregator and scenario, the ECE of the reliability diagram on the mix, and
how often each aggregator wins. The baseline is ``joint`` (what the backend used before), measured
in the same run; ``brier_ratio_min_vs_joint`` < 1 means min is better calibrated.

Run: ``.venv/bin/python bench/confidence_aggregators.py [--seeds 40]``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_vllm_confidence_sim as sim  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=40)
    args = p.parse_args()
    sim.SEEDS = range(args.seeds)
    out: dict[str, object] = {"bench": "confidence_aggregators", "seeds": args.seeds}
    for kind, overconf in (("mix", 1.0), ("mix", 1.5), ("exact", 1.0), ("free", 1.0)):
        b = sim.scores_by_seed(kind, overconf)
        name = f"{kind}_{'calibrated' if overconf == 1.0 else 'overconfident'}"
        out[f"brier_{name}"] = {a: round(float(v), 4) for a, v in zip(sim.AGGREGATORS, b.mean(axis=0), strict=True)}
        out[f"wins_{name}"] = {a: int((b.argmin(axis=1) == i).sum()) for i, a in enumerate(sim.AGGREGATORS)}
    eces: dict[str, list[float]] = {a: [] for a in sim.AGGREGATORS}
    for seed in range(args.seeds):
        m = sim.mix(np.random.default_rng(seed), 1.0)
        for a in sim.AGGREGATORS:
            eces[a].append(sim.reliability(m[a], m["correct"])[1])
    out["ece_mix_calibrated"] = {a: round(float(np.mean(v)), 4) for a, v in eces.items()}
    mix = out["brier_mix_calibrated"]
    assert isinstance(mix, dict)
    out["brier_ratio_min_vs_joint"] = round(mix["min"] / mix["joint"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
