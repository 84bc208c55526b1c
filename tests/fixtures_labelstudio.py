"""A real Label Studio server for the review tests, and helpers to make review data.

Use with ``pytest_plugins = ["fixtures_labelstudio"]`` in a test module: pytest then registers
this module once, as a plugin, so the session-scoped server starts once however many modules use
it. (Importing the fixture function into each module instead registers one fixture per module and
starts one server per module; verified with pytest 9.2.) The server runs from ``.venv-ls`` on a
free port with a fresh data directory (the preset legacy token needs a fresh organisation), its
``LOCAL_FILES_DOCUMENT_ROOT`` pointed at a temporary folder under which each test gets its own
object store, and is stopped (process group terminated) at the end of the session. While working
on the tests, ``LABELLOOP_TEST_LS_URL``/``_TOKEN``/``_FILES_ROOT`` (and ``_DATA_DIR``) reuse a server
already running (every test uses its own project prefix and users, so runs do not interfere).
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import random
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from label_studio_sdk import LabelStudio
from PIL import Image
from synthetic import synthetic_items

from labelloop.config import DatabaseSettings, LabelStudioSettings, RoutingSettings, Settings, StorageSettings
from labelloop.db import Database, Item, Prediction
from labelloop.review.client import make_client
from labelloop.review.server import LocalLabelStudio
from labelloop.specs import SpecRegistry, TaskSpec
from labelloop.storage import LocalStore

REPO = Path(__file__).resolve().parents[1]
LS_EXECUTABLE = REPO / ".venv-ls" / "bin" / "label-studio"
ANNOTATOR_PASSWORD = "Ann0tator-Pass!"
#: Debian's Chromium (scripts/ensure-chromium.sh), never a browser downloaded by ``playwright install``
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: screenshots for a human to look at
ARTIFACTS = REPO / "test-artifacts"


@dataclass
class Annotator:
    """A second Label Studio user who joined through the organisation's invite link."""

    email: str
    password: str
    #: personal access token (a JWT), created through the cookie session like the UI does
    token: str
    url: str

    def client(self) -> LabelStudio:
        return make_client(self.url, self.token)


@dataclass
class LabelStudioTestServer:
    url: str
    token: str
    files_root: Path
    #: the server's data directory (its SQLite DB), where a test needs to reach behind the API
    data_dir: Path | None = None

    def client(self) -> LabelStudio:
        return make_client(self.url, self.token)

    def new_store(self) -> LocalStore:
        """An object store of its own, below the server's LOCAL_FILES_DOCUMENT_ROOT."""
        return LocalStore(self.files_root / f"objects-{uuid.uuid4().hex[:10]}")

    def settings(self, tmp_path: Path, db_url: str, store: LocalStore, **ls: Any) -> Settings:
        """Settings for one test: its DB, its store, and a project prefix no other test uses."""
        return Settings(
            home=tmp_path,
            db=DatabaseSettings(url=db_url),
            storage=StorageSettings(backend="local", root=store.root),
            # these tests are about review and sync: confident items auto-accept by the manual default
            routing=RoutingSettings(use_manual_thresholds=True),
            label_studio=LabelStudioSettings(
                url=self.url,
                token=self.token,
                local_files_root=self.files_root,
                project_prefix=ls.pop("project_prefix", f"t{uuid.uuid4().hex[:8]}"),
                **ls,
            ),
        )

    def signup(self, email: str, password: str = ANNOTATOR_PASSWORD) -> Annotator:
        """Join the organisation through the invite link and create a PAT, as a person would."""
        admin = {"Authorization": f"Token {self.token}"}
        invite = httpx.get(f"{self.url}/api/invite", headers=admin).json()["token"]
        with httpx.Client(base_url=self.url) as web:
            web.get(f"/user/signup/?token={invite}")
            r = web.post(
                f"/user/signup/?token={invite}",
                data={"csrfmiddlewaretoken": web.cookies.get("csrftoken"), "email": email, "password": password},
                headers={"Referer": f"{self.url}/user/signup/"},
            )
            assert r.status_code == 302, f"signup of {email} failed: {r.status_code}"
            r = web.post("/api/token/", json={})
            assert r.status_code == 201, r.text
            return Annotator(email=email, password=password, token=r.json()["token"], url=self.url)

    @contextmanager
    def annotator_page(self, prefix: str, *, height: int = 1000) -> Iterator[Any]:
        """A headless Chromium page logged in through /user/login as a fresh annotator (who joined by
        the invite link): what every browser test starts from. Fails, never skips, without Chromium."""
        if not CHROMIUM.exists():
            pytest.fail("Chromium missing: run scripts/ensure-chromium.sh")
        from playwright.sync_api import sync_playwright

        annotator = self.signup(f"{prefix}-{uuid.uuid4().hex[:8]}@example.com")
        ARTIFACTS.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile, sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1600, "height": height},
            )
            try:
                page = browser.new_page()
                page.goto(f"{self.url}/user/login/")
                page.fill("input[name=email]", annotator.email)
                page.fill("input[name=password]", annotator.password)
                page.click("button[type=submit], input[type=submit]")
                page.wait_for_url(lambda url: "/user/login" not in url, timeout=30_000)
                yield page
            finally:
                browser.close()


