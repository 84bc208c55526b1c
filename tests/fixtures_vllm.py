"""Fixtures for the vLLM test server and helpers to make image items for pre-labeling tests.

Use with ``pytest_plugins = ["fixtures_vllm"]`` in a test module. The server runs in a thread of
the test process (its own event loop), one per session and coordinate mode; each test
gets it reset (faults, counters). Tests steer it over HTTP exactly as the benchmark steers the
subprocess: ``POST /control/truth``, ``/control/faults``, ``GET /control/stats``.

Test modules also import helpers from here before pytest registers it as a plugin, so it opts
out of assertion rewriting (it asserts nothing): PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont
from vllm_server import ModelServer, ServerConfig

from labelloop.config import Settings, VLLMSettings
from labelloop.db import Database, Item
from labelloop.ingest.run import ingest
from labelloop.storage import ObjectStore

FONT_DIR = Path(__import__("matplotlib").get_data_path()) / "fonts" / "ttf"


@dataclass
class VLLMTestServer:
    """A running test server and its control endpoints."""

    url: str
    config: ServerConfig

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def faults(self, key: str, *faults: str | dict[str, Any]) -> None:
        httpx.post(f"{self.url}/control/faults", json={"key": key, "faults": list(faults)}).raise_for_status()

    def truth(self, key: str, truth: dict[str, Any]) -> None:
        httpx.post(f"{self.url}/control/truth", json={"key": key, "truth": truth}).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/control/stats").json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/control/reset").raise_for_status()

    def settings(self, base: Settings, **overrides: Any) -> Settings:
        """``base`` pointed at this server, with quick retries so fault tests stay fast."""
        vllm = {
            "base_url": self.base_url,
            "model": self.config.model,
            "coordinate_mode": self.config.coordinate_mode,
            "concurrency": 8,
            "timeout_s": 5.0,
            "max_retries": 3,
            "retry_backoff_s": 0.01,
            "retry_backoff_max_s": 0.05,
            **overrides,
        }
        return base.model_copy(update={"vllm": VLLMSettings(**vllm)})


def start_server(config: ServerConfig) -> tuple[VLLMTestServer, callable]:  # type: ignore[valid-type]
    """Serve in a daemon thread on a free port; returns the handle and a stop function."""
    server = ModelServer(config, "127.0.0.1", 0)
    thread = server.start_thread()

    def stop() -> None:
        server.stop()
        thread.join(10)

    return VLLMTestServer(url=server.url, config=config), stop


@pytest.fixture(scope="session")
def vllm_server_session() -> Iterator[VLLMTestServer]:
    handle, stop = start_server(ServerConfig(slots=8, latency_ms=20, coordinate_mode="absolute_resized"))
    yield handle
    stop()


@pytest.fixture(scope="session")
def vllm_server_relative_session() -> Iterator[VLLMTestServer]:
    handle, stop = start_server(ServerConfig(slots=8, latency_ms=20, coordinate_mode="relative_1000"))
    yield handle
    stop()


@pytest.fixture
def vllm_server(vllm_server_session: VLLMTestServer) -> VLLMTestServer:
    """The Qwen2.5-VL-like server (absolute pixels of the resized image), freshly reset."""
    vllm_server_session.reset()
    return vllm_server_session


@pytest.fixture
def vllm_server_relative(vllm_server_relative_session: VLLMTestServer) -> VLLMTestServer:
    """The Qwen2-VL/Qwen3-VL-like server (0-1000 grid), freshly reset."""
    vllm_server_relative_session.reset()
    return vllm_server_relative_session


# --------------------------------------------------------------------------- images and items


def font(size: int, bold: bool = True) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_DIR / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")), size)


def make_image(
    width: int, height: int, *, seed: int = 0, fmt: str = "JPEG", exif_orientation: int | None = None
) -> bytes:
    """A distinct synthetic picture (coloured blocks) of the given *stored* size."""
    rng = random.Random(seed)
    img = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x1, y1 = rng.randrange(width), rng.randrange(height)
        x2, y2 = min(width, x1 + rng.randrange(1, width)), min(height, y1 + rng.randrange(1, height))
        draw.rectangle([x1, y1, x2, y2], fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(buf, format=fmt, exif=exif, quality=90)
    else:
        img.save(buf, format=fmt, quality=90)
    return buf.getvalue()


def make_plate_image(plate: str, *, size: tuple[int, int] = (900, 600), seed: int = 1) -> tuple[bytes, list[int]]:
    """A grey "car" with a white licence plate reading ``plate``; returns (JPEG, plate box)."""
    rng = random.Random(seed)
    w, h = size
    img = Image.new("RGB", size, (70, 80, 90))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle([w * 0.1, h * 0.25, w * 0.9, h * 0.85], radius=40, fill=(150, 20, 30))
    f = font(int(h * 0.09))
    tb = draw.textbbox((0, 0), plate, font=f)
    tw, th = tb[2] - tb[0], tb[3] - tb[1]
    px1, py1 = (w - tw) // 2 - 20, int(h * 0.62)
    box = [px1, py1, px1 + tw + 40, py1 + th + 30]
    draw.rectangle(box, fill=(245, 245, 245), outline=(0, 0, 0), width=3)
    draw.text((px1 + 20 - tb[0], py1 + 15 - tb[1]), plate, font=f, fill=(10, 10, 10))
    draw.text((int(w * 0.15), int(h * 0.3)), f"{rng.randrange(100)}", font=font(20, bold=False), fill=(90, 10, 20))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue(), box


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ingest_images(
    db: Database, store: ObjectStore, settings: Settings, folder: Path, images: dict[str, bytes]
) -> dict[str, Item]:
    """Write ``{file name: bytes}`` to ``folder``, ingest it, and return the items by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (folder / name).write_bytes(data)
    ingest(db, store, settings, str(folder))
    by_sha = {sha256(data): name for name, data in images.items()}
    from sqlalchemy import select

    with db.session() as s:
        items = s.scalars(select(Item).where(Item.sha256.in_(list(by_sha)))).all()
    return {by_sha[it.sha256]: it for it in items}


def run_batch(db: Database, store: ObjectStore, spec: Any, backend: Any, **kwargs: Any) -> Any:
    """``run_prelabel`` and the backend's close in one event loop (as the operator does)."""
    import asyncio

    from labelloop.prelabel.runner import run_prelabel

    async def go() -> Any:
        try:
            return await run_prelabel(db, store, spec, backend, **kwargs)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def predictions(db: Database, **where: Any) -> list[Any]:
    """Every stored prediction matching ``where`` (column=value), oldest first."""
    from sqlalchemy import select

    from labelloop.db import Prediction

    stmt = select(Prediction).order_by(Prediction.id)
    for col, value in where.items():
        stmt = stmt.where(getattr(Prediction, col) == value)
    with db.session() as s:
        return list(s.scalars(stmt))
