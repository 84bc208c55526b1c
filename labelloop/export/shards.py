"""A large version built on several processes: the members split into record-id ranges (shards),
each built by a worker process exactly as the single-process build does, the parts joined in order.

Why processes: the build is pure-Python work per record (samples, three entries, the checker,
JSON) plus a few syscalls per image, so threads only queue for the GIL; on N cores N shards take
about 1/N of the time. The joined files are byte for byte those of a single-process build (same
order, same encoder), so the content, the manifest and the version's identity do not depend on
how many processes built it (``tests/test_export_shards.py`` compares them).

Safety: the plan, made in this process, records a digest of each shard's members; a worker's
stream must arrive at the same digest and count, or the export fails as a changed-during-export
(nothing is published). A worker that raises names its shard; a worker that dies (killed, out of
memory) fails the export the same way: pool entries it already made are content-addressed and
indexed, so the rerun reuses them.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from labelloop.config import DatabaseSettings, Settings
from labelloop.db import Database
from labelloop.export.build import MAX_PROBLEMS, Built, VersionBuilder, add_dataset_info
from labelloop.export.card import CardStats
from labelloop.export.formats import SPLITS, file_name
from labelloop.export.images import ImagePool, PoolSummary
from labelloop.export.plan import ExportError, IdRange, MemberStream, Plan, export_formats
from labelloop.export.version import PROVENANCE
from labelloop.export.writers import concat_files, join_json_arrays
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore
from labelloop.validation import iter_passing

#: at most this many worker processes by default: beyond it, the curation DB's reads and the
#: pool's index writes, not the CPU, bound the build
MAX_AUTO_WORKERS = 4


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def build_workers(db: Database, store: ObjectStore, settings: Settings) -> int:
    """Processes the build may use: 1 where a worker could not reach the same DB or store
    (in-memory SQLite, a store object that cannot be re-created in another process)."""
    wanted = settings.export.workers or min(MAX_AUTO_WORKERS, available_cpus())
    if wanted <= 1:
        return 1
    if db.engine.dialect.name == "sqlite" and (db.engine.url.database or ":memory:") == ":memory:":
        return 1
    try:
        pickle.dumps(store)
    except Exception:
        return 1
    return wanted


@dataclass(frozen=True)
class ShardJob:
    index: int
    id_range: IdRange
    db: DatabaseSettings
    store: ObjectStore
    settings: Settings
    spec: TaskSpec
    validation_run_id: int
    version_prefix: str
    workdir: Path
    threads: int

    def describe(self) -> str:
        lo, hi = self.id_range
        return f"shard {self.index} (record ids {lo}..{'end' if hi is None else hi - 1})"


@dataclass
class ShardOutcome:
    index: int
    built: Built
    pool: PoolSummary
    stats: CardStats
    digest: str
    members: int


def build_shard(job: ShardJob) -> ShardOutcome:
    """Runs in a worker process: one shard's fragments, provenance and pool entries."""
    db = Database(job.db)
    try:
        job.workdir.mkdir(parents=True, exist_ok=True)
        stats = CardStats(job.spec)
        entries = job.workdir / "images.tsv"
        with ImagePool(
            job.store,
            db,
            job.spec.name,
            job.version_prefix,
            entries,
            layout=job.settings.export.image_layout,
            threads=job.threads,
        ) as pool:
            builder = VersionBuilder(
                job.spec,
                job.settings,
                pool,
                job.workdir,
                db=db,
                validation_run_id=job.validation_run_id,
                stats=stats,
                fragments=True,
            )
            passing = iter_passing(job.store, job.spec.name, job.validation_run_id)
            members = MemberStream(db, job.spec, job.settings, passing, id_range=job.id_range)
            built = builder.run(members, None)
            summary = pool.summary()
        return ShardOutcome(job.index, built, summary, stats, members.shard_digests[0], members.shard_members[0])
    except ExportError as e:
        raise ExportError(f"{job.describe()}: {e}") from None
    except Exception as e:  # re-raised by name: not every exception survives pickling back
        raise ExportError(f"{job.describe()}: {type(e).__name__}: {e}") from None
    finally:
        db.dispose()


def _file(built: Built, name: str) -> Path:
    path = built.files[name]
    assert isinstance(path, Path), name
    return path


def _ranges(cuts: list[int]) -> list[IdRange]:
    return [(lo, cuts[i + 1] if i + 1 < len(cuts) else None) for i, lo in enumerate(cuts)]


def build_sharded(
    db: Database,
    store: ObjectStore,
    settings: Settings,
    spec: TaskSpec,
    *,
    plan: Plan,
    cuts: list[int],
    validation_run_id: int,
    version_prefix: str,
    dataset_name: str,
    tmp: Path,
    workers: int,
    threads: int,
    stats: CardStats,
) -> tuple[Built, PoolSummary]:
    """Build the version's files on ``workers`` processes, one shard of ``cuts`` each."""
    jobs = [
        ShardJob(
            index=i,
            id_range=rng,
            db=db.settings,
            store=store,
            settings=settings,
            spec=spec,
            validation_run_id=validation_run_id,
            version_prefix=version_prefix,
            workdir=tmp / f"shard-{i:03d}",
            threads=threads,
        )
        for i, rng in enumerate(_ranges(cuts))
    ]
    # this process only waits while the workers build: meanwhile, import what the dataset card
    # draws with (matplotlib takes a second or two to import)
    warm = threading.Thread(target=_import_card_modules, name="labelloop-export-warm", daemon=True)
    warm.start()
    outcomes = run_workers(jobs, workers, spec.name)
    warm.join()
    for o in outcomes:
        if (o.digest, o.members) != (plan.shard_digests[o.index], plan.shard_members[o.index]):
            raise ExportError(
                f"the records of {spec.name} changed during the export ({jobs[o.index].describe()}); "
                "run the export again"
            )
    return _join(outcomes, settings, spec, tmp, dataset_name, stats)


