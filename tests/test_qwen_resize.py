"""Qwen-VL smart_resize and every box conversion at the model edge, with round trips."""

from __future__ import annotations

import io
import math
import random

import pytest
from fixtures_vllm import make_image
from PIL import Image
from vllm_server import processor_frame

from labelloop.prelabel.qwen_resize import (
    MAX_PIXELS,
    MIN_PIXELS,
    ResizePlan,
    box_from_model,
    box_to_model,
    original_to_relative,
    original_to_resized,
    prepare_image,
    ready_as_is,
    relative_to_original,
    resized_to_original,
    smart_resize,
)

SERVER_MAX = 1_003_520  # the reference's vLLM launch: --mm-processor-kwargs max_pixels


@pytest.mark.parametrize(
    ("h", "w", "kw", "expected"),
    [
        (465, 640, {}, (476, 644)),  # qwen-multiple_items.png: rounded to multiples of 28
        (28, 28, {}, (56, 56)),  # below MIN_PIXELS (4*28*28): scaled up
        (10, 10, {}, (56, 56)),
        (300, 4000, {"max_pixels": SERVER_MAX}, (252, 3640)),  # above max: scaled down (floor)
        (750, 1000, {}, (756, 1008)),
        (2448, 1836, {"max_pixels": SERVER_MAX}, (1148, 840)),
        (2448, 1836, {}, (2436, 1848)),  # within the default 12.8 MP: only rounding
        (100, 19999, {"max_pixels": SERVER_MAX}, (56, 14140)),  # aspect just under 200
    ],
)
def test_smart_resize_known_values(h: int, w: int, kw: dict[str, int], expected: tuple[int, int]) -> None:
    assert smart_resize(h, w, **kw) == expected


def test_smart_resize_rejects_extreme_aspect_ratio() -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2001)
    smart_resize(10, 2000)  # exactly 200 is allowed


def test_smart_resize_properties_and_agreement_with_the_server_processor() -> None:
    """Multiples of 28, inside the bounds, aspect kept, a fixed point, and the same as vLLM's."""
    rng = random.Random(3)
    for _ in range(2000):
        h, w = rng.randint(20, 6000), rng.randint(20, 6000)
        if max(h, w) / min(h, w) > 200:
            continue
        max_px = rng.choice([MAX_PIXELS, SERVER_MAX, 28 * 28 * 256])
        rh, rw = smart_resize(h, w, max_pixels=max_px)
        assert rh % 28 == 0 and rw % 28 == 0
        assert MIN_PIXELS <= rh * rw <= max_px
        # aspect kept up to the rounding of each side to 28 pixels
        assert abs(math.log((rw / rh) / (w / h))) <= 2 * math.log(1 + 28 / min(rh, rw)) + 1e-9
        # an independent port (the Hugging Face processor vLLM runs) agrees
        assert (rh, rw) == processor_frame(h, w, MIN_PIXELS, max_px)
        if max(rh, rw) / min(rh, rw) > 200:
            # rounding a near-200:1 image can cross the limit; the server would refuse it (a
            # failed prediction), as it refuses the original
            assert max(h, w) / min(h, w) > 100
            continue
        # what we send is what the model sees: resizing again changes nothing
        assert smart_resize(rh, rw, max_pixels=max_px) == (rh, rw)
        assert processor_frame(rh, rw, 3136, max(max_px, 12_845_056)) == (rh, rw)


PLANS = [
    ResizePlan.for_size(1000, 750),
    ResizePlan.for_size(4000, 300, max_pixels=SERVER_MAX),
    ResizePlan.for_size(1836, 2448, max_pixels=SERVER_MAX),
    ResizePlan.for_size(37, 23),  # upscaled a lot
    ResizePlan.for_size(640, 465),
]


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: f"{p.orig_width}x{p.orig_height}")
def test_box_round_trips(plan: ResizePlan) -> None:
    rng = random.Random(plan.orig_width)
    # a model pixel covers orig/resized original pixels; rounding costs at most half of that, twice
    tol_abs = math.ceil(max(plan.orig_width / plan.width, plan.orig_height / plan.height)) + 1
    tol_rel = math.ceil(max(plan.orig_width, plan.orig_height) / 1000) + 1
    for _ in range(200):
        x1, x2 = sorted(rng.sample(range(plan.orig_width + 1), 2))
        y1, y2 = sorted(rng.sample(range(plan.orig_height + 1), 2))
        box = [x1, y1, x2, y2]
        for mode, tol in (("absolute_resized", tol_abs), ("relative_1000", tol_rel)):
            model = box_to_model(box, plan, mode)
            back = box_from_model(model, plan, mode)
            assert all(abs(a - b) <= tol for a, b in zip(back, box, strict=True)), (mode, box, model, back)
            limit = (plan.width, plan.height) if mode == "absolute_resized" else (1000, 1000)
            assert 0 <= model[0] <= model[2] <= limit[0] and 0 <= model[1] <= model[3] <= limit[1]