_RUNNING: LabelStudioTestServer | None = None


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioTestServer]:
    global _RUNNING
    if _RUNNING is not None:  # imported into a second module: never a second server
        yield _RUNNING
        return
    if os.environ.get("LABELLOOP_TEST_LS_URL"):  # development: reuse a running server
        yield LabelStudioTestServer(
            os.environ["LABELLOOP_TEST_LS_URL"],
            os.environ["LABELLOOP_TEST_LS_TOKEN"],
            Path(os.environ["LABELLOOP_TEST_LS_FILES_ROOT"]),
            Path(os.environ["LABELLOOP_TEST_LS_DATA_DIR"]) if os.environ.get("LABELLOOP_TEST_LS_DATA_DIR") else None,
        )
        return
    if not LS_EXECUTABLE.exists():
        pytest.fail(f"Label Studio server venv missing: {LS_EXECUTABLE} (run scripts/bootstrap.sh)")
    base = tmp_path_factory.mktemp("label-studio")
    server = LocalLabelStudio(executable=LS_EXECUTABLE, data_dir=base / "data", local_files_root=base / "files")
    server.start(timeout=240)
    _RUNNING = LabelStudioTestServer(server.url, server.token, server.local_files_root, server.data_dir)
    try:
        yield _RUNNING
    finally:
        _RUNNING = None
        server.stop()


# --------------------------------------------------------------------------- review data


def png_bytes(width: int, height: int, seed: int) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", (width, height), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    img.putpixel((seed % width, (seed // width) % height), (seed % 256, 3, 5))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def add_image_item(
    db: Database,
    store: LocalStore | None,
    seed: int,
    *,
    width: int = 640,
    height: int = 480,
    data: bytes | None = None,
    ext: str = "png",
) -> Item:
    """An image item; with a store its bytes are stored too (needed only where a browser looks)."""
    if data is None and store is not None:
        data = png_bytes(width, height, seed)
    sha = hashlib.sha256(data if data is not None else f"item-{seed}-{uuid.uuid4()}".encode()).hexdigest()
    key = f"raw/{sha[:2]}/{sha}.{ext}"
    if store is not None and data is not None:
        store.put(key, data)
    with db.session() as s:
        item = Item(
            sha256=sha,
            media_type="image",
            mime="image/jpeg" if ext in ("jpg", "jpeg") else f"image/{ext}",
            ext=ext,
            size_bytes=len(data or b""),
            storage_key=key,
            width=width,
            height=height,
        )
        s.add(item)
        s.commit()
        return item


def add_prediction(
    db: Database,
    spec: TaskSpec,
    item: Item,
    record: dict[str, Any] | None,
    confidence: dict[str, float],
    *,
    model: str = "test-model",
    model_version: str = "v1",
    status: str = "ok",
    detail: dict[str, Any] | None = None,
) -> Prediction:
    with db.session() as s:
        pred = Prediction(
            item_id=item.id,
            spec=spec.name,
            backend="test",
            model=model,
            model_version=model_version,
            prompt_hash=spec.prompt_hash,
            status=status,
            record=record if status == "ok" else None,
            field_confidence=confidence,
            confidence_detail=detail or {},
            confidence=min(confidence.values()) if confidence and status == "ok" else None,
            error=None if status == "ok" else "model timed out",
            failure_kind=None if status == "ok" else "transient",
        )
        s.add(pred)
        s.commit()
        return pred


def add_two_page_pdf(db: Database, spec: TaskSpec, confidence: float, *, sha: str = "cd" * 32) -> Item:
    """A two-page PDF item (no bytes) with a prediction of ``spec`` (document_layout) for both pages."""
    with db.session() as s:
        pdf = Item(
            sha256=sha,
            media_type="document",
            mime="application/pdf",
            ext="pdf",
            size_bytes=1,
            storage_key=f"raw/{sha[:2]}/{sha}.pdf",
            page_count=2,
        )
        s.add(pdf)
        s.commit()
    record = sample_record(spec.name, sha=sha)
    record["pages"].append({**copy.deepcopy(record["pages"][0]), "page": 1, "image_key": f"pages/{sha}/1.png"})
    add_prediction(db, spec, pdf, record, {"blocks": confidence})
    return pdf


