"""Keep the CPU document backend's memory flat across pages (glibc only; a no-op elsewhere).

RapidOCR's detector allocates a few hundred MB of activations per page image and frees them, but
glibc's allocator raises its mmap threshold after large frees (up to 32 MB), so the next page's
buffers come from the heap, which fragments and is never handed back: a 1 GB peak after a few
scanned pages. Fixing the threshold at 4 MB keeps such buffers in their own mappings (returned to
the OS on free), and ``malloc_trim`` after each page returns what the heap can spare. Measured on
the shared PDFs by ``bench/documents.py --memory``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 << 20

_lock = threading.Lock()
_libc: ctypes.CDLL | None = None
_configured = False


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name or "libc.so.6")
            lib.malloc_trim  # noqa: B018 - glibc only
            lib.mallopt  # noqa: B018
        except (OSError, AttributeError):
            return None
        _libc = lib
    return _libc


def limit_heap_retention() -> bool:
    """Fix glibc's mmap threshold (once per process); False where that is not glibc."""
    global _configured
    with _lock:
        if _configured:
            return True
        libc = _glibc()
        if libc is None:
            return False
        _configured = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
        return _configured


def release_memory() -> None:
    """Hand freed heap memory back to the OS (after each page)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
