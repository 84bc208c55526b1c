"""Structural integrity checks: truncation and corruption found without decoding the pixels.

A full decode of a 12 MP JPEG costs ~100 ms of CPU, most of an ingest's budget for that file, and
it is done again anyway when the image is pre-labelled. What ingest must catch is the common
damage, a file cut short by an interrupted copy or upload, or bytes flipped on the way, and that
shows in the container's structure, which can be read at close to disk speed:

* JPEG: the marker segments up to the first start-of-scan are well formed, and an end-of-image
  marker (FFD9) follows the scan data (inside entropy-coded data FF is always stuffed, so FFD9
  cannot occur there by chance).
* PNG: every chunk fits in the file and its CRC-32 matches, IHDR comes first, there is IDAT data,
  and the stream ends with IEND.
* WebP: the RIFF size covers the file; GIF: the trailer byte is present.
* PDF: ``startxref`` and ``%%EOF`` in the last kilobyte (where the specification puts them), and
  the offset after ``startxref`` points at an xref table or an xref stream object.

Damage inside compressed pixel data with intact framing and checksums (rare: PNG's CRCs cover the
compressed bytes) passes here and fails at pre-label, as a permanent failure that names the decode
error (see docs/architecture.md). Set ``ingest.verify = "decode"`` to decode everything at ingest.

Each check raises :class:`StructureError` with a sentence saying what is wrong and where.
"""

from __future__ import annotations

import mmap
import re
import struct
import zlib
from pathlib import Path


class StructureError(ValueError):
    pass


def _map(path: Path) -> tuple[mmap.mmap | bytes, int]:
    size = path.stat().st_size
    if size == 0:
        return b"", 0
    with path.open("rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size


# JPEG markers without a length field (standalone): TEM, RSTn, SOI, EOI
_STANDALONE = {0x01, *range(0xD0, 0xD8), 0xD8, 0xD9}


def check_jpeg(path: Path) -> None:
    data, size = _map(path)
    try:
        if size < 4 or data[0:2] != b"\xff\xd8":
            raise StructureError("no JPEG start-of-image marker")
        pos = 2
        while True:
            # markers may be preceded by any number of FF fill bytes
            if pos >= size:
                raise StructureError(f"truncated in the header segments (at byte {pos:,} of {size:,})")
            if data[pos] != 0xFF:
                raise StructureError(f"corrupt header: expected a marker at byte {pos:,}, found 0x{data[pos]:02X}")
            while pos < size and data[pos] == 0xFF:
                pos += 1
            if pos >= size:
                raise StructureError("truncated in the header segments")
            marker = data[pos]
            pos += 1
            if marker == 0xD9:
                raise StructureError("end-of-image before any image data")
            if marker in _STANDALONE:
                continue
            if pos + 2 > size:
                raise StructureError("truncated in the header segments")
            (length,) = struct.unpack(">H", data[pos : pos + 2])
            if length < 2 or pos + length > size:
                raise StructureError(
                    f"segment 0x{marker:02X} at byte {pos - 2:,} claims {length:,} bytes, beyond the end of the file"
                )
            pos += length
            if marker == 0xDA:  # start of scan: entropy-coded data follows
                break
        if data.rfind(b"\xff\xd9", pos) < 0:
            raise StructureError(f"truncated: no end-of-image marker after the scan data ({size:,} bytes)")
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def check_png(path: Path) -> tuple[int, int, bytes | None]:
    """Returns (width, height) from IHDR and the eXIf chunk's payload, if any (wherever it is:
    Pillow only sees one before the image data without decoding the whole image)."""
    data, size = _map(path)
    exif: bytes | None = None
    width = height = 0
    try:
        if data[:8] != _PNG_SIG:
            raise StructureError("no PNG signature")
        pos, n, seen_idat = 8, 0, False
        view = memoryview(data)
        try:
            while True:
                if pos + 12 > size:
                    raise StructureError(f"truncated: file ends at byte {size:,} without an IEND chunk")
                length, kind = struct.unpack(">I4s", data[pos : pos + 8])
                end = pos + 12 + length
                name = kind.decode("latin-1")
                if not re.fullmatch(rb"[A-Za-z]{4}", kind):
                    raise StructureError(f"corrupt chunk type {kind!r} at byte {pos:,}")
                if end > size:
                    raise StructureError(
                        f"truncated: chunk {name} at byte {pos:,} needs {length:,} bytes, the file ends first"
                    )
                (crc,) = struct.unpack(">I", data[end - 4 : end])
                if zlib.crc32(view[pos + 4 : end - 4]) != crc:
                    raise StructureError(f"chunk {name} at byte {pos:,} fails its CRC check (corrupt data)")
                if n == 0:
                    if kind != b"IHDR" or length < 13:
                        raise StructureError("first chunk is not IHDR")
                    width, height = struct.unpack(">II", data[pos + 8 : pos + 16])
                seen_idat = seen_idat or kind == b"IDAT"
                if kind == b"eXIf" and exif is None:
                    exif = bytes(view[pos + 8 : end - 4])
                n += 1
                pos = end
                if kind == b"IEND":
                    break
            if not seen_idat:
                raise StructureError("no image data (IDAT) chunk")
        finally:
            view.release()
    finally:
        if isinstance(data, mmap.mmap):
            data.close()
    return width, height, exif


def check_webp(path: Path) -> None:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        raise StructureError("no RIFF/WEBP header")
    (riff,) = struct.unpack("<I", head[4:8])
    if riff + 8 > size:
        raise StructureError(f"truncated: the RIFF header says {riff + 8:,} bytes, the file has {size:,}")


def check_gif(path: Path) -> None:
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - 4096))
        tail = f.read().rstrip(b"\x00")
    if not tail.endswith(b";"):
        raise StructureError("truncated: no GIF trailer at the end")


_STARTXREF = re.compile(rb"startxref\s+(\d+)\s+%%EOF", re.S)
_XREF_AT = re.compile(rb"\s*(xref|\d+\s+\d+\s+obj)")


def check_pdf(path: Path) -> str | None:
    """Raises when the end of the file is missing; returns a warning (not fatal, PDF readers
    rebuild the table) when ``startxref`` points somewhere other than a cross-reference."""
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - 1024))
        tail = f.read().rstrip(b"\x00\r\n\t \x0c")
        found = list(_STARTXREF.finditer(tail))
        if not found:
            raise StructureError(f"truncated: no startxref / %%EOF in the last kilobyte ({size:,} bytes)")
        offset = int(found[-1].group(1))
        if offset >= size:
            return f"startxref points at byte {offset:,}, beyond the end of the file ({size:,} bytes)"
        f.seek(offset)
        if not _XREF_AT.match(f.read(64)):
            return f"startxref points at byte {offset:,}, which is not a cross-reference table"
    return None