def _import_card_modules() -> None:
    with contextlib.suppress(Exception):  # the card imports it again and reports a failure itself
        import matplotlib.figure  # noqa: F401


#: how often the parent looks at its workers
_POLL_S = 0.05


def run_workers(jobs: list[ShardJob], workers: int, spec: str) -> list[ShardOutcome]:
    """Each job in a fresh interpreter (``python -m labelloop.export.shard_worker JOB``), at most
    ``workers`` at once; the outcomes in job order.

    Plain child processes rather than ``multiprocessing``: its spawn start re-imports the caller's
    ``__main__`` (an unguarded script then fails in every worker), fork would copy this process's
    DB connections and threads, and neither may start from a daemonic process (Celery's prefork
    pool). A failing worker stops the others: the export fails, naming its shard.
    """
    pending = list(jobs)
    running: dict[int, tuple[subprocess.Popen[bytes], ShardJob]] = {}
    outcomes: dict[int, ShardOutcome] = {}
    try:
        while pending or running:
            while pending and len(running) < workers:
                job = pending.pop(0)
                job.workdir.mkdir(parents=True, exist_ok=True)
                (job.workdir / "job.pickle").write_bytes(pickle.dumps(job))
                with (job.workdir / "stderr.log").open("wb") as err:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "labelloop.export.shard_worker", str(job.workdir)],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                running[job.index] = (proc, job)
            for index, (proc, job) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[index]
                outcomes[index] = _outcome(proc.returncode, job, spec)
            if running:
                time.sleep(_POLL_S)
    finally:
        for proc, _job in running.values():
            proc.kill()
            proc.wait()
    return [outcomes[job.index] for job in jobs]


def _outcome(returncode: int, job: ShardJob, spec: str) -> ShardOutcome:
    result = job.workdir / "outcome.pickle"
    if returncode == 0 and result.is_file():
        out = pickle.loads(result.read_bytes())
        assert isinstance(out, ShardOutcome)
        return out
    error = job.workdir / "error.txt"
    if error.is_file():
        raise ExportError(error.read_text(encoding="utf-8"))
    how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}"
    tail = (job.workdir / "stderr.log").read_text(encoding="utf-8", errors="replace")[-2000:].strip()
    raise ExportError(
        f"the export worker of {spec} for {job.describe()} {how}; nothing was published: run the export again"
        + (f"\n{tail}" if tail else "")
    )


def worker_main(workdir: Path) -> int:
    """The worker process: run the job in ``workdir``, leave its outcome (or error) beside it."""
    job = pickle.loads((workdir / "job.pickle").read_bytes())
    # the modules and settings loaded so far live as long as the process: keep the cyclic GC
    # from walking them again on every collection (a tenth of a shard's time otherwise)
    gc.freeze()
    try:
        outcome = build_shard(job)
    except ExportError as e:
        (workdir / "error.txt").write_text(str(e), encoding="utf-8")
        return 1
    tmp = workdir / "outcome.pickle.tmp"
    tmp.write_bytes(pickle.dumps(outcome))
    tmp.replace(workdir / "outcome.pickle")
    return 0


def _join(
    outcomes: list[ShardOutcome], settings: Settings, spec: TaskSpec, tmp: Path, dataset_name: str, stats: CardStats
) -> tuple[Built, PoolSummary]:
    built = Built()
    for o in outcomes:
        built.problems += o.built.problems[: MAX_PROBLEMS - len(built.problems)]
        built.n_problems += o.built.n_problems
        for sp in SPLITS:
            built.records[sp] += o.built.records[sp]
            built.samples[sp] += o.built.samples[sp]
        stats.merge(o.stats)
    formats = export_formats(settings)
    for fmt in formats:
        for sp in SPLITS:
            name = file_name(fmt, sp)
            path = tmp / name
            if name.endswith(".jsonl"):
                concat_files(path, [_file(o.built, name) for o in outcomes])
            else:
                join_json_arrays(path, [(_file(o.built, name), o.built.entries[name]) for o in outcomes])
            built.files[name] = path
            built.entries[name] = sum(o.built.entries[name] for o in outcomes)
    built.files[PROVENANCE] = concat_files(tmp / PROVENANCE, [_file(o.built, PROVENANCE) for o in outcomes])
    add_dataset_info(built, formats, dataset_name, spec.media)
    pool = PoolSummary(
        concat_files(tmp / "images.tsv", [o.pool.entries_path for o in outcomes]),
        count=sum(o.pool.count for o in outcomes),
        created=sum(o.pool.created for o in outcomes),
        bytes_written=sum(o.pool.bytes_written for o in outcomes),
    )
    return built, pool
