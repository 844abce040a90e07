"""A take's poses as the engine reads them: the ``.pose.json`` file (docs/pose-format.md).

Pure Python, standard library only. The engine's own reader and writer
(``flash_engine.pose.format``) need numpy, which the add-on does not load from the engine, so
this module writes the same version-1 text: a header line, then one frame per line; x and y
are fractions of the image (x right, y down), then a confidence. A plain-pytest test reads
what it writes with the engine's reader, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path

from .errors import PlanError

FORMAT = "flash-pose"
VERSION = 1
BODY_POINTS = "openpose-18"
POINT_COUNT = 18
COORDINATE_RANGE = (-1.0, 2.0)  # what the engine accepts; a point beyond it is written as missing
COORDINATE_DECIMALS = 5
CONFIDENCE_DECIMALS = 3
MISSING = (0.0, 0.0, 0.0)


def _point(x: float, y: float, confidence: float) -> list:
    low, high = COORDINATE_RANGE
    if not all(math.isfinite(v) for v in (x, y, confidence)) or not (low <= x <= high and low <= y <= high):
        x, y, confidence = MISSING
    return [round(float(x), COORDINATE_DECIMALS), round(float(y), COORDINATE_DECIMALS),
            round(min(1.0, max(0.0, float(confidence))), CONFIDENCE_DECIMALS)]


def pose_text(frames: list, width: int, height: int, fps: float | None) -> str:
    """``frames``: per frame, 18 (x, y, confidence) in OpenPose's order."""
    if not frames:
        raise ValueError("a pose file needs at least one frame")
    header = {"format": FORMAT, "version": VERSION, "width": int(width), "height": int(height),
              "fps": None if fps is None else float(fps), "points": BODY_POINTS}
    lines = []
    for index, points in enumerate(frames):
        if len(points) != POINT_COUNT:
            raise ValueError(f"frame {index} has {len(points)} points, not {POINT_COUNT}")
        lines.append(json.dumps({"body": [_point(*p) for p in points]}, separators=(",", ":"), allow_nan=False))
    head = json.dumps(header, allow_nan=False)[:-1]
    return head + ', "frames": [\n' + ",\n".join(lines) + "\n]}\n"


def write_pose(path: Path, text: str) -> Path:
    """Write a new pose file; an existing one is never replaced (PlanError)."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        staging.write_text(text, encoding="utf-8")
        try:
            os.link(staging, path)  # never replaces a file that appeared meanwhile
        except FileExistsError:
            raise PlanError(f"{path.name} already exists", "run again: the take gets the next number") from None
        except OSError:  # no hard links on this file system: create it exclusively instead
            try:
                with path.open("x", encoding="utf-8") as handle:
                    handle.write(text)
            except FileExistsError:
                raise PlanError(f"{path.name} already exists", "run again: the take gets the next number") from None
    except OSError as err:
        raise PlanError(f"cannot write the poses to {path}: {err.strerror or err}",
                        "check that the output folder is writable") from None
    finally:
        staging.unlink(missing_ok=True)
    return path
