"""Dataset versions: published immutably (manifest last), no-op re-exports, new versions on change,
crash safety, the export checker's veto, provenance and the dataset card."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select
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

from labelloop.config import Settings
from labelloop.db import Database, DatasetVersion, DatasetVersionRecord
from labelloop.export import (
    ExportCheckError,
    ExportError,
    export_dataset,
    read_manifest,
    verify_version,
)
from labelloop.export.split import split_of
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore, ObjectStore
from labelloop.validation import validate_spec

SPECS = SpecRegistry()
VEHICLE = SPECS.get("vehicle_extraction")


def _validate_and_export(db: Database, store: ObjectStore, settings: Settings, spec=VEHICLE):  # type: ignore[no-untyped-def]
    summary = validate_spec(db, store, settings, spec)
    return export_dataset(db, store, settings, spec, validation_run_id=summary.validation_run_id)


def _versions(db: Database) -> list[DatasetVersion]:
    with db.session() as s:
        return list(s.scalars(select(DatasetVersion).order_by(DatasetVersion.id)))


def test_export_publishes_a_complete_version(db: Database, settings: Settings, store: LocalStore) -> None:
    ids = vehicle_items(db, store, 12)
    bad_item = add_item(db, store, image_bytes(1000, 750, seed=77))
    bad = add_record(db, bad_item, "vehicle_extraction", {**VEHICLE_OK, "color": "pink"})
    settings.export.max_failed_share = 0.2
    result = _validate_and_export(db, store, settings)

    assert result.created and result.version == "v0001"
    assert result.prefix == "datasets/vehicle_extraction/v0001"
    assert result.uri == store.uri(result.prefix)
    manifest = read_manifest(store, result.prefix)
    assert manifest is not None and verify_version(store, result.prefix) == []
    assert hashlib.sha256(store.get(f"{result.prefix}/manifest.json")).hexdigest() == result.manifest_sha256
    listed = set(manifest["files"])
    on_disk = {i.key[len(result.prefix) + 1 :] for i in store.list(result.prefix + "/")} - {"manifest.json"}
    own = {n for n in listed if not n.startswith("../")}
    assert own == on_disk, "the manifest lists every file of the version folder, nothing else"
    pool = {
        "../" + i.key[len("datasets/vehicle_extraction/") :] for i in store.list("datasets/vehicle_extraction/images/")
    }
    assert listed - own == pool, "...and every image it uses, in the spec's pool (no copy in the version)"
    assert not any(store.list(result.prefix + "/images/"))
    for f in (
        "qwen_train.json",
        "llamafactory_val.json",
        "dataset_info.json",
        "swift_train.jsonl",
        "README.md",
    ):
        assert f in listed
    items_by_record = {}
    prov = [json.loads(line) for line in store.get(f"{result.prefix}/provenance.jsonl").decode().splitlines()]
    for p in prov:
        items_by_record[p["record_id"]] = p["item_sha256"]
        assert p["split"] == split_of(p["item_sha256"], settings.export.val_fraction)
        assert f"../images/{p['item_sha256']}.png" in listed
        assert p["validation_run_id"] == result.validation_run_id
    assert set(items_by_record) == set(ids) and bad not in items_by_record
    assert {p["provenance"] for p in prov} == {"human", "auto", "audited"}
    assert {p["annotator"] for p in prov if p["provenance"] == "auto"} == {None}
    counts = manifest["counts"]
    assert counts["records"] == 12 and counts["images"] == 12 and counts["quarantined"] == 1
    assert counts["train"]["records"] + counts["val"]["records"] == 12
    assert counts["provenance"] == {"audited": 4, "auto": 4, "human": 4}
    qwen = json.loads(store.get(f"{result.prefix}/qwen_train.json"))
    assert len(qwen) == counts["train"]["samples"]
    with db.session() as s:
        members = s.scalars(select(DatasetVersionRecord)).all()
        assert {m.record_id for m in members} == set(ids)
        assert all(m.split == split_of(items_by_record[m.record_id], 0.1) for m in members)
        (dv,) = s.scalars(select(DatasetVersion)).all()
        assert (dv.n_records, dv.n_train + dv.n_val, dv.content_hash) == (12, 12, result.content_hash)
    readme = store.get(f"{result.prefix}/README.md").decode()
    assert "| human | 4 | 33.3% |" in readme and "![color](card/color.png)" in readme
    for png in ("card/color.png", "card/confidence.png", "card/plate_color.png"):
        assert Image.open(io.BytesIO(store.get(f"{result.prefix}/{png}"))).format == "PNG"


def test_reexport_with_nothing_new_makes_no_version(sqlite_db: Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.storage.root)
    vehicle_items(sqlite_db, store, 4)
    first = _validate_and_export(sqlite_db, store, settings)
    again = _validate_and_export(sqlite_db, store, settings)  # new validation run, same records
    assert first.created and not again.created
    assert again.version == first.version and again.content_hash == first.content_hash
    assert "same content" in again.reason
    assert len(_versions(sqlite_db)) == 1
    assert not store.exists("datasets/vehicle_extraction/v0002/manifest.json")


def test_changed_record_makes_a_new_version_and_the_old_stays_intact(
    sqlite_db: Database,
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.storage.root)
    ids = vehicle_items(sqlite_db, store, 4)
    v1 = _validate_and_export(sqlite_db, store, settings)
    v1_files = {i.key: store.get(i.key) for i in store.list(v1.prefix + "/")}
    update_record(sqlite_db, ids[0], {**VEHICLE_OK, "brand": "Volvo"})

    # changed after its validation run: left out (only validated content ships) and counted
    stale = export_dataset(sqlite_db, store, settings, VEHICLE, validation_run_id=v1.validation_run_id)
    assert stale.version == "v0002" and stale.counts["records"] == 3 and stale.counts["stale_records"] == 1
    prov = [json.loads(line) for line in store.get(f"{stale.prefix}/provenance.jsonl").decode().splitlines()]
    assert ids[0] not in {p["record_id"] for p in prov} and len(prov) == 3

    v3 = _validate_and_export(sqlite_db, store, settings)
    assert v3.created and v3.version == "v0003" and v3.content_hash != v1.content_hash
    assert v3.counts["records"] == 4 and v3.counts["stale_records"] == 0
    assert {i.key: store.get(i.key) for i in store.list(v1.prefix + "/")} == v1_files
    assert verify_version(store, v1.prefix) == [] and verify_version(store, v3.prefix) == []
    answers = [
        json.loads(s["conversations"][1]["value"])
        for f in ("qwen_train.json", "qwen_val.json")
        for s in json.loads(store.get(f"{v3.prefix}/{f}"))
    ]
    assert "Volvo" in {a["brand"] for a in answers}


def test_a_crash_before_the_manifest_leaves_no_visible_version(
    sqlite_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.storage.root)
    vehicle_items(sqlite_db, store, 5)
    summary = validate_spec(sqlite_db, store, settings, VEHICLE)
    real_put = LocalStore.put

    def crash_on_manifest(self, key, data, **kw):  # type: ignore[no-untyped-def]
        if key.endswith("/manifest.json"):
            raise OSError("disk full (simulated)")
        return real_put(self, key, data, **kw)

    monkeypatch.setattr(LocalStore, "put", crash_on_manifest)
    with pytest.raises(OSError, match="simulated"):
        export_dataset(sqlite_db, store, settings, VEHICLE, validation_run_id=summary.validation_run_id)
    prefix = "datasets/vehicle_extraction/v0001"
    assert any(store.list(prefix + "/")), "the files were written..."
    assert read_manifest(store, prefix) is None, "...but without a manifest the version does not exist"
    assert _versions(sqlite_db) == []
    store.put(f"{prefix}/images/stray-from-crash.png", b"junk")

    monkeypatch.setattr(LocalStore, "put", real_put)
    result = export_dataset(sqlite_db, store, settings, VEHICLE, validation_run_id=summary.validation_run_id)
    assert result.created and result.version == "v0001"
    assert verify_version(store, prefix) == []
    assert not store.exists(f"{prefix}/images/stray-from-crash.png")


def test_a_crash_after_the_manifest_is_adopted_by_the_rerun(
    sqlite_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.storage.root)
    vehicle_items(sqlite_db, store, 3)
    summary = validate_spec(sqlite_db, store, settings, VEHICLE)
    import labelloop.export.run as run_mod

    def db_down(*a, **kw):  # type: ignore[no-untyped-def]
        raise RuntimeError("database went away (simulated)")

    monkeypatch.setattr(run_mod, "register_version", db_down)
    with pytest.raises(RuntimeError, match="simulated"):
        export_dataset(sqlite_db, store, settings, VEHICLE, validation_run_id=summary.validation_run_id)
    manifest_bytes = store.get("datasets/vehicle_extraction/v0001/manifest.json")
    monkeypatch.undo()
    result = export_dataset(sqlite_db, store, settings, VEHICLE, validation_run_id=summary.validation_run_id)
    assert result.created and result.version == "v0001"
    assert result.manifest_sha256 == hashlib.sha256(manifest_bytes).hexdigest()
    with sqlite_db.session() as s:
        assert len(s.scalars(select(DatasetVersionRecord)).all()) == 3


def test_the_export_checker_refuses_a_broken_version_and_names_the_records(
    sqlite_db: Database,
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.storage.root)
    vehicle_items(sqlite_db, store, 3)
    missing = add_item(sqlite_db, store, image_bytes(1000, 750, seed=40))
    missing_id = add_record(sqlite_db, missing, "vehicle_extraction", dict(VEHICLE_OK))
    wrong = add_item(sqlite_db, store, image_bytes(800, 600, seed=41), width=1000, height=750)
    wrong_id = add_record(sqlite_db, wrong, "vehicle_extraction", dict(VEHICLE_OK))
    summary = validate_spec(sqlite_db, store, settings, VEHICLE)
    assert summary.n_failed == 0  # the records themselves are valid...
    store.delete(missing.storage_key)  # ...but one image vanished, one has another size than probed
    with pytest.raises(ExportCheckError) as err:
        export_dataset(sqlite_db, store, settings, VEHICLE, validation_run_id=summary.validation_run_id)
    assert err.value.record_ids == sorted([missing_id, wrong_id])
    text = str(err.value)
    assert f"record {missing_id} [images]: cannot read {missing.storage_key}" in text
    assert "is 800x600, the record's boxes refer to 1000x750" in text
    assert read_manifest(store, "datasets/vehicle_extraction/v0001") is None
    assert _versions(sqlite_db) == []


def test_export_requires_a_passed_gate(sqlite_db: Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_failed_share=0.0)
    store = LocalStore(settings.storage.root)
    vehicle_items(sqlite_db, store, 2)
    add_record(sqlite_db, add_item(sqlite_db, store, image_bytes(1000, 750, 9)), "vehicle_extraction", {})
    summary = validate_spec(sqlite_db, store, settings, VEHICLE)
    with pytest.raises(ExportError, match="did not pass its quality gate"):
        export_dataset(sqlite_db, store, settings, VEHICLE, validation_run_id=summary.validation_run_id)
    with pytest.raises(ExportError, match="no finished validation run"):
        export_dataset(sqlite_db, store, settings, SPECS.get("caption"))


def test_exif_rotated_images_are_exported_in_the_boxes_pixel_grid(
    sqlite_db: Database,
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.storage.root)
    # stored 750x1000 (portrait) with EXIF orientation 6: viewers (and our boxes) see 1000x750
    data = image_bytes(750, 1000, seed=5, fmt="JPEG", exif_orientation=6)
    item = add_item(sqlite_db, store, data, ext="jpg", width=1000, height=750, exif_orientation=6)
    add_record(sqlite_db, item, "vehicle_extraction", dict(VEHICLE_OK))
    _validate_and_export(sqlite_db, store, settings)
    exported = store.get(f"datasets/vehicle_extraction/images/{item.sha256}.png")
    with Image.open(io.BytesIO(exported)) as img:
        assert img.size == (1000, 750)
        assert img.getexif().get(0x0112) in (None, 1)


def test_document_pages_become_samples_with_their_page_images(
    sqlite_db: Database, tmp_path: Path, sample_data: Path
) -> None:
    settings = make_settings(tmp_path)
    store = LocalStore(settings.storage.root)
    doc = add_item(sqlite_db, store, b"%PDF-1.4 test", ext="pdf", media_type="document", page_count=2)
    for n in range(2):
        store.put(f"pages/{doc.sha256}/{n}.png", image_bytes(612, 792, seed=n))
    blocks = [[block("title", [10, 10, 300, 40], "Intro")], [block("text", [10, 10, 300, 40], "Body")]]
    add_record(sqlite_db, doc, "document_layout", document_record(doc.sha256, [(612, 792)] * 2, blocks))
    # and a real photo for another spec, from the sample data
    photo = (sample_data / "images" / "qwen-multiple_items.png").read_bytes()
    item = add_item(sqlite_db, store, photo)
    add_record(sqlite_db, item, "caption", {"caption": "Several items on a table."})

    result = _validate_and_export(sqlite_db, store, settings, SPECS.get("document_layout"))
    manifest = read_manifest(store, result.prefix)
    assert manifest is not None and manifest["counts"]["samples"] == 2 and manifest["counts"]["records"] == 1
    split = split_of(doc.sha256, settings.export.val_fraction)
    samples = json.loads(store.get(f"{result.prefix}/qwen_{split}.json"))
    assert [s["image"] for s in samples] == [f"../images/{doc.sha256}_p0.png", f"../images/{doc.sha256}_p1.png"]
    assert [s["conversations"][1]["value"] for s in samples] == ["# Intro", "Body"]
    assert "block types" in store.get(f"{result.prefix}/README.md").decode()

    cap = _validate_and_export(sqlite_db, store, settings, SPECS.get("caption"))
    cap_manifest = read_manifest(store, cap.prefix)
    assert cap_manifest is not None and f"../images/{item.sha256}.png" in cap_manifest["files"]
    assert cap_manifest["files"][f"../images/{item.sha256}.png"]["sha256"] == item.sha256
