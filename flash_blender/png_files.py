"""PNG files from numpy arrays: 8-bit RGB pictures and 16-bit greyscale depth.

numpy and the standard library only (zlib), so the same code writes pose maps and depth
inside Blender and in plain pytest, without Blender's image API or PIL. A file is created
new: an existing one is never replaced.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
GREY, RGB = 0, 2  # PNG colour types
COMPRESSION = 6


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(pixels: np.ndarray) -> bytes:
    """``pixels``: uint8 (H, W, 3) RGB, uint8 (H, W) grey or uint16 (H, W) grey; row 0 is the top."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3:
        colour, depth, rows = RGB, 8, pixels
    elif pixels.dtype == np.uint8 and pixels.ndim == 2:
        colour, depth, rows = GREY, 8, pixels
    elif pixels.dtype == np.uint16 and pixels.ndim == 2:
        colour, depth, rows = GREY, 16, pixels.astype(">u2")  # PNG stores 16-bit samples big-endian
    else:
        raise ValueError(f"cannot write {pixels.dtype} pixels of shape {pixels.shape} as PNG")
    height, width = pixels.shape[:2]
    if not (height and width):
        raise ValueError("a PNG needs at least one pixel")
    raw = np.ascontiguousarray(rows).reshape(height, -1).view(np.uint8)
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), raw], axis=1)  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), COMPRESSION))
            + _chunk(b"IEND", b""))


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """Write ``pixels`` to a new PNG at ``path`` (FileExistsError if it exists)."""
    path = Path(path)
    data = png_bytes(pixels)
    with open(path, "xb") as handle:
        handle.write(data)
    return path
