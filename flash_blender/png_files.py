"""PNG files from raw pixels: 8-bit RGB pictures and 16-bit greyscale depth.

Standard library only (zlib), so the same code writes pose maps and depth inside Blender and
in plain pytest, without Blender's image API. Pixels are row-major with row 0 at the top: RGB
as ``bytes``/``bytearray`` of ``width × height × 3``, depth as ``array('H')`` of ``width ×
height``. A file is created new: an existing one is never replaced.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from pathlib import Path

SIGNATURE = b"\x89PNG\r\n\x1a\n"
GREY, RGB = 0, 2  # PNG colour types
COMPRESSION = 6


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, raw: bytes, colour: int, bits: int, row_bytes: int) -> bytes:
    if width < 1 or height < 1:
        raise ValueError("a PNG needs at least one pixel")
    if len(raw) != row_bytes * height:
        raise ValueError(f"{len(raw)} bytes of pixels for a {width}x{height} picture")
    lines = bytearray()
    for y in range(height):
        lines.append(0)  # filter type 0: the row as it is
        lines += raw[y * row_bytes:(y + 1) * row_bytes]
    header = struct.pack(">IIBBBBB", width, height, bits, colour, 0, 0, 0)
    return (SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(bytes(lines), COMPRESSION))
            + _chunk(b"IEND", b""))


def rgb_png(width: int, height: int, pixels) -> bytes:
    return _png(width, height, bytes(pixels), RGB, 8, width * 3)


def grey16_png(width: int, height: int, values: array) -> bytes:
    samples = array("H", values)
    if sys.byteorder == "little":
        samples.byteswap()  # PNG stores 16-bit samples big-endian
    return _png(width, height, samples.tobytes(), GREY, 16, width * 2)


def write_new(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new file at ``path`` (FileExistsError if it exists)."""
    path = Path(path)
    with open(path, "xb") as handle:
        handle.write(data)
    return path
