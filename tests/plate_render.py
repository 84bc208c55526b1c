"""Rendered Chinese plates on car-like backgrounds, with the truth known (issue 17's test data).

No real plate photo with a licence that allows redistribution was available here, so the tests
and ``bench/plates.py`` draw their own: every format of :mod:`labelloop.prelabel.plates.syntax`
in its colours, in the CJK font of Debian's ``fonts-wqy-microhei`` (scripts/ensure-fonts.sh),
with perspective, blur, noise, JPEG compression and small plate sizes. A seed fixes every
choice, so a failure can be reproduced image by image.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from labelloop.prelabel.plates.syntax import PROVINCES

FONT_PATHS = [
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc"),
]
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
SERIAL = LETTERS + "0123456789"
DIGITS = "0123456789"

#: plate colour -> (background RGB, text RGB)
COLOURS = {
    "blue": ((18, 62, 178), (245, 245, 245)),
    "yellow": ((236, 190, 24), (20, 20, 20)),
    "green": ((120, 200, 120), (20, 20, 20)),
    "white": ((238, 238, 238), (20, 20, 20)),
    "black": ((22, 22, 22), (245, 245, 245)),
}
KINDS = [
    "ordinary_blue",
    "ordinary_yellow",
    "new_energy_small",
    "new_energy_large",
    "police",
    "coach",
    "trailer",
    "hk_macao",
    "consulate",
    "embassy",
]


def cjk_font_path() -> Path | None:
    return next((p for p in FONT_PATHS if p.is_file()), None)


@dataclass
class RenderedPlate:
    plate: str
    colour: str
    kind: str
    image: bytes  # JPEG
    box: list[int]  # [x1, y1, x2, y2] of the plate in the image
    width: int
    height: int


def random_plate(rng: random.Random, kind: str) -> tuple[str, str]:
    """A plate number of ``kind`` and its colour."""
    prov = rng.choice(PROVINCES)
    letter = rng.choice(LETTERS)

    def pick(chars: str, n: int) -> str:
        return "".join(rng.choice(chars) for _ in range(n))

    if kind == "ordinary_blue":
        return prov + letter + pick(DIGITS, 2) + pick(SERIAL, 3), "blue"
    if kind == "ordinary_yellow":
        return prov + letter + pick(SERIAL, 1) + pick(DIGITS, 4), "yellow"
    if kind == "new_energy_small":
        return prov + letter + rng.choice("DF") + pick(SERIAL, 1) + pick(DIGITS, 4), "green"
    if kind == "new_energy_large":
        return prov + letter + pick(DIGITS, 5) + rng.choice("DF"), "green"
    if kind == "police":
        return prov + letter + pick(DIGITS, 4) + "警", "white"
    if kind == "coach":
        return prov + letter + pick(DIGITS, 4) + "学", "yellow"
    if kind == "trailer":
        return prov + letter + pick(DIGITS, 4) + "挂", "yellow"
    if kind == "hk_macao":
        return "粤Z" + pick(DIGITS, 4) + rng.choice("港澳"), "black"
    if kind == "consulate":
        return prov + letter + pick(DIGITS, 4) + "领", "black"
    if kind == "embassy":
        return "使" + pick(DIGITS, 6), "black"
    raise ValueError(kind)


def draw_plate(plate: str, colour: str, font_path: Path, scale: float = 1.0) -> Image.Image:
    """The flat plate: 440x140 (480x140 for 8 characters), a border, a dot after the second char."""
    bg, fg = COLOURS[colour]
    w = int((480 if len(plate) == 8 else 440) * scale)
    h = int(140 * scale)
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    d.rectangle([4, 4, w - 5, h - 5], outline=fg, width=max(2, int(4 * scale)))
    font = ImageFont.truetype(str(font_path), 120)
    n = len(plate)
    # real plate characters are narrow (45 x 90 mm): each glyph is drawn alone, cropped and
    # squeezed into its slot
    slot = (w - 40 * scale) / (n + 0.4)
    gw, gh = int(slot * 0.86), int(h * 0.66)
    x = 20 * scale
    for i, ch in enumerate(plate):
        glyph = Image.new("L", (160, 160), 0)
        gd = ImageDraw.Draw(glyph)
        gd.text((10, 0), ch, font=font, fill=255)
        bbox = glyph.getbbox() or (0, 0, 1, 1)
        glyph = glyph.crop(bbox).resize((gw, gh), Image.Resampling.LANCZOS)
        ink = Image.new("RGB", glyph.size, (200, 20, 20) if ch == "警" else fg)
        img.paste(ink, (int(x + (slot - gw) / 2), int((h - gh) / 2)), glyph)
        x += slot
        if i == 1:  # the separating dot
            r = 6 * scale
            d.ellipse([x + slot * 0.2 - r, h / 2 - r, x + slot * 0.2 + r, h / 2 + r], fill=fg)
            x += slot * 0.4
    return img


def car_background(rng: random.Random, width: int, height: int) -> Image.Image:
    """A car front: body colour gradient, grille, headlights, bumper, road; enough clutter to detect in."""
    body = tuple(rng.randint(20, 235) for _ in range(3))
    arr = np.zeros((height, width, 3), dtype=np.float32)
    grad = np.linspace(0.75, 1.15, height)[:, None, None]
    arr[:] = np.array(body, dtype=np.float32)[None, None, :] * grad
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    sky = tuple(rng.randint(120, 230) for _ in range(3))
    d.rectangle([0, 0, width, int(height * 0.18)], fill=sky)
    d.rectangle([0, int(height * 0.9), width, height], fill=(70, 70, 75))
    gx1, gx2 = int(width * 0.25), int(width * 0.75)
    gy1, gy2 = int(height * 0.35), int(height * 0.52)
    d.rectangle([gx1, gy1, gx2, gy2], fill=(30, 30, 30))
    for k in range(gy1, gy2, 8):
        d.line([gx1, k, gx2, k], fill=(90, 90, 90), width=2)
    for cx in (int(width * 0.13), int(width * 0.87)):
        d.ellipse([cx - 45, gy1 - 5, cx + 45, gy1 + 40], fill=(235, 235, 210), outline=(60, 60, 60), width=3)
    # a sticker with text-like marks, the kind of thing loose patterns mistake for a plate
    sx, sy = rng.randint(10, width // 3), rng.randint(int(height * 0.2), int(height * 0.3))
    d.rectangle([sx, sy, sx + 90, sy + 26], fill=(250, 250, 250))
    d.text((sx + 6, sy + 4), "".join(rng.choice(SERIAL) for _ in range(5)), fill=(0, 0, 0))
    return img


def _perspective_coeffs(src: list[tuple[float, float]], dst: list[tuple[float, float]]) -> list[float]:
    """PIL's PERSPECTIVE transform maps output to input: solve for the 8 coefficients."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return list(np.linalg.solve(np.array(rows, dtype=float), np.array(rhs, dtype=float)))


