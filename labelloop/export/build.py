"""Write one dataset version's files: annotation files per format and split, provenance, and the
images (in the spec's pool, see :mod:`labelloop.export.images`).

Members stream from the DB in batches (:class:`labelloop.export.plan.MemberStream`). A batch's
images are resolved against the pool (one query) and the new ones stored on a thread pool while
the previous batch is turned into samples (I/O and CPU overlap); every record becomes samples,
every sample an entry per format, and every entry passes the export checker before it is written.
Nothing is kept per record beyond the current batches, so memory is flat in the version's size.
Problems are collected, not raised, so one run reports every broken record; the caller refuses
to publish when there are any.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelloop.config import Settings
from labelloop.db import Database
from labelloop.documents.record import page_image_key
from labelloop.export.answers import AnswerError
from labelloop.export.card import CardStats
from labelloop.export.checker import ExportChecker, Problem
from labelloop.export.documents import page_provenance, record_pages
from labelloop.export.formats import (
    ENTRY_BUILDERS,
    LLAMAFACTORY_INFO,
    SPLITS,
    file_name,
    llamafactory_dataset_info,
)
from labelloop.export.images import (
    ImageJob,
    ImagePool,
    PoolBatch,
    PooledImage,
    image_name,
    page_image_name,
    video_name,
)
from labelloop.export.plan import Member, export_formats
from labelloop.export.samples import Sample, build_samples
from labelloop.export.version import PROVENANCE
from labelloop.export.writers import JsonlWriter, open_writer
from labelloop.specs import TaskSpec

BATCH = 256
#: problems kept in full (all are counted): a version with 100k broken records must not hold
#: 100k messages in memory to say so
MAX_PROBLEMS = 1000
#: an image job and the size (w, h) its boxes refer to; None takes the file's own size
Job = tuple[ImageJob, tuple[int, int] | None]


@dataclass
class Built:
    """What one export wrote, before it is published."""

    files: dict[str, Path | bytes] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    n_problems: int = 0
    samples: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    records: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    #: entries written per annotation file (joining shards' fragments needs them)
    entries: dict[str, int] = field(default_factory=dict)

    def add_problems(self, problems: Iterable[Problem]) -> None:
        for p in problems:
            self.n_problems += 1
            if len(self.problems) < MAX_PROBLEMS:
                self.problems.append(p)


def image_jobs(spec: TaskSpec, row: Any) -> list[Job]:
    """Pool jobs of one record's images (documents: one per page)."""
    if spec.media == "document":
        out: list[Job] = []
        for p, page in enumerate(row.record.get("pages") or []):
            src = page.get("image_key") or page_image_key(row.sha256, p)
            out.append((ImageJob(src, page_image_name(row.sha256, p)), (page["width_px"], page["height_px"])))
        return out
    size = (row.width, row.height) if row.width and row.height else None
    if spec.media == "video":
        job = ImageJob(row.storage_key, video_name(row.sha256, row.ext), media="video", expect_sha256=row.sha256)
        return [(job, size)]
    job = ImageJob(
        row.storage_key,
        image_name(row.sha256, row.ext, row.exif_orientation),
        row.exif_orientation,
        expect_sha256=row.sha256,
        expect_size=row.size_bytes,
        probed=size,
    )
    return [(job, size)]


@dataclass
class _Pending:
    """A batch of records whose images are being put into the pool."""

    rows: list[tuple[Any, Member]]
    jobs: list[list[Job]]
    images: PoolBatch


