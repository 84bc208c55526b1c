"""Split the pending work of a (spec, backend) into batches, for Airflow's dynamic task mapping.

A batch is a list of item ids; each mapped task pre-labels one batch. Batches are planned from the
database (items without this backend's prediction), so a rerun after a crash plans only what is
still missing, and a nightly run's work grows with what changed, not with the corpus.
"""

from __future__ import annotations

from labelloop.config import PrelabelSettings, Settings
from labelloop.db import Database
from labelloop.prelabel.base import Backend
from labelloop.prelabel.factory import CPU_DEFAULTS, make_backend
from labelloop.prelabel.runner import iter_pending_items
from labelloop.specs import TaskSpec
from labelloop.storage import ObjectStore

IMAGE_BACKENDS = ("vllm", "rapidocr")
DOCUMENT_BACKENDS = ("pymupdf", "mineru")
VIDEO_BACKENDS = ("vllm",)
_ALLOWED = {"image": IMAGE_BACKENDS, "document": DOCUMENT_BACKENDS, "video": VIDEO_BACKENDS}


def resolve_backend_name(spec: TaskSpec, backend: str) -> str:
    """'cpu' means the offline backend for the spec's media; others must suit the media."""
    if backend == "cpu" and spec.media not in CPU_DEFAULTS:
        raise ValueError(f"there is no offline CPU backend for {spec.media} (spec {spec.name} needs one of: vllm)")
    name = CPU_DEFAULTS[spec.media] if backend == "cpu" else backend
    allowed = _ALLOWED[spec.media]
    if name not in allowed:
        article = "an" if spec.media == "image" else "a"
        raise ValueError(
            f"backend {backend!r} is not {article} {spec.media} backend (spec {spec.name} needs one of: cpu, "
            + ", ".join(allowed)
            + ")"
        )
    return name


def plan_batches(
    db: Database,
    spec: TaskSpec,
    backend: Backend,
    batch_size: int,
    limit: int | None = None,
    policy: PrelabelSettings | None = None,
) -> list[list[int]]:
    """Batches of the items still to predict: missing, or failed and due for a retry."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    batches: list[list[int]] = []
    current: list[int] = []
    for item in iter_pending_items(db, spec, backend, limit=limit, policy=policy):
        current.append(item.id)
        if len(current) >= batch_size:
            batches.append(current)
            current = []
    if current:
        batches.append(current)
    return batches


def plan_for(
    settings: Settings,
    db: Database,
    store: ObjectStore,
    spec: TaskSpec,
    backend: str,
    batch_size: int,
    limit: int | None = None,
) -> tuple[str, list[list[int]]]:
    """(resolved backend name, batches of item ids still lacking its prediction)."""
    import asyncio

    name = resolve_backend_name(spec, backend)
    be = make_backend(name, settings, store)
    try:
        return name, plan_batches(db, spec, be, batch_size, limit, settings.prelabel)
    finally:
        asyncio.run(be.aclose())