def render_scene(rng: random.Random, kind: str, font_path: Path, *, hard: bool = True) -> RenderedPlate:
    plate, colour = random_plate(rng, kind)
    width, height = rng.choice([(640, 480), (800, 600), (960, 720)])
    scene = car_background(rng, width, height)
    flat = draw_plate(plate, colour, font_path)
    pw = int(width * rng.uniform(0.16, 0.36) if hard else width * 0.3)
    ph = int(pw * flat.height / flat.width)
    cx = int(width * rng.uniform(0.4, 0.6))
    cy = int(height * rng.uniform(0.6, 0.75))
    x1, y1 = cx - pw // 2, cy - ph // 2
    j = (lambda: rng.uniform(-0.12, 0.12) * ph) if hard else (lambda: 0.0)
    dst = [(x1 + j(), y1 + j()), (x1 + pw + j(), y1 + j()), (x1 + pw + j(), y1 + ph + j()), (x1 + j(), y1 + ph + j())]
    skew = rng.uniform(-0.08, 0.08) * ph if hard else 0.0
    dst = [(x, y + skew * (1 if i in (1, 2) else -1)) for i, (x, y) in enumerate(dst)]
    src = [(0, 0), (flat.width, 0), (flat.width, flat.height), (0, flat.height)]
    coeffs = _perspective_coeffs(src, dst)
    warped = flat.transform((width, height), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC)
    mask = Image.new("L", flat.size, 255).transform(
        (width, height), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC
    )
    scene.paste(warped, (0, 0), mask)
    if hard:
        scene = scene.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.4)))
        arr = np.asarray(scene).astype(np.float32)
        arr *= rng.uniform(0.6, 1.2)  # exposure
        arr += np.random.default_rng(rng.randint(0, 2**31)).normal(0, rng.uniform(2, 12), arr.shape)
        scene = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    scene.save(buf, "JPEG", quality=rng.randint(55, 90) if hard else 92)
    xs, ys = [p[0] for p in dst], [p[1] for p in dst]
    box = [int(max(0, min(xs))), int(max(0, min(ys))), int(min(width, max(xs))), int(min(height, max(ys)))]
    return RenderedPlate(plate, colour, kind, buf.getvalue(), box, width, height)


def render_set(n: int, seed: int = 0, *, hard: bool = True) -> list[RenderedPlate]:
    """``n`` scenes cycling through every plate kind."""
    font = cjk_font_path()
    if font is None:
        raise RuntimeError("no CJK font: run scripts/ensure-fonts.sh (Debian fonts-wqy-microhei)")
    rng = random.Random(seed)
    return [render_scene(rng, KINDS[i % len(KINDS)], font, hard=hard) for i in range(n)]
