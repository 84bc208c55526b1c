"""Qwen-VL image resizing and the box conversions that depend on it.

Qwen2.5-VL answers grounding questions in absolute pixels of the image *as its processor resized
it* (``smart_resize``: both sides multiples of 28, area within [min_pixels, max_pixels], aspect
kept). Qwen2-VL and Qwen3-VL answer in a relative 0-1000 grid instead; Qwen3-VL's processor
resizes to multiples of 32 (patch 16 x merge 2), so ``factor`` is a parameter throughout
(:mod:`labelloop.prelabel.vllm.family` says which one a model uses). We store boxes once, in
original pixels (after EXIF orientation), and convert only at the model edge, here.

We resize on the client with exactly the processor's algorithm, so the image we send *is* the
image the model sees: the server's own ``smart_resize`` of an already-resized image is the
identity (sides are already multiples of 28 inside the bounds), hence no hidden second rescale
and no dependence on the server's ``--mm-processor-kwargs``. That only holds when the server's
min/max_pixels bracket ours; ``tests/test_qwen_resize.py`` checks the fixed point.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageOps

#: qwen-vl-utils ``vision_process.py`` constants (Qwen2/2.5-VL: patch 14 x merge 2 = 28)
IMAGE_FACTOR = 28
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16384 * 28 * 28
MAX_RATIO = 200

CoordinateMode = Literal["absolute_resized", "relative_1000"]
Box = list[int]


def round_by_factor(number: float, factor: int) -> int:
    """Closest multiple of ``factor`` (Python's round: ties to even, as upstream)."""
    return round(number / factor) * factor


def ceil_by_factor(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def floor_by_factor(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def smart_resize(
    height: int,
    width: int,
    factor: int = IMAGE_FACTOR,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """(height, width) the Qwen2.5-VL processor resizes an image to.

    Port of ``qwen_vl_utils.vision_process.smart_resize``: round each side to the nearest multiple
    of ``factor``; if the area exceeds ``max_pixels`` scale down (floor), if it is below
    ``min_pixels`` scale up (ceil), keeping the aspect ratio. The one addition is the
    ``max(factor, ...)`` guard on the downscale branch that the Hugging Face image processor has
    (upstream qwen-vl-utils would return 0 there, i.e. crash later).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels ({max_pixels}) must be >= min_pixels ({min_pixels})")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_RATIO}, got {ratio}")
    h_bar = max(factor, round_by_factor(height, factor))
    w_bar = max(factor, round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, floor_by_factor(height / beta, factor))
        w_bar = max(factor, floor_by_factor(width / beta, factor))
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = ceil_by_factor(height * beta, factor)
        w_bar = ceil_by_factor(width * beta, factor)
    return h_bar, w_bar


@dataclass(frozen=True)
class ResizePlan:
    """Original size (after EXIF orientation) and the size sent to the model."""

    orig_width: int
    orig_height: int
    width: int
    height: int

    @classmethod
    def for_size(
        cls,
        width: int,
        height: int,
        *,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
        factor: int = IMAGE_FACTOR,
    ) -> ResizePlan:
        h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        return cls(orig_width=width, orig_height=height, width=w, height=h)

    @property
    def is_identity(self) -> bool:
        return (self.width, self.height) == (self.orig_width, self.orig_height)


# --------------------------------------------------------------------------- boxes


def _clamp(v: float, hi: int) -> int:
    return int(min(max(round(v), 0), hi))


def _ordered(box: Sequence[float]) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError(f"a box has 4 numbers [x1, y1, x2, y2], got {list(box)!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def scale_box(box: Sequence[float], sx: float, sy: float, width: int, height: int) -> Box:
    """Scale, round to whole pixels and clamp into [0, width] x [0, height]."""
    x1, y1, x2, y2 = _ordered(box)
    return [_clamp(x1 * sx, width), _clamp(y1 * sy, height), _clamp(x2 * sx, width), _clamp(y2 * sy, height)]


def original_to_resized(box: Sequence[float], plan: ResizePlan) -> Box:
    sx, sy = plan.width / plan.orig_width, plan.height / plan.orig_height
    return scale_box(box, sx, sy, plan.width, plan.height)


def resized_to_original(box: Sequence[float], plan: ResizePlan) -> Box:
    sx, sy = plan.orig_width / plan.width, plan.orig_height / plan.height
    return scale_box(box, sx, sy, plan.orig_width, plan.orig_height)


def original_to_relative(box: Sequence[float], width: int, height: int) -> Box:
    """Original pixels -> the 0-1000 grid of Qwen2-VL/Qwen3-VL (``round(x / w * 1000)``, clamped)."""
    return scale_box(box, 1000 / width, 1000 / height, 1000, 1000)


def relative_to_original(box: Sequence[float], width: int, height: int) -> Box:
    return scale_box(box, width / 1000, height / 1000, width, height)


def box_to_model(box: Sequence[float], plan: ResizePlan, mode: CoordinateMode) -> Box:
    """A box in original pixels as the model writes it (training answers, test fixtures)."""
    if mode == "absolute_resized":
        return original_to_resized(box, plan)
    return original_to_relative(box, plan.orig_width, plan.orig_height)


def box_from_model(box: Sequence[float], plan: ResizePlan, mode: CoordinateMode) -> Box:
    """A box as the model wrote it, in original pixels (what we store)."""
    if mode == "absolute_resized":
        return resized_to_original(box, plan)
    return relative_to_original(box, plan.orig_width, plan.orig_height)


# --------------------------------------------------------------------------- images


def load_oriented(data: bytes) -> Image.Image:
    """Decode and apply EXIF orientation: the result's size is the "original pixels" frame."""
    img = Image.open(io.BytesIO(data))
    img = ImageOps.exif_transpose(img)
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB with transparency composited on white, as qwen-vl-utils ``to_rgb`` does."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")


@dataclass(frozen=True)
class PreparedImage:
    data: bytes
    mime: str
    plan: ResizePlan


#: formats every OpenAI-compatible server decodes, sent untouched when no resize is needed
PASSTHROUGH_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block: treat as upright, as exif_transpose would
        return 1


def _probe(
    data: bytes, min_pixels: int, max_pixels: int, factor: int = IMAGE_FACTOR
) -> tuple[Image.Image, int, ResizePlan, PreparedImage | None]:
    """(opened image, EXIF orientation, plan, the image as is when it needs nothing): a header read."""
    head = Image.open(io.BytesIO(data))
    if head.format == "PNG":
        # Pillow's PNG getexif() decodes the whole image (an eXIf chunk may follow the pixels),
        # and _orientation swallows its errors: a broken pixel stream then loaded as a black
        # image and went to the model. Decode here, so the error fails the item by name.
        head.load()
    orientation = _orientation(head)
    swapped = orientation in (5, 6, 7, 8)  # rotated by 90 degrees: width and height trade places
    width, height = (head.height, head.width) if swapped else head.size
    plan = ResizePlan.for_size(width, height, min_pixels=min_pixels, max_pixels=max_pixels, factor=factor)
    if plan.is_identity and orientation == 1 and head.format in PASSTHROUGH_FORMATS and head.mode in ("RGB", "L"):
        return head, orientation, plan, PreparedImage(data=data, mime=PASSTHROUGH_FORMATS[head.format], plan=plan)
    return head, orientation, plan, None


def ready_as_is(
    data: bytes, *, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS, factor: int = IMAGE_FACTOR
) -> PreparedImage | None:
    """The image as :func:`prepare_image` would send it when that needs no pixel work, else None.

    Reads the header only (no decode), so it is cheap enough to call on an event loop; an image
    that needs orienting, resizing or re-encoding gives None and goes to :func:`prepare_image`.
    """
    return _probe(data, min_pixels, max_pixels, factor)[3]


def prepare_image(
    data: bytes,
    *,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
    jpeg_quality: int = 90,
    factor: int = IMAGE_FACTOR,
) -> PreparedImage:
    """Orient, resize with ``smart_resize`` and encode an image for the model.

    CPU-bound (decode, resample, encode): call it in a worker thread, not on the event loop.
    Pillow releases the GIL in those steps, so threads do overlap.

    An image that needs nothing (upright, already a fixed point of ``smart_resize``, RGB or grey,
    in a format the server reads) is sent as stored: no decode, no resample, no second JPEG
    generation loss. Reading its header is all it costs (see :func:`ready_as_is`).
    """
    head, orientation, plan, as_is = _probe(data, min_pixels, max_pixels, factor)
    if as_is is not None:
        return as_is
    swapped = orientation in (5, 6, 7, 8)
    if head.format == "JPEG" and not plan.is_identity:
        # shrink by 1/2, 1/4 or 1/8 while decoding (DCT domain) when the target is that small
        head.draft("RGB", (plan.height, plan.width) if swapped else (plan.width, plan.height))
    img = to_rgb(ImageOps.exif_transpose(head))
    if img.size != (plan.width, plan.height):
        img = img.resize((plan.width, plan.height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=jpeg_quality)
    return PreparedImage(data=buf.getvalue(), mime="image/jpeg", plan=plan)
