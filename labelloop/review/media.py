"""How annotators' browsers get an item's image, per ``settings.label_studio.media_mode``.

``local``      Label Studio serves files under its ``LOCAL_FILES_DOCUMENT_ROOT``: task data holds
               ``/data/local-files/?d=<path under that root>``. Serving answers 404 unless a
               local-files import storage of the project covers the file's folder, so one is
               created per folder (a storage path must be strictly below the root).
``s3``         task data holds ``s3://<bucket>/<key>``; an S3 import storage on the bucket lets Label
               Studio resolve it to a presigned URL (303) for the browser. Nothing is synced.
               The storage holds Label Studio's OWN read-only key (``label_studio.s3_access_key``),
               never the platform's read-write one: Label Studio keeps storage credentials in its
               database and any project admin can see them. Without such a key, or with the
               platform's, the import refuses to start.
``presigned``  task data holds a presigned GET URL from the object store itself: read-only, one
               object, expiring (``storage.presign_expiry_s``); Label Studio gets no key at all.

The import storages are resolvers only: they are never synced (a sync would create one task per
file, not deduplicated against our imports), and their ``regex_filter`` matches nothing so a
click on "Sync" in the UI cannot flood the project either.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from label_studio_sdk import LabelStudio

from labelloop.config import Settings
from labelloop.review.client import call
from labelloop.storage import LocalStore, ObjectStore

#: a regular expression that matches no object key
MATCH_NOTHING = "(?!)"


class MediaError(RuntimeError):
    pass


def label_studio_s3_keys(settings: Settings) -> tuple[str, str]:
    """Label Studio's own S3 key pair for media_mode=s3, or :class:`MediaError` saying why not.

    Whether a key is read-only is the S3 server's policy, which the client cannot see without
    trying a write; what it can refuse is no key at all and the platform's own key.
    """
    lss, st = settings.label_studio, settings.storage
    access, secret = lss.s3_access_key.get_secret_value(), lss.s3_secret_key.get_secret_value()
    if not access or not secret:
        raise MediaError(
            "media_mode=s3 stores S3 credentials in Label Studio: set label_studio.s3_access_key and "
            f"label_studio.s3_secret_key to a read-only key of bucket {st.bucket!r} (s3:GetObject, s3:ListBucket), "
            "or use media_mode=presigned (step: media setup)"
        )
    if access == st.access_key.get_secret_value():
        raise MediaError(
            "label_studio.s3_access_key is the platform's own storage key (storage.access_key), which can write "
            f"and delete in bucket {st.bucket!r}; give Label Studio a read-only key of its own (step: media setup)"
        )
    return access, secret


class MediaLinker:
    """Turns object keys into task-data URLs and makes sure Label Studio can serve them."""

    def __init__(self, settings: Settings, store: ObjectStore, ls: LabelStudio, project_id: int) -> None:
        self.mode = settings.label_studio.media_mode
        self.settings = settings
        self.store = store
        self.ls = ls
        self.project_id = project_id
        self._ready: set[str] = set()
        if self.mode == "local":
            if not isinstance(store, LocalStore):
                raise MediaError("media_mode=local needs a local object store (storage.backend=local)")
            self.store_root = Path(os.path.normpath(store.root))
            self.files_root = Path(
                os.path.normpath(settings.label_studio.local_files_root or self.store_root)
            ).absolute()
            if self.store_root != self.files_root and self.files_root not in self.store_root.parents:
                raise MediaError(
                    f"object store root {self.store_root} is not under Label Studio's "
                    f"LOCAL_FILES_DOCUMENT_ROOT {self.files_root} (label_studio.local_files_root)"
                )
        elif self.mode in ("s3", "presigned") and store.scheme != "s3":
            raise MediaError(f"media_mode={self.mode} needs the S3 object store (storage.backend=s3)")
        if self.mode == "s3":
            self._ls_keys = label_studio_s3_keys(settings)

    # ------------------------------------------------------------------ URLs

    def url(self, key: str) -> str:
        if self.mode == "local":
            rel = (self.store_root / key).relative_to(self.files_root).as_posix()
            return "/data/local-files/?d=" + quote(rel, safe="/")
        if self.mode == "s3":
            return f"s3://{self.settings.storage.bucket}/{key}"
        return self.store.presigned_url(key, self.settings.storage.presign_expiry_s)

    # ------------------------------------------------------------------ storages

    def needs_prepare(self, keys: list[str]) -> bool:
        """Whether :meth:`prepare` would have to create a storage for ``keys`` (a Label Studio write)."""
        if self.mode == "local":
            return any(self._local_folder(k) not in self._ready for k in keys)
        return self.mode == "s3" and "s3" not in self._ready

    def prepare(self, keys: list[str]) -> None:
        """Create the import storages the ``keys`` need (once per folder / bucket; idempotent)."""
        if self.mode == "local":
            for folder in {self._local_folder(k) for k in keys}:
                if folder not in self._ready:
                    self._ensure_local(folder)
                    self._ready.add(folder)
        elif self.mode == "s3" and "s3" not in self._ready:
            self._ensure_s3()
            self._ready.add("s3")

    def _local_folder(self, key: str) -> str:
        if self.store_root != self.files_root:
            return str(self.store_root)
        # the storage path may not be the document root itself: use the key's top folder
        return str(self.store_root / key.split("/", 1)[0])

    def _ensure_local(self, folder: str) -> None:
        existing = call("list local storages", self.ls.import_storage.local.list, project=self.project_id)
        if any(os.path.normpath(s.path or "") == folder for s in existing):
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        call(
            f"create local storage {folder}",
            self.ls.import_storage.local.create,
            project=self.project_id,
            path=folder,
            title=f"labelloop media {Path(folder).name}",
            description="Resolver for task images; do not sync (labelloop imports tasks itself).",
            regex_filter=MATCH_NOTHING,
            use_blob_urls=True,
        )

    def _ensure_s3(self) -> None:
        st = self.settings.storage
        bucket = st.bucket
        existing = call("list S3 storages", self.ls.import_storage.s3.list, project=self.project_id)
        if any(s.bucket == bucket for s in existing):
            return
        endpoint = self.settings.label_studio.s3_endpoint
        if endpoint is None:
            endpoint = f"{'https' if st.secure else 'http'}://{st.endpoint}"
        kwargs = {"s3endpoint": endpoint} if endpoint else {}
        call(
            f"create S3 storage {bucket}",
            self.ls.import_storage.s3.create,
            project=self.project_id,
            bucket=bucket,
            title=f"labelloop media {bucket}",
            description="Resolver for task images; do not sync (labelloop imports tasks itself).",
            aws_access_key_id=self._ls_keys[0],
            aws_secret_access_key=self._ls_keys[1],
            region_name=st.region or "us-east-1",
            presign=True,
            presign_ttl=max(1, st.presign_expiry_s // 60),
            use_blob_urls=True,
            regex_filter=MATCH_NOTHING,
            recursive_scan=True,
            **kwargs,
        )
