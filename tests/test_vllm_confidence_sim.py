"""Which per-field confidence is earned: min token probability, geometric mean or joint probability.

Simulated answers, many seeds. A value is a run of tokens, each with the model's probability
``p`` for the token it chose. Most tokens are near-certain (continuations, forced schema
tokens: ``1 - Beta(1, 300)``), a share ``q`` are decisions (``0.3 + 0.7 Beta(2, 1.2)``). Each
token deviates from what a careful reviewer would have written with probability ``1 - p**c``
(``c = 1``: token probabilities are calibrated; ``c = 1.5``: the model is overconfident, as
greedy VLM decoding tends to be). A deviation is an error the reviewer corrects with probability
``e``: always for exact values (plate numbers, IDs, choices: ``e = 1``, 1 to 12 tokens), a
quarter of the time for free text (captions, prose OCR lines: most deviations are paraphrases,
``e = 0.25``, 3 to 80 tokens, log-uniform). A value is correct when no token is an error.

The aggregators are compared by Brier score and by the reliability diagram (expected calibration
error over ten bins) on a realistic mix (half exact, half free text), with calibrated and with
overconfident tokens. Findings the tests pin down (they fail if the code or the model changes
them):

* on the mix, ``min`` has the lowest Brier score in every seed, with either token calibration;
  that is why it is the default (``labelloop.prelabel.vllm.confidence.DEFAULT_AGGREGATOR``);
* long free-text values are wrong more often (more decisions), and ``min`` falls with length as
  far as accuracy does; ``joint`` falls far below it (a long caption that is right more often
  than not scores 0.1) and ``geomean`` hardly moves (it over-trusts long values);
* on exact values alone ``joint`` is the best calibrated (every token must be right, and the
  product is exactly that probability when tokens are calibrated): a deployment whose specs are
  all exact fields can set ``vllm.confidence_aggregator=joint``. This is recorded with every
  prediction and part of its identity, so thresholds follow the choice.

The figures are computed with the same aggregation the backend runs: a sample of simulated
answers goes through :func:`field_confidences` as JSON with token logprobs and must give the
simulation's figures.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from labelloop.config import VLLMSettings
from labelloop.prelabel.vllm.confidence import AGGREGATORS, DEFAULT_AGGREGATOR, TokenLogprob, field_confidences
from labelloop.specs import SpecRegistry

SEEDS = range(40)
N_PER_KIND = 600
CAPTION = SpecRegistry().get("caption")


def simulate(rng: np.random.Generator, n: int, kind: str, overconf: float = 1.0) -> dict[str, np.ndarray]:
    """``n`` values of one kind: per value the three scores, the verdict and the length."""
    if kind == "exact":
        lengths, e = rng.integers(1, 13, n), 1.0
    else:
        lengths, e = np.exp(rng.uniform(math.log(3), math.log(80), n)).astype(int), 0.25
    total = int(lengths.sum())
    decision = rng.random(total) < 0.15
    p = np.where(decision, 0.3 + 0.7 * rng.beta(2, 1.2, total), 1 - rng.beta(1, 300, total))
    error = (rng.random(total) < 1 - p**overconf) & (rng.random(total) < e)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    lp = np.log(p)
    return {
        "min": np.exp(np.minimum.reduceat(lp, starts)),
        "geomean": np.exp(np.add.reduceat(lp, starts) / lengths),
        "joint": np.exp(np.add.reduceat(lp, starts)),
        "correct": ~np.logical_or.reduceat(error, starts),
        "length": lengths,
        "token_p": np.split(p, np.cumsum(lengths)[:-1]),
    }


def mix(rng: np.random.Generator, overconf: float) -> dict[str, np.ndarray]:
    a, b = simulate(rng, N_PER_KIND, "exact", overconf), simulate(rng, N_PER_KIND, "free", overconf)
    return {k: np.concatenate([a[k], b[k]]) for k in ("min", "geomean", "joint", "correct", "length")}


def brier(score: np.ndarray, correct: np.ndarray) -> float:
    return float(np.mean((score - correct) ** 2))


def reliability(score: np.ndarray, correct: np.ndarray, bins: int = 10) -> tuple[list[tuple[float, float, int]], float]:
    """The reliability diagram (mean score, observed accuracy, count per bin) and its ECE."""
    idx = np.minimum((score * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            rows.append((float(score[m].mean()), float(correct[m].mean()), int(m.sum())))
            ece += m.mean() * abs(score[m].mean() - correct[m].mean())
    return rows, float(ece)


def scores_by_seed(kind: str, overconf: float) -> np.ndarray:
    """Brier score per seed (rows) and aggregator (columns, in AGGREGATORS order)."""
    out = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        sim = mix(rng, overconf) if kind == "mix" else simulate(rng, 2 * N_PER_KIND, kind, overconf)
        out.append([brier(sim[a], sim["correct"]) for a in AGGREGATORS])
    return np.array(out)


@pytest.mark.parametrize("overconf", [1.0, 1.5], ids=["calibrated_tokens", "overconfident_tokens"])
def test_min_is_best_calibrated_on_a_realistic_mix_in_every_seed(overconf: float) -> None:
    b = scores_by_seed("mix", overconf)
    best = [AGGREGATORS[i] for i in b.argmin(axis=1)]
    assert best.count("min") == len(SEEDS), dict(zip(AGGREGATORS, b.mean(axis=0).round(4), strict=True))
    # and by the reliability diagram: min's expected calibration error is the smallest on average
    eces = {a: [] for a in AGGREGATORS}
    for seed in SEEDS[:10]:
        sim = mix(np.random.default_rng(seed), overconf)
        for a in AGGREGATORS:
            eces[a].append(reliability(sim[a], sim["correct"])[1])
    mean_ece = {a: float(np.mean(v)) for a, v in eces.items()}
    assert min(mean_ece, key=mean_ece.get) == "min", mean_ece


def test_the_default_aggregator_is_the_simulations_winner() -> None:
    assert DEFAULT_AGGREGATOR == "min" == VLLMSettings().confidence_aggregator


def test_min_follows_accuracy_across_lengths_where_joint_and_geomean_do_not() -> None:
    """Free text, by length: long values really are wrong more often (more decisions), so an
    earned score falls with length exactly as far as accuracy does. Per length bucket, min's mean
    stays within 0.2 of the observed accuracy; joint falls far below it (a long caption that is
    right more often than not scores 0.1) and geomean stays far above it."""
    sim = simulate(np.random.default_rng(7), 4000, "free")
    gaps: dict[str, list[float]] = {a: [] for a in AGGREGATORS}
    for lo, hi in ((1, 8), (9, 20), (21, 40), (41, 80)):
        m = (sim["length"] >= lo) & (sim["length"] <= hi)
        assert m.sum() > 300
        acc = sim["correct"][m].mean()
        for a in AGGREGATORS:
            gaps[a].append(float(sim[a][m].mean() - acc))
    assert max(abs(g) for g in gaps["min"]) < 0.2, gaps
    assert gaps["joint"][-1] < -0.35 and gaps["joint"][-1] < gaps["joint"][0] - 0.3, gaps
    assert gaps["geomean"][-1] > 0.3, gaps


def test_on_exact_values_alone_joint_is_best_so_the_choice_is_a_setting() -> None:
    b = scores_by_seed("exact", 1.0)
    assert [AGGREGATORS[i] for i in b.argmin(axis=1)].count("joint") == len(SEEDS)


def test_the_backend_aggregation_gives_the_simulations_figures() -> None:
    """Simulated values as the model would write them (a caption JSON, one token per character
    run, structural tokens certain): field_confidences reproduces min, geomean and joint."""
    sim = simulate(np.random.default_rng(3), 40, "free")
    for i, token_p in enumerate(sim["token_p"]):
        words = [f"w{j}" for j in range(len(token_p))]
        head = '{"caption": "'
        tokens = [TokenLogprob(head, 0.0)]
        tokens += [TokenLogprob(w, math.log(p)) for w, p in zip(words, token_p, strict=True)]
        tokens.append(TokenLogprob('"}', 0.0))
        text = head + "".join(words) + '"}'
        assert json.loads(text)["caption"] == "".join(words)
        for agg in AGGREGATORS:
            routing, detail = field_confidences(text, tokens, CAPTION, aggregator=agg)
            assert routing["caption"] == pytest.approx(sim[agg][i], rel=1e-9), (agg, i)
            assert detail["caption"]["n_tokens"] == len(token_p)


def test_unknown_is_zero_never_one() -> None:
    for agg in AGGREGATORS:
        routing, _detail = field_confidences('{"caption": "x"}', [], CAPTION, aggregator=agg)
        assert routing == {"caption": 0.0}
        routing, _ = field_confidences('{"other": "x"}', [TokenLogprob('{"other": "x"}', 0.0)], CAPTION, aggregator=agg)
        assert routing == {"caption": 0.0}, "a field absent from the answer is unknown, not certain"
    with pytest.raises(ValueError, match="unknown confidence aggregator"):
        field_confidences('{"caption": "x"}', [], CAPTION, aggregator="mean")