def add_vehicle_batch(
    db: Database,
    spec: TaskSpec,
    confidences: list[float],
    *,
    tag: str = "",
    model_version: str = "v1",
) -> list[int]:
    """One vehicle item + prediction per confidence (every field at it), in one transaction.

    The items have no bytes in any store: enough for import/sync, where nobody looks at pixels.
    """
    with db.session() as s:
        items = synthetic_items(s, (f"vehicle-{tag}-{i}-{uuid.uuid4()}" for i in range(len(confidences))))
        preds = [
            Prediction(
                item_id=it.id,
                spec=spec.name,
                backend="test",
                model="test-model",
                model_version=model_version,
                prompt_hash=spec.prompt_hash,
                status="ok",
                record=vehicle_record(i),
                field_confidence={f: c for f in spec.fields},
                confidence=c,
            )
            for i, (it, c) in enumerate(zip(items, confidences, strict=True))
        ]
        s.add_all(preds)
        s.commit()
        return [p.id for p in preds]


def vehicle_record(i: int, width: int = 640, height: int = 480) -> dict[str, Any]:
    colors = ["blue", "yellow", "green", "white", "black"]
    return {
        "plate_number": f"AB{i:05d}",
        "plate_color": colors[i % len(colors)],
        "vehicle_type": "car",
        "brand": "Toyota",
        "color": "white",
        "plate_box": [100 + i % 50, 300, 220 + i % 50, 340],
        "vehicle_box": [20, 60, width - 20, height - 30],
    }


@pytest.fixture(scope="session")
def registry() -> SpecRegistry:
    return SpecRegistry()


def sample_record(spec: str, *, sha: str = "ab" * 32) -> dict[str, Any]:
    """A plausible record per shipped spec, boxes in pixels of a 640x480 image (documents: page)."""
    if spec == "vehicle_extraction":
        return vehicle_record(7)
    if spec == "ocr_lines":
        return {
            "lines": [
                {"bbox": [40, 30, 400, 62], "text": "TOTAL 12.50 EUR"},
                {"bbox": [40, 80, 300, 110], "text": "Merci de votre visite"},
                {"bbox": [40, 130, 220, 150], "text": "2026-11-25 10:45"},
            ]
        }
    if spec == "caption":
        return {"caption": "A white car parked in front of a bakery on a sunny street."}
    if spec == "grounding":
        return {
            "objects": [
                {"bbox_2d": [10, 20, 300, 400], "label": "person"},
                {"bbox_2d": [320, 200, 630, 470], "label": "car"},
                {"bbox_2d": [400, 10, 460, 90], "label": "traffic light"},
            ]
        }
    if spec == "document_layout":
        page = {
            "page": 0,
            "width_pt": 612.0,
            "height_pt": 792.0,
            "dpi": 144,
            "width_px": 1224,
            "height_px": 1584,
            "image_key": f"pages/{sha}/0.png",
            "blocks": [
                {
                    "type": "title",
                    "bbox": [100.0, 80.0, 900.5, 140.25],
                    "content": "Annual report",
                    "score": 0.97,
                    "source": "text_layer",
                },
                {
                    "type": "text",
                    "bbox": [100.0, 180.0, 1100.0, 400.0],
                    "content": "Revenue grew by 12%.",
                    "score": 0.91,
                    "source": "text_layer",
                },
                {
                    "type": "table",
                    "bbox": [100.0, 450.0, 1100.0, 900.0],
                    "content": "<table><tr><td>Q1</td><td>3.1</td></tr></table>",
                    "score": 0.62,
                    "source": "layout",
                },
                {
                    "type": "image",
                    "bbox": [100.0, 950.0, 600.0, 1300.0],
                    "content": "",
                    "score": 0.88,
                    "source": "layout",
                },
            ],
        }
        return {"pages": [page], "markdown": "# Annual report\n\nRevenue grew by 12%.\n"}
    if spec == "video_caption":  # times on frame boundaries of a 25 fps video
        return {
            "caption": "A white square slides to the right and turns green for a while.",
            "events": [
                {"start": 0.0, "end": 1.0, "label": "action", "description": "The square moves right."},
                {"start": 1.0, "end": 2.52, "label": "change", "description": "It turns green."},
            ],
        }
    if spec == "video_qa":
        return {
            "qa": [
                {"question": "What colour does the square turn?", "answer": "Green."},
                {"question": "When does it turn green?", "answer": "At 1 s."},
            ]
        }
    raise KeyError(spec)


@pytest.fixture(scope="session")
def review_data() -> Any:
    """This module's data builders (``review_data.sample_record(...)``, ``add_image_item`` ...).

    Test modules reach them through this fixture rather than ``from fixtures_labelstudio import``:
    importing the module before pytest loads it as a plugin would skip its assertion rewriting.
    """
    return sys.modules[__name__]
