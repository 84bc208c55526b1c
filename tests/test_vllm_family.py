"""Model family, box convention, resize factor, the image-token check and prediction identity (issue 11, point 6).

Against the vLLM test server configured as each family serves: Qwen2.5-VL (factor 28, absolute
pixels of the resized image), Qwen3-VL (factor 32, 0-1000 grid). A server that resizes the image
again is caught by the image-token count, exactly (``return_token_ids``) or by the bound on
``usage.prompt_tokens`` (an older server), and never a correct prediction.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_vllm import VLLMTestServer, ingest_images, make_image, predictions, run_batch, sha256, start_server
from vllm_server import ServerConfig

from labelloop.config import Settings, VLLMSettings
from labelloop.db import Database
from labelloop.prelabel.qwen_resize import ResizePlan
from labelloop.prelabel.vllm import VLLMBackend
from labelloop.prelabel.vllm.family import ModelFamilyError, family_from_name, resolve_profile
from labelloop.prelabel.vllm.tokens import TEMPLATE_TOKENS_MAX, check_image_tokens, text_token_bounds
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore

pytest_plugins = ["fixtures_vllm"]

SPECS = SpecRegistry()
VEHICLE = SPECS.get("vehicle_extraction")
CAPTION = SPECS.get("caption")
QWEN3 = "Qwen/Qwen3-VL-8B-Instruct"


@pytest.fixture(scope="module")
def qwen3_server() -> Iterator[VLLMTestServer]:
    handle, stop = start_server(
        ServerConfig(
            model=QWEN3,
            slots=8,
            latency_ms=5,
            coordinate_mode="relative_1000",
            resize_factor=32,
            min_pixels=65536,
            max_pixels=16_777_216,
        )
    )
    yield handle
    stop()


@pytest.fixture(scope="module")
def old_server() -> Iterator[VLLMTestServer]:
    """A Qwen2.5-VL server that predates ``return_token_ids``: only usage.prompt_tokens to go on."""
    handle, stop = start_server(ServerConfig(slots=8, latency_ms=5, token_ids=False))
    yield handle
    stop()


def _settings(server: VLLMTestServer, base: Settings, **overrides: Any) -> Settings:
    """Like ``server.settings`` but the coordinate mode left to the family unless given."""
    s = server.settings(base, **overrides)
    if "coordinate_mode" not in overrides:
        s = s.model_copy(update={"vllm": s.vllm.model_copy(update={"coordinate_mode": "auto"})})
    return s


def _vehicle_truth(w: int, h: int) -> dict[str, Any]:
    record = {
        "plate_number": "AB12345",
        "plate_color": "blue",
        "vehicle_type": "suv",
        "brand": "Toyota",
        "color": "white",
        "plate_box": [round(w * 0.41), round(h * 0.71), round(w * 0.59), round(h * 0.79)],
        "vehicle_box": [round(w * 0.08), round(h * 0.2), round(w * 0.93), round(h * 0.96)],
    }
    return {"width": w, "height": h, "records": {"vehicle_extraction": record}}


# --------------------------------------------------------------------------- family


def test_family_follows_the_model_name_and_explicit_settings_override_it() -> None:
    cases = {
        "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2_5_vl",
        "qwen2.5-vl-72b": "qwen2_5_vl",
        "Qwen/Qwen2-VL-7B-Instruct": "qwen2_vl",
        "Qwen/Qwen3-VL-30B-A3B-Instruct": "qwen3_vl",
        "qwen3vl-8b-ft": "qwen3_vl",
        "llava-1.5": None,
    }
    assert {name: family_from_name(name) for name in cases} == cases
    p25 = resolve_profile(VLLMSettings(model="Qwen/Qwen2.5-VL-7B-Instruct"))
    assert (p25.coordinate_mode, p25.resize_factor, p25.min_pixels) == ("absolute_resized", 28, 3136)
    p2 = resolve_profile(VLLMSettings(model="Qwen/Qwen2-VL-7B-Instruct"))
    assert (p2.coordinate_mode, p2.resize_factor) == ("relative_1000", 28)
    p3 = resolve_profile(VLLMSettings(model=QWEN3))
    assert (p3.coordinate_mode, p3.resize_factor, p3.min_pixels) == ("relative_1000", 32, 65536)
    # a Qwen2.5-VL fine-tune taught the 0-1000 grid: the explicit setting wins, the factor stays
    ft = resolve_profile(VLLMSettings(model="Qwen/Qwen2.5-VL-7B-Instruct", coordinate_mode="relative_1000"))
    assert (ft.coordinate_mode, ft.resize_factor) == ("relative_1000", 28)
    named = resolve_profile(VLLMSettings(model="served-name", model_family="qwen3_vl"))
    assert (named.family, named.resize_factor) == ("qwen3_vl", 32)


def test_a_model_whose_convention_cannot_be_told_is_refused_before_any_request(sqlite_settings: Settings) -> None:
    anonymous = sqlite_settings.model_copy(update={"vllm": VLLMSettings(model="my-finetune")})
    with pytest.raises(ModelFamilyError, match=r"my-finetune.*model_family.*coordinate_mode"):
        VLLMBackend(anonymous)
    explicit = VLLMSettings(model="my-finetune", coordinate_mode="relative_1000", resize_factor=32, min_pixels=4096)
    backend = VLLMBackend(sqlite_settings.model_copy(update={"vllm": explicit}))
    assert (backend.profile.family, backend.profile.resize_factor) == (None, 32)


def test_qwen3_vl_gets_images_in_multiples_of_32_and_its_0_1000_boxes_map_back(
    qwen3_server: VLLMTestServer, sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    """Pointing at Qwen3-VL without touching the coordinate mode: boxes are read on the 0-1000
    grid, the image is resized with factor 32 and the server's min_pixels (65536), and the
    server encodes exactly the image tokens the client expects."""
    qwen3_server.reset()
    settings = _settings(qwen3_server, sqlite_settings)
    store = LocalStore(settings.storage.root)
    images = {
        "land.jpg": (make_image(1000, 750, seed=31), (1000, 750)),
        "small.jpg": (make_image(120, 90, seed=32), (120, 90)),  # below 65536 px: scaled up
        "rot.jpg": (make_image(900, 600, seed=33, exif_orientation=6), (600, 900)),
    }
    for data, (w, h) in images.values():
        qwen3_server.truth(sha256(data), _vehicle_truth(w, h))
    items = ingest_images(sqlite_db, store, settings, tmp_path / "in", {n: d for n, (d, _) in images.items()})
    stats = run_batch(sqlite_db, store, VEHICLE, VLLMBackend(settings, store))
    assert (stats.ok, stats.failed) == (3, 0)
    sizes = qwen3_server.stats()["sizes"]
    for name, item in items.items():
        (pred,) = predictions(sqlite_db, item_id=item.id)
        sent_w, sent_h = sizes[item.sha256]
        assert sent_w % 32 == 0 and sent_h % 32 == 0 and sent_w * sent_h >= 65536, (name, sent_w, sent_h)
        tokens = pred.confidence_detail["image_tokens"]
        assert tokens == {
            "method": "exact",
            "expected": (sent_w // 32) * (sent_h // 32),
            "observed": tokens["expected"],
        }
        assert pred.confidence_detail["identity"]["family"] == "qwen3_vl"
        w, h = images[name][1]
        want = _vehicle_truth(w, h)["records"]["vehicle_extraction"]
        tol = math.ceil(max(w, h) / 1000) + 1
        for key in ("plate_box", "vehicle_box"):
            assert all(abs(a - b) <= tol for a, b in zip(pred.record[key], want[key], strict=True)), (name, key)


# --------------------------------------------------------------------------- image token check


@pytest.mark.parametrize("exact", [True, False], ids=["return_token_ids", "usage_bound"])
def test_a_server_that_resizes_again_fails_the_prediction_with_a_clear_message(
    exact: bool,
    request: pytest.FixtureRequest,
    sqlite_settings: Settings,
    sqlite_db: Database,
    tmp_path: Path,
) -> None:
    server: VLLMTestServer = request.getfixturevalue("vllm_server" if exact else "old_server")
    server.reset()
    settings = _settings(server, sqlite_settings)
    store = LocalStore(settings.storage.root)
    imgs = {f"r{i}.jpg": make_image(800 + 40 * i, 600, seed=40 + i) for i in range(4)}
    for data in imgs.values():
        server.truth(sha256(data), _vehicle_truth(800, 600))
    items = ingest_images(sqlite_db, store, settings, tmp_path / "in", imgs)
    resized = items["r1.jpg"], items["r3.jpg"]
    server.faults(resized[0].sha256, "resize")  # a quarter of the area: boxes at half scale
    server.faults(resized[1].sha256, {"kind": "resize", "min_pixels": 3136, "max_pixels": 200_000})
    stats = run_batch(sqlite_db, store, VEHICLE, VLLMBackend(settings, store))
    assert (stats.ok, stats.failed) == (2, 2)
    for item in items.values():
        (pred,) = predictions(sqlite_db, item_id=item.id)
        method = pred.confidence_detail["image_tokens"]["method"]
        assert method == ("exact" if exact else "bound")
        if item in resized:
            assert pred.status == "failed" and pred.failure_kind == "permanent"
            assert "resized the image again" in pred.error and server.base_url in pred.error
            assert "step: image token check" in pred.error and pred.record is None
        else:
            assert pred.status == "ok", pred.error


def test_a_factor_mismatch_is_caught_exactly(sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path) -> None:
    """A Qwen3-VL server (factor 32) addressed as Qwen2.5-VL (factor 28): the server re-rounds
    every side, the image token counts differ and every prediction fails instead of reading boxes
    in a frame the client does not know."""
    server, stop = start_server(ServerConfig(slots=4, latency_ms=1, resize_factor=32))
    try:
        settings = _settings(server, sqlite_settings)  # the model name says Qwen2.5-VL: factor 28
        store = LocalStore(settings.storage.root)
        ingest_images(
            sqlite_db,
            store,
            settings,
            tmp_path / "in",
            {f"m{i}.jpg": make_image(640, 480, seed=60 + i) for i in range(3)},
        )
        stats = run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store))
        assert (stats.ok, stats.failed) == (0, 3)
        for pred in predictions(sqlite_db):
            # 640x480 -> 644x476 at factor 28 (23 x 17 = 391 tokens); the server re-rounds to 640x480 (20 x 15)
            assert pred.confidence_detail["image_tokens"] == {"method": "exact", "expected": 391, "observed": 300}
    finally:
        stop()


def test_the_bound_never_fails_a_correct_prediction(
    old_server: VLLMTestServer, sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    """Without token ids, many sizes and both specs: every prediction passes the bound."""
    old_server.reset()
    settings = _settings(old_server, sqlite_settings)
    store = LocalStore(settings.storage.root)
    sizes = [(37, 23), (64, 64), (640, 480), (1000, 750), (4000, 300), (3000, 2000), (299, 1201)]
    ingest_images(
        sqlite_db,
        store,
        settings,
        tmp_path / "in",
        {f"b{i}.jpg": make_image(w, h, seed=70 + i) for i, (w, h) in enumerate(sizes)},
    )
    for spec in (CAPTION, VEHICLE):
        stats = run_batch(sqlite_db, store, spec, VLLMBackend(settings, store))
        assert (stats.ok, stats.failed) == (len(sizes), 0)
    for pred in predictions(sqlite_db):
        t = pred.confidence_detail["image_tokens"]
        lo, hi = t["text_token_bounds"]
        assert t["method"] == "bound" and lo <= t["observed"] <= hi


def test_token_bounds_hold_for_the_text_and_catch_a_resize_in_the_arithmetic() -> None:
    texts = ["Read the licence plate. Answer in JSON: plate_number, plate_color (blue|yellow|green)."]
    lo, hi = text_token_bounds(texts)
    assert lo == len(texts[0].split()) and hi == len(texts[0].encode()) + TEMPLATE_TOKENS_MAX
    plan = ResizePlan.for_size(1000, 750)  # 1008 x 756 -> 36 x 27 = 972 tokens
    ok = check_image_tokens(plan, 28, texts, prompt_tokens=972 + 40, prompt_token_ids=None, image_token_id=None)
    assert ok.error is None and ok.observed == 40
    halved = check_image_tokens(
        plan, 28, texts, prompt_tokens=(972 // 4) + 40, prompt_token_ids=None, image_token_id=None
    )
    assert halved.error is not None and "resized the image again" in halved.error
    exact = check_image_tokens(
        plan, 28, texts, prompt_tokens=None, prompt_token_ids=[1, 2] + [7] * 971 + [3], image_token_id=7
    )
    assert exact.method == "exact" and exact.observed == 971 and "971 image tokens" in (exact.error or "")


# --------------------------------------------------------------------------- identity


def test_every_identity_setting_makes_new_predictions_and_new_threshold_keys(
    vllm_server: VLLMTestServer, sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    settings = _settings(vllm_server, sqlite_settings)
    store = LocalStore(settings.storage.root)
    ingest_images(
        sqlite_db, store, settings, tmp_path / "in", {f"k{i}.jpg": make_image(120, 90, seed=80 + i) for i in range(2)}
    )
    base = VLLMBackend(settings, store)
    assert run_batch(sqlite_db, store, CAPTION, base).ok == 2
    assert run_batch(sqlite_db, store, CAPTION, VLLMBackend(settings, store)).considered == 0
    changes = [
        {"max_tokens": 512},
        {"min_pixels": 6272},
        {"max_pixels": 501_760},
        {"jpeg_quality": 80},
        {"confidence_aggregator": "geomean"},
        {"coordinate_mode": "relative_1000"},
        {"resize_factor": 32},
        {"model_family": "qwen2_vl"},
    ]
    hashes = {base.prompt_hash(CAPTION)}
    for change in changes:
        changed = _settings(vllm_server, sqlite_settings, **change)
        backend = VLLMBackend(changed, store)
        hashes.add(backend.prompt_hash(CAPTION))
        key, value = next(iter(change.items()))
        assert key in str(backend.identity(CAPTION)) or value in backend.identity(CAPTION).values()
    assert len(hashes) == len(changes) + 1, "each setting is part of the identity (and so of threshold keys)"
    for change in changes[:5]:  # the test server answers these in its own convention
        assert (
            run_batch(
                sqlite_db, store, CAPTION, VLLMBackend(_settings(vllm_server, sqlite_settings, **change), store)
            ).ok
            == 2
        )
    preds = predictions(sqlite_db, spec="caption")
    assert len(preds) == 12 and len({p.prompt_hash for p in preds}) == 6, "old predictions kept, new ones made"
    assert {p.confidence_detail["aggregator"] for p in preds} == {"min", "geomean"}
