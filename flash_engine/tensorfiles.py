"""Tensor files (safetensors): written with the user's usual permissions, checked without loading.

``save_file`` creates its files 0600 whatever the umask; ``save_tensors`` gives them the mode
any other file the engine writes gets. ``safetensors_problem`` reads only a file's header
(8-byte length, JSON, every tensor's byte range inside the file) so a truncated, pickled or
garbage file is refused when it is named, not when a model is already loaded.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

HEADER_LENGTH_BYTES = 8
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit
METADATA_KEY = "__metadata__"
# bytes per element; sub-byte dtypes (F4, F6_*) are checked for their range only
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it, racing other threads)."""
    try:
        status = Path("/proc/self/status").read_text()
        found = re.search(r"^Umask:\s*([0-7]+)$", status, re.MULTILINE)
        if found:
            return int(found.group(1), 8)
    except OSError:
        pass
    umask = os.umask(0o022)  # no /proc (macOS, Windows): the classic read-and-restore
    os.umask(umask)
    return umask


def file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask."""
    return 0o666 & ~current_umask()


def save_tensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file``, then the permissions a plain new file would have."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    os.chmod(path, file_mode())
    return Path(path)


def tensor_ranges(path: Path) -> dict[str, tuple[str, list[int], int, int]]:
    """Each tensor's dtype, shape and byte range (offsets in the file) from the header alone,
    for a file ``safetensors_problem`` has passed."""
    with open(path, "rb") as handle:
        header_bytes = int.from_bytes(handle.read(HEADER_LENGTH_BYTES), "little")
        header = json.loads(handle.read(header_bytes).decode("utf-8"))
    start = HEADER_LENGTH_BYTES + header_bytes
    return {name: (entry["dtype"], entry["shape"], start + entry["data_offsets"][0], start + entry["data_offsets"][1])
            for name, entry in header.items() if name != METADATA_KEY}


def safetensors_problem(path: Path) -> str | None:
    """What makes ``path`` not a whole safetensors file, as a short phrase; None when it is one."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            prefix = handle.read(HEADER_LENGTH_BYTES)
            if len(prefix) < HEADER_LENGTH_BYTES:
                return f"{size} bytes, too short for a safetensors header"
            header_bytes = int.from_bytes(prefix, "little")
            if header_bytes > min(MAX_HEADER_BYTES, size - HEADER_LENGTH_BYTES):
                return "no safetensors header (truncated, or another format such as a pickle)"
            raw = handle.read(header_bytes)
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "its safetensors header is not JSON"
    if not isinstance(header, dict):
        return "its safetensors header is not a table of tensors"
    buffer_bytes = size - HEADER_LENGTH_BYTES - header_bytes
    end_of_data = 0
    for name, entry in header.items():
        if name == METADATA_KEY:
            continue
        if not isinstance(entry, dict):
            return f"tensor {name!r} has no description"
        offsets, shape = entry.get("data_offsets"), entry.get("shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
                and isinstance(entry.get("dtype"), str)):
            return f"tensor {name!r} has a malformed description"
        begin, end = offsets
        if not 0 <= begin <= end <= buffer_bytes:
            return f"tensor {name!r} lies beyond the end of the file (truncated)"
        itemsize = DTYPE_BYTES.get(entry["dtype"])
        if itemsize is not None and end - begin != math.prod(shape) * itemsize:
            return f"tensor {name!r} has {end - begin} bytes for shape {shape}"
        end_of_data = max(end_of_data, end)
    if end_of_data != buffer_bytes:
        return f"{buffer_bytes - end_of_data} bytes after the last tensor"
    return None
