"""Build a backend by name from the settings (what DAG params and the CLI pass around)."""

from __future__ import annotations

import importlib

from labelloop.config import Settings
from labelloop.prelabel.base import Backend
from labelloop.storage import ObjectStore

#: name -> "module:class"; each class is constructed as Class(settings, store)
BACKENDS: dict[str, str] = {
    "vllm": "labelloop.prelabel.vllm.backend:VLLMBackend",
    "rapidocr": "labelloop.prelabel.rapidocr_backend:RapidOCRBackend",
    "plate": "labelloop.prelabel.plate_backend:PlateBackend",
    "ensemble": "labelloop.prelabel.ensemble:EnsembleBackend",
    "pymupdf": "labelloop.prelabel.documents.cpu:PyMuPDFLayoutBackend",
    "mineru": "labelloop.prelabel.documents.mineru:MinerUBackend",
}

#: what "--backend cpu" means per media type: the offline backends
CPU_DEFAULTS = {"image": "rapidocr", "document": "pymupdf"}


def make_backend(name: str, settings: Settings, store: ObjectStore) -> Backend:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(sorted(BACKENDS))}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(settings, store)


def default_concurrency(name: str, settings: Settings) -> int:
    """Predictions in flight: vLLM takes ``vllm.concurrency`` requests at once, MinerU runs a few
    documents in parallel, the CPU backends are bound by this machine's cores."""
    return {"vllm": settings.vllm.concurrency, "mineru": 4}.get(name, 2)