def test_conversions_exact_values() -> None:
    plan = ResizePlan.for_size(1000, 750)  # -> 1008 x 756
    assert (plan.width, plan.height) == (1008, 756)
    assert original_to_resized([100, 100, 500, 375], plan) == [101, 101, 504, 378]
    assert resized_to_original([101, 101, 504, 378], plan) == [100, 100, 500, 375]
    assert original_to_relative([100, 75, 500, 375], 1000, 750) == [100, 100, 500, 500]
    assert relative_to_original([100, 100, 500, 500], 1000, 750) == [100, 75, 500, 375]
    # out-of-range and inverted model boxes are clamped and ordered, never crash
    assert resized_to_original([-5, 900, 2000, 10], plan) == [0, 10, 1000, 750]
    assert relative_to_original([1000, 1000, 1100, 0], 1000, 750) == [1000, 0, 1000, 750]
    with pytest.raises(ValueError, match="4 numbers"):
        box_from_model([1, 2, 3], plan, "absolute_resized")


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_prepare_image_resizes_to_the_plan() -> None:
    prepared = prepare_image(make_image(1000, 750), max_pixels=SERVER_MAX)
    assert (prepared.plan.width, prepared.plan.height) == (1008, 756)
    assert _decode(prepared.data).size == (1008, 756)
    assert prepared.mime == "image/jpeg"
    big = prepare_image(make_image(4000, 3000, seed=2), max_pixels=SERVER_MAX)  # JPEG draft path
    assert _decode(big.data).size == (big.plan.width, big.plan.height) == (1148, 840)


def test_prepare_image_applies_exif_orientation() -> None:
    # stored 1000 wide x 750 high with "rotate 90" (6): displayed, i.e. original, is 750 x 1000
    prepared = prepare_image(make_image(1000, 750, exif_orientation=6))
    assert (prepared.plan.orig_width, prepared.plan.orig_height) == (750, 1000)
    assert _decode(prepared.data).size == (prepared.plan.width, prepared.plan.height) == (756, 1008)


def test_prepare_image_sends_the_upright_pixels() -> None:
    """Not only the size: the content is turned too (a red block top-left when displayed)."""
    shown = Image.new("RGB", (750, 1000), (0, 0, 255))
    shown.paste((255, 0, 0), (0, 0, 200, 200))
    stored = shown.transpose(Image.Transpose.ROTATE_90)  # what a camera writes with orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif)
    out = _decode(prepare_image(buf.getvalue()).data)
    r, _g, b = out.getpixel((50, 50))
    assert r > 200 and b < 60, "top-left of the sent image is the displayed top-left"
    r, _g, b = out.getpixel((out.width - 50, out.height - 50))
    assert b > 200 and r < 60


def test_prepare_image_sends_fixed_points_untouched_and_flattens_alpha() -> None:
    data = make_image(28 * 20, 28 * 15)
    prepared = prepare_image(data)
    assert prepared.data == data and prepared.plan.is_identity
    assert ready_as_is(data) == prepared, "the header-only check agrees with prepare_image"
    rotated = make_image(28 * 20, 28 * 15, exif_orientation=3)  # upright size unchanged but rotated
    assert prepare_image(rotated).data != rotated
    assert ready_as_is(rotated) is None and ready_as_is(make_image(28 * 20 + 5, 28 * 15)) is None
    rgba = Image.new("RGBA", (56, 56), (255, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    flat = _decode(prepare_image(buf.getvalue()).data)
    assert flat.mode == "RGB" and min(flat.getpixel((28, 28))) > 240  # transparent -> white
