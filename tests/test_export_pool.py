"""Zero-copy dataset versions (the spec's image pool), streamed validation, the gate's message, and
documents exported page by page (per-page provenance, the card's waiting list). SQLite, local store."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from test_export_support import (
    VEHICLE_OK,
    add_item,
    add_record,
    block,
    document_record,
    image_bytes,
    make_settings,
    update_record,
    vehicle_items,
)

from labelloop.db import Annotation, Database, PoolImage, Prediction, Quarantine, ReviewTask
from labelloop.export import ExportCheckError, ExportError, export_dataset, read_manifest, verify_version
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore
from labelloop.training.check_dataset import check_dataset
from labelloop.validation import QualityGateError, check_gate, load_passing, validate_spec

SPECS = SpecRegistry()
VEHICLE = SPECS.get("vehicle_extraction")
POOL = "datasets/vehicle_extraction/images"


def _export(db: Database, store: LocalStore, settings: Any, spec: Any = VEHICLE) -> Any:
    summary = validate_spec(db, store, settings, spec)
    return export_dataset(db, store, settings, spec, validation_run_id=summary.validation_run_id)


def _pool_files(store: LocalStore) -> dict[str, tuple[int, float]]:
    """name -> (inode, mtime) of every pool file."""
    out = {}
    for info in store.list(POOL + "/"):
        st = os.stat(store.local_path(info.key))  # type: ignore[arg-type]
        out[info.key] = (st.st_ino, st.st_mtime)
    return out


def test_a_new_version_stores_only_the_images_it_adds(sqlite_db: Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.storage.root)
    ids = vehicle_items(sqlite_db, store, 5)
    v1 = _export(sqlite_db, store, settings)
    assert v1.counts["images"] == 5 and v1.counts["images_stored"] == 5
    # the pool files are hard links of the ingested bytes: no image bytes written at all
    assert v1.counts["image_bytes_written"] == 0
    pool = _pool_files(store)
    assert len(pool) == 5 and not any(store.list(v1.prefix + "/images/"))
    with sqlite_db.session() as s:
        assert s.scalar(select(func.count()).select_from(PoolImage)) == 5

    update_record(sqlite_db, ids[0], {**VEHICLE_OK, "brand": "Volvo"})  # a changed record, same image
    v2 = _export(sqlite_db, store, settings)
    assert v2.created and v2.version == "v0002"
    assert v2.counts["images"] == 5 and v2.counts["images_stored"] == 0 and v2.counts["image_bytes_written"] == 0
    assert _pool_files(store) == pool, "pool files are written once and never changed"

    new = add_item(sqlite_db, store, image_bytes(1000, 750, seed=99))
    add_record(sqlite_db, new, "vehicle_extraction", dict(VEHICLE_OK))
    v3 = _export(sqlite_db, store, settings)
    assert v3.counts["images"] == 6 and v3.counts["images_stored"] == 1
    assert set(_pool_files(store)) == set(pool) | {f"{POOL}/{new.sha256}.png"}
    for v in (v1, v2, v3):
        assert verify_version(store, v.prefix) == []
    manifest = read_manifest(store, v3.prefix)
    assert manifest is not None and manifest["image_layout"] == "pool"
    assert manifest["files"][f"../images/{new.sha256}.png"]["sha256"] == new.sha256


def test_pool_paths_resolve_from_the_version_folder_for_every_trainer(sqlite_db: Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, val_fraction=0.0)
    store = LocalStore(settings.storage.root)
    vehicle_items(sqlite_db, store, 3)
    v = _export(sqlite_db, store, settings)
    folder = store.local_path(v.prefix)
    assert folder is not None
    # qwen-vl-finetune: data_path / image (the dataset checker does what its loader does)
    n, problems, opened = check_dataset(folder / "qwen_train.json", folder)
    assert (n, problems, opened) == (3, [], 3)
    # LLaMA-Factory joins media_dir (= dataset_dir) with the path; ms-swift runs from the folder
    lf = json.loads((folder / "llamafactory_train.json").read_text())
    swift = [json.loads(line) for line in (folder / "swift_train.jsonl").read_text().splitlines()]
    paths = [p for e in lf + swift for p in e["images"]]
    assert len(paths) == 6 and all(p.startswith("../images/") for p in paths)
    assert all(os.path.isfile(os.path.join(folder, p)) for p in paths)


def test_a_self_contained_version_links_its_images(sqlite_db: Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, val_fraction=0.0, image_layout="self_contained")
    store = LocalStore(settings.storage.root)
    vehicle_items(sqlite_db, store, 3)
    v = _export(sqlite_db, store, settings)
    folder = store.local_path(v.prefix)
    assert folder is not None
    qwen = json.loads((folder / "qwen_train.json").read_text())
    assert all(s["image"].startswith("images/") for s in qwen)
    for s in qwen:
        own, pooled = folder / s["image"], store.local_path(f"datasets/vehicle_extraction/{s['image']}")
        assert own.is_file() and pooled is not None and own.samefile(pooled), "a hard link, not a copy"
    assert verify_version(store, v.prefix) == []
    assert check_dataset(folder / "qwen_train.json", folder)[1] == []


def test_a_raw_file_that_changed_since_ingest_is_refused(sqlite_db: Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.storage.root)
    vehicle_items(sqlite_db, store, 2)
    bad = add_item(sqlite_db, store, image_bytes(1000, 750, seed=55))
    bad_id = add_record(sqlite_db, bad, "vehicle_extraction", dict(VEHICLE_OK))
    data = store.get(bad.storage_key)
    store.put(bad.storage_key, data[:-100])  # truncated on disk after ingest
    with pytest.raises(ExportCheckError) as err:
        _export(sqlite_db, store, settings)
    assert err.value.record_ids == [bad_id]
    assert f"has {len(data) - 100} bytes, the ingested item {len(data)}" in str(err.value)
    assert not store.exists(f"{POOL}/{bad.sha256}.png"), "no pool entry for bytes that are not the item's"

    # same size, other bytes: not read at export (a link), caught by the checks that hash
    store.put(bad.storage_key, data[:-1] + bytes([data[-1] ^ 1]))
    v = _export(sqlite_db, store, settings)
    assert verify_version(store, v.prefix) == [f"../images/{bad.sha256}.png: sha256 differs from the manifest"]
    folder = store.local_path(v.prefix)
    assert folder is not None
    problems = [p for f in ("qwen_train.json", "qwen_val.json") for p in check_dataset(folder / f, folder)[1]]
    assert any("content differs from manifest.json" in p for p in problems)


def test_verify_version_notices_a_changed_pool_image(sqlite_db: Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.storage.root)
    vehicle_items(sqlite_db, store, 2)
    v = _export(sqlite_db, store, settings)
    key = next(iter(_pool_files(store)))
    path = store.local_path(key)
    assert path is not None
    path.unlink()  # break the link, then put other bytes there
    path.write_bytes(image_bytes(1000, 750, seed=123))
    problems = verify_version(store, v.prefix)
    assert problems == [f"../images/{Path(key).name}: sha256 differs from the manifest"]


def test_validation_in_chunks_gives_the_same_verdicts(sqlite_db: Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_failed_share=1.0)
    store = LocalStore(settings.storage.root)
    vehicle_items(sqlite_db, store, 7)
    for n, rec in enumerate(
        [{**VEHICLE_OK, "vehicle_box": [100, 150, 1012, 700]}, {**VEHICLE_OK, "plate_number": "ab 12"}]
    ):
        add_record(sqlite_db, add_item(sqlite_db, store, image_bytes(1000, 750, seed=300 + n)), VEHICLE.name, rec)
    whole = validate_spec(sqlite_db, store, settings, VEHICLE)
    chunked = validate_spec(sqlite_db, store, settings, VEHICLE, chunk_size=2)  # 5 chunks
    for key in ("n_records", "n_failed", "failed_checks", "passed_gate"):
        assert getattr(whole, key) == getattr(chunked, key)
    assert load_passing(store, VEHICLE.name, whole.validation_run_id) == load_passing(
        store, VEHICLE.name, chunked.validation_run_id
    )
    with sqlite_db.session() as s:
        rows = s.execute(select(Quarantine.validation_run_id, Quarantine.record_id, Quarantine.failures)).all()
    by_run: dict[int, dict[int, Any]] = {}
    for run, rid, failures in rows:
        by_run.setdefault(run, {})[rid] = failures
    assert by_run[whole.validation_run_id] == by_run[chunked.validation_run_id]
    assert len(by_run[whole.validation_run_id]) == 2


def test_the_gate_names_the_failing_records_and_the_report(sqlite_db: Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_failed_share=0.0)
    store = LocalStore(settings.storage.root)
    vehicle_items(sqlite_db, store, 3)
    item = add_item(sqlite_db, store, image_bytes(1000, 750, seed=400))
    bad = add_record(sqlite_db, item, VEHICLE.name, {**VEHICLE_OK, "vehicle_box": [100, 150, 1012, 700]})
    summary = validate_spec(sqlite_db, store, settings, VEHICLE)
    with pytest.raises(QualityGateError) as err:
        check_gate(summary)
    text = str(err.value)
    assert f"record {bad} (item {item.sha256[:12]})" in text
    assert summary.report_uri and summary.report_uri in text and summary.report_uri.endswith(".html")
    # the export refuses the run with the same facts (from the run row: the report's key)
    with pytest.raises(ExportError) as exp:
        export_dataset(sqlite_db, store, settings, VEHICLE, validation_run_id=summary.validation_run_id)
    assert f"record {bad} " in str(exp.value) and summary.report_key in str(exp.value)


# --------------------------------------------------------------------------- documents


def _routed_document(
    db: Database, store: LocalStore, seed: int, statuses: list[tuple[str, str, str | None]], provenance: str
) -> tuple[Any, int]:
    """A two-page document with its prediction, one review task per page (route, status,
    annotator) and its record; (item, record id)."""
    doc = add_item(db, store, f"%PDF-1.4 doc {seed}".encode(), ext="pdf", media_type="document", page_count=2)
    for n in range(2):
        store.put(f"pages/{doc.sha256}/{n}.png", image_bytes(612, 792, seed=seed + n))
    blocks = [[block("title", [10, 10, 300, 40], f"Doc {seed}")], [block("text", [10, 10, 300, 40], "Body")]]
    record = document_record(doc.sha256, [(612, 792)] * 2, blocks)
    with db.transaction() as s:
        pred = Prediction(
            item_id=doc.id,
            spec="document_layout",
            backend="pymupdf",
            model="pymupdf4llm-layout",
            model_version="t",
            prompt_hash="p",
            status="ok",
            record=record,
        )
        s.add(pred)
        s.flush()
        for page, (route, status, annotator) in enumerate(statuses):
            rt = ReviewTask(
                prediction_id=pred.id,
                page=page,
                item_id=doc.id,
                spec="document_layout",
                route=route,
                status=status,
                external_id=f"document_layout:{doc.sha256[:24]}:{pred.id}:{page}",
                decision={"_uncalibrated": ["blocks"]} if route == "auto" else {},
            )
            s.add(rt)
            s.flush()
            if annotator is not None:
                s.add(
                    Annotation(
                        review_task_id=rt.id,
                        ls_annotation_id=1000 * seed + page,
                        ls_task_id=rt.id,
                        ls_updated_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                        annotator=annotator,
                    )
                )
        pred_id = pred.id
    rid = add_record(db, doc, "document_layout", record, provenance=provenance, annotator="last@example.com")
    with db.transaction() as s:
        from labelloop.db import Record

        row = s.get(Record, rid)
        assert row is not None
        row.prediction_id = pred_id
    return doc, rid


def test_documents_are_exported_page_by_page(sqlite_db: Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, val_fraction=0.0)
    store = LocalStore(settings.storage.root)
    spec = SPECS.get("document_layout")
    done, done_id = _routed_document(
        sqlite_db,
        store,
        10,
        [("review", "completed", "alice@example.com"), ("audit", "completed", "bob@example.com")],
        "human",
    )
    auto, auto_id = _routed_document(sqlite_db, store, 20, [("auto", "auto_accepted", None)] * 2, "auto")
    waiting, waiting_id = _routed_document(
        sqlite_db, store, 30, [("review", "completed", "alice@example.com"), ("review", "imported", None)], "partial"
    )
    v = _export(sqlite_db, store, settings, spec)
    prov = {p["record_id"]: p for p in map(json.loads, store.get(f"{v.prefix}/provenance.jsonl").decode().splitlines())}
    assert set(prov) == {done_id, auto_id}, "a document with a page not final is not in the version"
    pages = prov[done_id]["pages"]
    assert [(p["page"], p["provenance"], p["annotator"]) for p in pages] == [
        (0, "human", "alice@example.com"),
        (1, "audited", "bob@example.com"),
    ]
    assert all(p["annotation_id"] is not None for p in pages)
    auto_pages = prov[auto_id]["pages"]
    assert [p["provenance"] for p in auto_pages] == ["auto", "auto"]
    assert all(p["uncalibrated"] == ["blocks"] and "annotator" not in p for p in auto_pages)
    manifest = read_manifest(store, v.prefix)
    assert manifest is not None and manifest["counts"]["documents_waiting"] == 1
    card = store.get(f"{v.prefix}/README.md").decode()
    assert "## Documents still waiting" in card
    assert f"| {waiting_id} | `{waiting.sha256[:16]}` |  | 0 | 1 (imported) |" in card
    assert "| human | 1 | 25.0% |" in card and "| auto | 2 | 50.0% |" in card  # pages by provenance
    assert "2 page(s) auto-accepted under an uncalibrated manual threshold." in card
    assert done.sha256 != auto.sha256


def test_header_sizes_read_directly_agree_with_pillow() -> None:
    """PNG and JPEG sizes parsed from the first 16 KB (progressive, EXIF, a large ICC profile
    before the frame) are Pillow's; what the direct reader does not know it leaves to Pillow."""
    import io
    import random

    from PIL import Image

    from labelloop.export.images import _direct_size, _pil_size

    rng = random.Random(3)
    for fmt in ("PNG", "JPEG") * 40:
        w, h = rng.randint(1, 2500), rng.randint(1, 2500)
        buf = io.BytesIO()
        extra: dict[str, Any] = {}
        if fmt == "JPEG":
            extra = {"progressive": rng.random() < 0.5, "exif": Image.Exif().tobytes()}
            if rng.random() < 0.4:
                extra["icc_profile"] = rng.randbytes(3000)
        Image.new("RGB", (w, h), (rng.randrange(256), 0, 0)).save(buf, fmt, **extra)
        assert _direct_size(buf.getvalue()[:16384]) == (w, h), (fmt, w, h)
    webp = io.BytesIO()
    Image.new("RGB", (33, 17)).save(webp, "WEBP")
    assert _direct_size(webp.getvalue()) is None
    assert _pil_size(webp.getvalue(), "PNG") == (33, 17), "a wrong extension falls back to Pillow's probe"
    assert _direct_size(b"\xff\xd8\xff\xd9") is None and _direct_size(b"\x89PNG\r\n\x1a\n") is None
