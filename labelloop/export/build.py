"""Write one dataset version's files: images, annotation files per format and split, provenance.

Records stream from the DB in batches. A batch's images are copied on a thread pool while the
previous batch is turned into samples (I/O and CPU overlap); every record becomes samples, every
sample an entry per format, and every entry passes the export checker before it is written.
Problems are collected, not raised, so one run reports every broken record; the caller refuses
to publish when there are any.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from labelloop.config import Settings
from labelloop.db import Database, Item, Record
from labelloop.documents.record import page_image_key
from labelloop.export.answers import AnswerError
from labelloop.export.card import CardStats
from labelloop.export.checker import ExportChecker, Problem
from labelloop.export.formats import (
    ENTRY_BUILDERS,
    LLAMAFACTORY_INFO,
    SPLITS,
    file_name,
    llamafactory_dataset_info,
)
from labelloop.export.images import CopiedImage, ImageCopier, ImageJob, image_name, page_image_name, video_name
from labelloop.export.plan import ExportError, Member, export_formats
from labelloop.export.samples import Sample, build_samples
from labelloop.export.version import PROVENANCE
from labelloop.export.writers import JsonlWriter, open_writer
from labelloop.specs import TaskSpec
from labelloop.validation import record_hash

BATCH = 256
#: an image job and the size (w, h) its boxes refer to; None takes the file's own size
Job = tuple[ImageJob, tuple[int, int] | None]


@dataclass
class Built:
    """What one export wrote, before it is published."""

    files: dict[str, Path | bytes] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    samples: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    records: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))


def member_rows(db: Database, spec: str, members: dict[int, Member]) -> Iterator[Any]:
    item_cols: list[Any] = [
        Item.sha256,
        Item.ext,
        Item.storage_key,
        Item.width,
        Item.height,
        Item.exif_orientation,
        Item.meta,
    ]
    rec_cols: list[Any] = [Record.provenance, Record.model, Record.model_version, Record.annotator]
    stmt = (
        select(Record.id, *item_cols, *rec_cols, Record.confidence, Record.record)
        .join(Item, Item.id == Record.item_id)
        .where(Record.spec == spec)
        .order_by(Record.id)
        .execution_options(yield_per=2000)
    )
    with db.session() as s:
        for row in s.execute(stmt):
            if row.id in members:
                yield row


def image_jobs(spec: TaskSpec, row: Any) -> list[Job]:
    """Image copy jobs of one record (documents: one per page)."""
    if spec.media == "document":
        out: list[Job] = []
        for p, page in enumerate(row.record.get("pages") or []):
            src = page.get("image_key") or page_image_key(row.sha256, p)
            out.append((ImageJob(src, page_image_name(row.sha256, p)), (page["width_px"], page["height_px"])))
        return out
    size = (row.width, row.height) if row.width and row.height else None
    if spec.media == "video":
        return [(ImageJob(row.storage_key, video_name(row.sha256, row.ext), media="video"), size)]
    return [
        (
            ImageJob(
                row.storage_key,
                image_name(row.sha256, row.ext, row.exif_orientation),
                row.exif_orientation,
            ),
            size,
        )
    ]


@dataclass
class _Pending:
    """A batch of records whose image copies are in flight."""

    rows: list[Any]
    jobs: list[list[Job]]
    futures: list[Future[CopiedImage]]


def _batches(rows: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class VersionBuilder:
    """Builds the files of one version into ``tmp`` (annotations) and the store (images)."""

    def __init__(
        self,
        spec: TaskSpec,
        settings: Settings,
        copier: ImageCopier,
        tmp: Path,
        *,
        members: dict[int, Member],
        validation_run_id: int,
        stats: CardStats,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.copier = copier
        self.members = members
        self.run_id = validation_run_id
        self.stats = stats
        self.formats = export_formats(settings)
        self.writers = {(f, sp): open_writer(tmp / file_name(f, sp)) for f in self.formats for sp in SPLITS}
        self.provenance = JsonlWriter(tmp / PROVENANCE)
        self.checker = ExportChecker(spec)
        self.out = Built()

    def run(self, rows: Iterator[Any], dataset_name: str) -> Built:
        pending: _Pending | None = None
        try:
            for batch in _batches(rows, BATCH):
                # start this batch's image copies, then finish the previous batch meanwhile
                jobs = [image_jobs(self.spec, row) for row in batch]
                started = _Pending(batch, jobs, self.copier.submit(job for js in jobs for job, _ in js))
                if pending is not None:
                    self._finish(pending)
                pending = started
            if pending is not None:
                self._finish(pending)
        finally:
            for w in self.writers.values():
                w.close()
            self.provenance.close()
        for (fmt, sp), w in self.writers.items():
            self.out.files[file_name(fmt, sp)] = w.path
        self.out.files[PROVENANCE] = self.provenance.path
        if "llamafactory" in self.formats:
            info = llamafactory_dataset_info(dataset_name, self.out.samples, media=self.spec.media)
            self.out.files[LLAMAFACTORY_INFO] = (json.dumps(info, indent=2) + "\n").encode()
        return self.out

    def _finish(self, pending: _Pending) -> None:
        done = self.copier.collect(pending.futures)
        for row, js in zip(pending.rows, pending.jobs, strict=True):
            self._record(row, js, done)

    def _images(
        self,
        row: Any,
        jobs: list[Job],
        done: dict[str, CopiedImage],
    ) -> list[tuple[str, int, int]] | None:
        """(name, width, height) per image, or None after reporting why the images are unusable."""
        images: list[tuple[str, int, int]] = []
        problems: list[Problem] = []
        for page, (job, size) in enumerate(jobs):
            page_no = page if self.spec.media == "document" else None
            res = done.get(job.name) or CopiedImage(job.name, error="image was not copied")
            if job.name not in done and job.name in self.copier.written and size is not None:
                images.append((job.name, *size))  # shared with an earlier record: already checked
                continue
            if res.error or res.width is None or res.height is None:
                problems.append(Problem(row.id, page_no, "images", res.error or "image size unknown"))
                continue
            if size is not None and (res.width, res.height) != tuple(size):
                got, want = f"{res.width}x{res.height}", f"{size[0]}x{size[1]}"
                msg = f"{job.name} is {got}, the record's boxes refer to {want}"
                problems.append(Problem(row.id, page_no, "images", msg))
            w, h = size or (res.width, res.height)
            images.append((job.name, w, h))
        self.out.problems += problems
        return None if problems else images

    def _record(self, row: Any, jobs: list[Job], done: dict[str, CopiedImage]) -> None:
        member = self.members[row.id]
        if record_hash(row.record) != member.record_hash:
            raise ExportError(f"record {row.id} changed during the export; run the export again")
        images = self._images(row, jobs, done)
        if images is None:
            return
        try:
            samples = build_samples(
                self.spec,
                record_id=row.id,
                record=row.record,
                split=member.split,
                images=images,
                export=self.settings.export,
            )
        except (AnswerError, KeyError, TypeError, ValueError) as e:
            self.out.problems.append(Problem(row.id, None, "samples", f"{type(e).__name__}: {e}"))
            return
        for sample in samples:
            self._write(sample, member.split)
        self.out.records[member.split] += 1
        self.out.samples[member.split] += len(samples)
        self.provenance.write(
            {
                "record_id": row.id,
                "item_sha256": row.sha256,
                "split": member.split,
                "provenance": row.provenance,
                "model": row.model,
                "model_version": row.model_version,
                "annotator": row.annotator,
                "confidence": row.confidence,
                "record_hash": member.record_hash,
                "validation_run_id": self.run_id,
                "samples": len(samples),
            }
        )
        self.stats.add(
            split=member.split,
            provenance=row.provenance,
            model=row.model,
            model_version=row.model_version,
            annotator=row.annotator,
            confidence=row.confidence,
            record=row.record,
            n_samples=len(samples),
            duration_s=(row.meta or {}).get("duration_s") if self.spec.media == "video" else None,
        )

    def _write(self, sample: Sample, split: str) -> None:
        present = self.copier.written.keys()
        for fmt in self.formats:
            entry = ENTRY_BUILDERS[fmt](sample)
            self.out.problems += self.checker.check(
                fmt,
                entry,
                record_id=sample.record_id,
                page=sample.page,
                images_present=present,
                bounds=sample.frame.bounds,
                original=sample.frame.original,
            )
            self.writers[(fmt, split)].write(entry)
