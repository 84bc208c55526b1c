"""Pixel sizes read straight from image headers, without Pillow.

Pillow's ``open`` builds an image object and runs its plugin machinery, several times the cost of
reading the header itself; where a size is wanted once per image of a large batch (every pool
entry of a 100k-image export, every rendered page checked against its geometry) the fixed PNG
layout is read directly.
"""

from __future__ import annotations

import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG header; raises ValueError for anything else."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    w, h = struct.unpack(">II", data[16:24])
    return w, h
