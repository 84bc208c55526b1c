"""Object stores: the same contract for the local folder and for S3 over HTTP (moto server)."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import httpx
import pytest

from labelloop.storage import LocalStore, ObjectNotFound, ObjectStore, StorageError, publish


@pytest.fixture(params=["local", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "objects")
    return request.getfixturevalue("s3_store")


def test_put_get_stat_exists_delete(any_store: ObjectStore, tmp_path: Path) -> None:
    info = any_store.put("raw/ab/abc.bin", b"hello", content_type="application/octet-stream")
    assert info.size == 5
    assert any_store.get("raw/ab/abc.bin") == b"hello"
    assert any_store.stat("raw/ab/abc.bin").size == 5
    assert any_store.exists("raw/ab/abc.bin")
    any_store.put("raw/ab/abc.bin", io.BytesIO(b"hello world"))  # overwrite from a stream
    assert any_store.get("raw/ab/abc.bin") == b"hello world"
    src = tmp_path / "src.txt"
    src.write_bytes(b"x" * 100_000)
    any_store.put_file("f/big.txt", src)
    out = any_store.get_file("f/big.txt", tmp_path / "out" / "big.txt")
    assert out.read_bytes() == src.read_bytes()
    any_store.delete("raw/ab/abc.bin")
    assert not any_store.exists("raw/ab/abc.bin")
    any_store.delete("raw/ab/abc.bin")  # missing: not an error
    with pytest.raises(ObjectNotFound):
        any_store.get("raw/ab/abc.bin")
    with pytest.raises(ObjectNotFound):
        any_store.stat("nope/x")


def test_get_head_reads_only_the_start(any_store: ObjectStore) -> None:
    """The export reads image headers this way (a ranged GET on S3), never the whole file."""
    data = bytes(range(256)) * 40
    any_store.put("raw/ab/head.bin", data)
    assert any_store.get_head("raw/ab/head.bin", 100) == data[:100]
    assert any_store.get_head("raw/ab/head.bin", 10**6) == data
    with pytest.raises(ObjectNotFound):
        any_store.get_head("raw/ab/missing.bin", 10)


def test_list_by_prefix_is_recursive_sorted_and_exact(any_store: ObjectStore) -> None:
    for key in ["a/2.txt", "a/1.txt", "a/sub/3.txt", "ab/4.txt", "b/5.txt"]:
        any_store.put(key, key.encode())
    assert [o.key for o in any_store.list("a/")] == ["a/1.txt", "a/2.txt", "a/sub/3.txt"]
    assert [o.key for o in any_store.list("a")] == ["a/1.txt", "a/2.txt", "a/sub/3.txt", "ab/4.txt"]
    assert len(list(any_store.list(""))) == 5
    assert list(any_store.list("zzz/")) == []


@pytest.mark.parametrize("key", ["/abs", "../up", "a/../b", "a//b", "a\\b", ""])
def test_bad_keys_are_refused(any_store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        any_store.put(key, b"x")


def test_presigned_url_serves_the_bytes_over_http(s3_store: ObjectStore) -> None:
    s3_store.put("pages/x/0.png", b"\x89PNG fake")
    url = s3_store.presigned_url("pages/x/0.png", expires_s=60)
    assert url.startswith("http://127.0.0.1:") and "X-Amz-Signature" in url
    resp = httpx.get(url)
    assert resp.status_code == 200 and resp.content == b"\x89PNG fake"
    with pytest.raises(ObjectNotFound):
        s3_store.presigned_url("pages/x/missing.png")


def test_local_presigned_url_is_file_uri(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/b.txt", b"x")
    assert store.presigned_url("a/b.txt") == (tmp_path / "a" / "b.txt").resolve().as_uri()
    assert store.uri("a/b.txt").startswith("file://")


def test_s3_uri_and_missing_bucket_without_create(s3_settings) -> None:  # type: ignore[no-untyped-def]
    from labelloop.storage.s3 import S3Store

    store = S3Store(s3_settings.model_copy(update={"create_bucket": False}))
    with pytest.raises(StorageError, match="does not exist"):
        store.put("x", b"1")
    assert S3Store(s3_settings).uri("a/b") == f"s3://{s3_settings.bucket}/a/b"


def test_local_put_is_atomic_for_concurrent_readers(tmp_path: Path) -> None:
    """A reader polling while a large object is rewritten sees only whole versions."""
    store = LocalStore(tmp_path)
    a, b = b"a" * 4_000_000, b"b" * 4_000_000
    store.put("obj", a)
    seen: set[int] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = store.get("obj")
            seen.add(len(data))
            assert data in (a, b)

    t = threading.Thread(target=reader)
    t.start()
    for _ in range(20):
        store.put("obj", b)
        store.put("obj", a)
    stop.set()
    t.join()
    assert seen == {4_000_000}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_publish_writes_manifest_last_and_a_crash_leaves_no_manifest(any_store: ObjectStore, tmp_path: Path) -> None:
    def manifest(sums: dict[str, tuple[str, int]]) -> bytes:
        return json.dumps({"files": {k: {"sha256": v[0], "size": v[1]} for k, v in sums.items()}}).encode()

    f = tmp_path / "img.png"
    f.write_bytes(b"png-bytes")
    publish(
        any_store,
        "datasets/x/v1",
        [("annotations.json", b"[]"), ("images/img.png", f)],
        "manifest.json",
        manifest,
    )
    m = json.loads(any_store.get("datasets/x/v1/manifest.json"))
    assert set(m["files"]) == {"annotations.json", "images/img.png"}
    assert m["files"]["images/img.png"]["size"] == 9

    def crashing_files():  # type: ignore[no-untyped-def]
        yield "annotations.json", b"[1]"
        raise RuntimeError("crash between files and manifest")

    with pytest.raises(RuntimeError):
        publish(any_store, "datasets/x/v2", crashing_files(), "manifest.json", manifest)
    assert any_store.exists("datasets/x/v2/annotations.json")
    assert not any_store.exists("datasets/x/v2/manifest.json")
