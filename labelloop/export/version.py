"""Dataset version names, layout and manifests; reading a published version back.

Layout: ``datasets/<spec>/<version>/`` with the annotation files, ``README.md``, ``card/`` and
``manifest.json``; the images in the spec's pool ``datasets/<spec>/images/`` (shared by every
version, written once per image) or, with ``export.image_layout = "self_contained"``, also in the
version's own ``images/``. The manifest is written last (``labelloop.storage.publish``) and lists
every file the version uses with its sha256, under the path the annotation files use relative to
the version folder (``../images/<sha>.png`` for pool images), so "the manifest exists" means "the
version is complete", and a reader can verify every byte it uses. Versions are named ``v0001``,
``v0002``...: sortable as strings, and short enough for a trainer's dataset name.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import shutil
from pathlib import Path
from typing import Any

from labelloop.export.images import resolve_ref
from labelloop.storage import ObjectNotFound, ObjectStore
from labelloop.storage.base import sha256_file

MANIFEST = "manifest.json"
#: one line per member record: provenance, model version, annotator, split, validation run
PROVENANCE = "provenance.jsonl"
#: /2: image paths may point into the spec's pool (``../images/...``)
FORMAT = "labelloop.dataset/2"
_VERSION = re.compile(r"^v(\d{4,})$")


class VersionError(RuntimeError):
    """A version is missing, incomplete or does not match its manifest."""


def version_name(n: int) -> str:
    return f"v{n:04d}"


def version_number(name: str) -> int:
    m = _VERSION.match(name)
    if not m:
        raise ValueError(f"not a version name: {name!r}")
    return int(m.group(1))


def version_prefix(spec: str, version: str) -> str:
    return f"datasets/{spec}/{version}"


def dataset_name(spec: str, version: str) -> str:
    """Name under which trainers register the version, e.g. ``labelloop_grounding_v0003``."""
    return f"labelloop_{spec}_{version}"


def read_manifest(store: ObjectStore, prefix: str) -> dict[str, Any] | None:
    """The version's manifest, or None when it is not (or not completely) published."""
    try:
        return json.loads(store.get(f"{prefix.rstrip('/')}/{MANIFEST}"))
    except ObjectNotFound:
        return None


def verify_version(store: ObjectStore, prefix: str) -> list[str]:
    """Problems with a published version: missing files or sha256 mismatches (empty = intact).

    Reads every file the version uses, pool images included: the thorough check (the export
    itself hashes each pool image once, when it enters the pool).
    """
    prefix = prefix.rstrip("/")
    manifest = read_manifest(store, prefix)
    if manifest is None:
        return [f"{prefix}: no {MANIFEST} (not published)"]
    problems = []
    for name, meta in manifest["files"].items():
        try:
            data = store.get(resolve_ref(prefix, name))
        except ValueError as e:
            problems.append(f"{name}: {e}")
            continue
        except ObjectNotFound:
            problems.append(f"{name}: missing")
            continue
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest")
    return problems


def materialize(store: ObjectStore, prefix: str, dest: Path) -> Path:
    """A local folder with the whole version, every file checked against the manifest; returns
    the folder to point trainers at (the version folder).

    A local store already holds the files as folders: the version folder is returned as is (its
    ``../images`` is the pool). Otherwise the files are downloaded into ``dest/<version>/`` and
    pool images into ``dest/images/``, so the same relative paths resolve; the pool part is
    shared by later versions materialized into the same ``dest`` (an image downloaded once). A
    half-downloaded version is never mistaken for a whole one: its files go to a temporary
    sibling folder renamed at the end, and an existing copy with the same manifest is reused.
    """
    prefix = prefix.rstrip("/")
    manifest_bytes = _get_manifest_bytes(store, prefix)
    local = store.local_path(f"{prefix}/{MANIFEST}")
    if local is not None:
        return local.parent
    dest = Path(dest)
    version = posixpath.basename(prefix)
    final = dest / version
    if (final / MANIFEST).is_file() and (final / MANIFEST).read_bytes() == manifest_bytes:
        return final
    tmp = dest / f".{version}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = json.loads(manifest_bytes)
    for name, meta in manifest["files"].items():
        key = resolve_ref(prefix, name)
        if posixpath.normpath(name).startswith("../"):
            path = dest / posixpath.normpath(f"{version}/{name}")  # the pool, beside the version
            if path.is_file() and sha256_file(path) == meta["sha256"]:
                continue  # downloaded for an earlier version
            part = path.with_name(f".{path.name}.partial")
            part.parent.mkdir(parents=True, exist_ok=True)
            store.get_file(key, part)
            if sha256_file(part) != meta["sha256"]:
                part.unlink(missing_ok=True)
                raise VersionError(f"{key}: downloaded bytes do not match the manifest")
            part.replace(path)
            continue
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(key, path)
        if sha256_file(path) != meta["sha256"]:
            raise VersionError(f"{prefix}/{name}: downloaded bytes do not match the manifest")
    (tmp / MANIFEST).write_bytes(manifest_bytes)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _get_manifest_bytes(store: ObjectStore, prefix: str) -> bytes:
    try:
        return store.get(f"{prefix}/{MANIFEST}")
    except ObjectNotFound:
        raise VersionError(f"{prefix} is not a published dataset version (no {MANIFEST})") from None