def _batches(rows: Iterable[tuple[Any, Member]], size: int) -> Iterator[list[tuple[Any, Member]]]:
    batch: list[tuple[Any, Member]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def add_dataset_info(built: Built, formats: list[str], dataset_name: str, media: str) -> None:
    if "llamafactory" in formats:
        info = llamafactory_dataset_info(dataset_name, built.samples, media=media)
        built.files[LLAMAFACTORY_INFO] = (json.dumps(info, indent=2) + "\n").encode()


class VersionBuilder:
    """Builds the files of one version into ``tmp`` (annotations) and the pool (images)."""

    def __init__(
        self,
        spec: TaskSpec,
        settings: Settings,
        pool: ImagePool,
        tmp: Path,
        *,
        db: Database,
        validation_run_id: int,
        stats: CardStats,
        fragments: bool = False,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.pool = pool
        self.db = db
        self.run_id = validation_run_id
        self.stats = stats
        self.formats = export_formats(settings)
        self.writers = {
            (f, sp): open_writer(tmp / file_name(f, sp), fragment=fragments) for f in self.formats for sp in SPLITS
        }
        self.provenance = JsonlWriter(tmp / PROVENANCE)
        self.checker = ExportChecker(spec)
        self.out = Built()
        self._pages: dict[int, dict[int, dict[str, Any]]] = {}

    def run(self, members: Iterable[tuple[Any, Member]], dataset_name: str | None) -> Built:
        """Build every member; ``dataset_name`` None (a shard) leaves out ``dataset_info.json``."""
        pending: _Pending | None = None
        try:
            for batch in _batches(members, BATCH):
                # start this batch's pool work, then finish the previous batch meanwhile
                jobs = [image_jobs(self.spec, row) for row, _ in batch]
                started = _Pending(batch, jobs, self.pool.submit(job for js in jobs for job, _ in js))
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
            self.out.entries[file_name(fmt, sp)] = w.count
        self.out.files[PROVENANCE] = self.provenance.path
        if dataset_name is not None:
            add_dataset_info(self.out, self.formats, dataset_name, self.spec.media)
        return self.out

    def _finish(self, pending: _Pending) -> None:
        done = self.pool.collect(pending.images)
        if self.spec.media == "document":
            self._pages = page_provenance(self.db, (row.prediction_id for row, _ in pending.rows))
        for (row, member), js in zip(pending.rows, pending.jobs, strict=True):
            self._record(row, member, js, done)

    def _images(self, row: Any, jobs: list[Job], done: dict[str, PooledImage]) -> list[tuple[str, int, int]] | None:
        """(ref, width, height) per image, or None after reporting why the images are unusable."""
        images: list[tuple[str, int, int]] = []
        problems: list[Problem] = []
        for page, (job, size) in enumerate(jobs):
            page_no = page if self.spec.media == "document" else None
            res = done.get(job.name) or PooledImage(job.name, error="image was not stored")
            if res.error or res.width is None or res.height is None:
                problems.append(Problem(row.id, page_no, "images", res.error or "image size unknown"))
                continue
            if size is not None and (res.width, res.height) != tuple(size):
                got, want = f"{res.width}x{res.height}", f"{size[0]}x{size[1]}"
                msg = f"{job.name} is {got}, the record's boxes refer to {want}"
                problems.append(Problem(row.id, page_no, "images", msg))
            w, h = size or (res.width, res.height)
            images.append((res.ref, w, h))
        self.out.add_problems(problems)
        return None if problems else images

    def _record(self, row: Any, member: Member, jobs: list[Job], done: dict[str, PooledImage]) -> None:
        # MemberStream(full=True) has checked the record's JSON against the validated hash
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
            self.out.add_problems([Problem(row.id, None, "samples", f"{type(e).__name__}: {e}")])
            return
        present = frozenset(ref for ref, _, _ in images)
        for sample in samples:
            self._write(sample, member.split, present)
        self.out.records[member.split] += 1
        self.out.samples[member.split] += len(samples)
        line: dict[str, Any] = {
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
        if self.spec.media == "document":
            routed = self._pages.get(row.prediction_id, {}) if row.prediction_id is not None else {}
            line["pages"] = record_pages(len(jobs), routed, row.provenance, row.annotator)
        self.provenance.write(line)
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
            pages=line.get("pages"),
        )

    def _write(self, sample: Sample, split: str, present: frozenset[str]) -> None:
        for fmt in self.formats:
            entry = ENTRY_BUILDERS[fmt](sample)
            self.out.add_problems(
                self.checker.check(
                    fmt,
                    entry,
                    record_id=sample.record_id,
                    page=sample.page,
                    images_present=present,
                    bounds=sample.frame.bounds,
                    original=sample.frame.original,
                )
            )
            self.writers[(fmt, split)].write(entry)
