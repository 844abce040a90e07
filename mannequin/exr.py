"""Read the uncompressed, scan-line, single-part OpenEXR files the renderer has Blender write.

The renderer's depth pass comes out of Blender only as a file (its Render Result has no readable
pixels from Python), and neither Pillow nor the bpy wheel reads EXR channels back, so this reads
the one layout it asks for: ``exr_codec = "NONE"``, interleaved (single-part) layers, float32 or
half channels. Anything else is a clear error, not a guess.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MAGIC = 20000630
_TILED, _MULTIPART, _DEEP = 0x200, 0x1000, 0x800
_PIXEL_TYPES = {1: np.dtype("<f2"), 2: np.dtype("<f4"), 0: np.dtype("<u4")}


def _attributes(data: bytes) -> tuple[dict[str, tuple[str, bytes]], int]:
    """The header's attributes (name -> (type, raw bytes)) and the offset just after the header."""
    pos, attributes = 8, {}
    while data[pos] != 0:
        fields = []
        for _ in range(2):   # the attribute's name, then its type name
            end = data.index(b"\0", pos)
            fields.append(data[pos:end].decode())
            pos = end + 1
        (size,) = struct.unpack_from("<i", data, pos)
        attributes[fields[0]] = (fields[1], data[pos + 4:pos + 4 + size])
        pos += 4 + size
    return attributes, pos + 1


def _channels(raw: bytes) -> list[tuple[str, np.dtype]]:
    channels, pos = [], 0
    while raw[pos] != 0:
        end = raw.index(b"\0", pos)
        name = raw[pos:end].decode()
        (pixel_type,) = struct.unpack_from("<i", raw, end + 1)
        x_sampling, y_sampling = struct.unpack_from("<ii", raw, end + 9)
        if (x_sampling, y_sampling) != (1, 1) or pixel_type not in _PIXEL_TYPES:
            raise ValueError(f"EXR channel {name!r} is subsampled or of an unknown type")
        channels.append((name, _PIXEL_TYPES[pixel_type]))
        pos = end + 17
    return sorted(channels)   # the file stores them in name order


def read_exr(path: Path | str) -> dict[str, np.ndarray]:
    """Every channel of an EXR file, by its full name (e.g. ``"ViewLayer.Depth.Z"``): (H, W) arrays."""
    data = Path(path).read_bytes()
    if len(data) < 8 or struct.unpack_from("<i", data, 0)[0] != MAGIC:
        raise ValueError(f"{path} is not an OpenEXR file")
    (version,) = struct.unpack_from("<i", data, 4)
    if version & (_TILED | _MULTIPART | _DEEP):
        raise ValueError(f"{path}: only single-part scan-line EXR files are read (write them interleaved)")
    attributes, pos = _attributes(data)
    if attributes["compression"][1] != b"\0":
        raise ValueError(f"{path} is compressed; write it with exr_codec 'NONE'")
    channels = _channels(attributes["channels"][1])
    x0, y0, x1, y1 = struct.unpack("<iiii", attributes["dataWindow"][1])
    width, height = x1 - x0 + 1, y1 - y0 + 1
    pos += 8 * height                  # the line offset table: uncompressed lines follow in order
    out = {name: np.empty((height, width), dtype) for name, dtype in channels}
    for _ in range(height):
        y, size = struct.unpack_from("<ii", data, pos)
        pos += 8
        offset = pos
        for name, dtype in channels:
            out[name][y - y0] = np.frombuffer(data, dtype, count=width, offset=offset)
            offset += width * dtype.itemsize
        pos += size
    return out
