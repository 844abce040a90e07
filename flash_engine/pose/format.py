"""A pose sequence and its file, ``.pose.json`` (docs/pose-format.md): numpy and the standard library only.

Keypoints are normalised to the image the poses were made for: x from 0 (left edge) to 1
(right edge), y from 0 (top) to 1 (bottom), and a confidence from 0 (missing) to 1. Body
points are OpenPose's 18, in its order; hands (21 points each, the person's right then left)
and face points are optional.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from flash_engine.errors import FlashError
from flash_engine.layout import staging_prefix
from flash_engine.requests import DEFAULT_SIZE_MULTIPLE, MAX_FRAMES, round_side

FORMAT = "flash-pose"
VERSION = 1
BODY_POINTS = "openpose-18"
# OpenPose's body order ("right" is the person's right).
BODY_POINT_NAMES = ("nose", "neck", "right shoulder", "right elbow", "right wrist", "left shoulder",
                    "left elbow", "left wrist", "right hip", "right knee", "right ankle", "left hip",
                    "left knee", "left ankle", "right eye", "left eye", "right ear", "left ear")
NECK, RIGHT_SHOULDER, LEFT_SHOULDER, RIGHT_HIP, LEFT_HIP = 1, 2, 5, 8, 11
HAND_SIDES = ("right", "left")
HAND_POINT_COUNT = 21  # OpenPose's and MediaPipe's hand order (wrist, then 4 per finger, thumb first)
# The face points the driving path keeps: MediaPipe Pose's landmarks 0-10 in its order (nose,
# eyes inner/centre/outer left then right, ears, mouth corners).
MEDIAPIPE_FACE_POINTS = "mediapipe-pose-face-11"

# Below this confidence a point counts as missing: it is not drawn, nor used to align poses.
MIN_CONFIDENCE = 0.3
# x and y may leave the image (a hand out of frame) but by less than one image: beyond that the
# numbers are pixels or another unit, not fractions of the image.
COORDINATE_RANGE = (-1.0, 2.0)
MAX_IMAGE_SIDE = 65536
MAX_FPS = 1000.0
MAX_FILE_BYTES = 256 * 1024 * 1024
# Decimals written: 1e-5 of the image is under 0.05 px at 4096 px.
COORDINATE_DECIMALS = 5
CONFIDENCE_DECIMALS = 3

FORMAT_HINT = "see docs/pose-format.md"


def _bad(message: str, hint: str = FORMAT_HINT) -> FlashError:
    return FlashError(message, hint, code="bad_pose")


def _check_points(points: np.ndarray, where: str, name_of) -> None:
    """A one-line FlashError for the first point of (F, P, 3) ``points`` that is not finite,
    lies too far off the image, or has a confidence outside 0..1. ``name_of(p)`` names point p."""
    low, high = COORDINATE_RANGE
    checks = (
        (~np.isfinite(points).all(axis=-1), "is not a finite number (NaN, infinity or null)",
         "every x, y and confidence must be a number; write [0, 0, 0] for a missing point"),
        (((points[..., :2] < low) | (points[..., :2] > high)).any(axis=-1), "lies outside the image",
         "x and y are fractions of the image (0..1, x right, y down), off-image points less than one image "
         "beyond it: divide pixel coordinates by the width and height"),
        ((points[..., 2] < 0) | (points[..., 2] > 1), "has a confidence outside 0..1",
         "confidence runs from 0 (missing) to 1"),
    )
    for bad, what, hint in checks:
        found = np.argwhere(bad)
        if len(found):
            frame, point = (int(i) for i in found[0])
            values = ", ".join(f"{v:g}" for v in points[frame, point])
            raise _bad(f"{where}frame {frame} {name_of(point)} [{values}] {what}", hint)


def _body_name(point: int) -> str:
    return f"point {point} ({BODY_POINT_NAMES[point]})"


@dataclass(frozen=True, kw_only=True, eq=False)
class PoseSequence:
    """Poses for ``frames`` frames of a ``width`` x ``height`` image (see the module's docstring).

    body: float32 (F, 18, 3); hands: (F, 2, 21, 3) or None; face: (F, K, 3) or None, its
    order named by ``face_points``; fps: the rate the poses were taken at, or None. Checked
    on construction as a file is when read (a one-line FlashError names the first bad value)."""

    body: np.ndarray
    width: int
    height: int
    fps: float | None = None
    hands: np.ndarray | None = None
    face: np.ndarray | None = None
    face_points: str | None = None
    source: str | None = field(default=None, compare=False)  # the file, for messages

    def __post_init__(self) -> None:
        where = f"{self.source}: " if self.source else ""
        arrays = {"body": (len(BODY_POINT_NAMES), 3), "hands": (2, HAND_POINT_COUNT, 3), "face": (None, 3)}
        for name, tail in arrays.items():
            value = getattr(self, name)
            if value is None:
                continue
            value = np.ascontiguousarray(value, dtype=np.float32)
            if value.ndim != len(tail) + 1 or any(want is not None and got != want
                                                  for got, want in zip(value.shape[1:], tail)):
                shape = ", ".join("F" if i == 0 else "K" if n is None else str(n) for i, n in enumerate((0, *tail)))
                raise ValueError(f"PoseSequence.{name} must have the shape ({shape}), got {value.shape}")
            object.__setattr__(self, name, value)
        frames = len(self.body)
        if frames == 0:
            raise _bad(f"{where}the poses have no frames", "give at least one frame")
        for name in ("hands", "face"):
            value = getattr(self, name)
            if value is not None and len(value) != frames:
                raise ValueError(f"PoseSequence.{name} has {len(value)} frames, the body {frames}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_IMAGE_SIDE:
                raise _bad(f"{where}'{name}' must be a whole number of pixels from 1 to {MAX_IMAGE_SIDE} "
                           f"(got {value!r:.40})", "give the size of the image the poses were made for")
            object.__setattr__(self, name, int(value))
        if self.fps is not None:
            fps = self.fps
            if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) \
                    or not 0 < fps <= MAX_FPS:
                raise _bad(f"{where}'fps' must be a number above 0 and at most {MAX_FPS:g}, or null (got {fps!r:.40})",
                           "give the rate the poses were taken at, or null")
            object.__setattr__(self, "fps", float(fps))
        _check_points(self.body, where, _body_name)
        if self.hands is not None:
            _check_points(self.hands.reshape(frames, 2 * HAND_POINT_COUNT, 3), where,
                          lambda p: f"{HAND_SIDES[p // HAND_POINT_COUNT]} hand point {p % HAND_POINT_COUNT}")
        if self.face is not None:
            _check_points(self.face, where, lambda p: f"face point {p}")

    @classmethod
    def from_pixels(cls, body: np.ndarray, width: int, height: int, *, hands: np.ndarray | None = None,
                    face: np.ndarray | None = None, **options) -> "PoseSequence":
        """From [x, y, confidence] in pixels of a ``width`` x ``height`` image (a rig projected
        through its camera, a detector's output)."""
        scale = np.array([width, height, 1.0])
        divide = (lambda points: None if points is None else np.asarray(points, dtype=np.float64) / scale)
        return cls(body=divide(body), width=width, height=height, hands=divide(hands), face=divide(face), **options)

    @property
    def frames(self) -> int:
        return len(self.body)

    def __len__(self) -> int:
        return len(self.body)

    def replace(self, **changes) -> "PoseSequence":
        return replace(self, **changes)

    def location(self) -> np.ndarray:
        """The body's location per frame, DirectAnimator's location cue: float32 (F, 3) [x, y,
        confidence] of the hip centre (the mid-point of the hips), the neck where a hip is missing."""
        body = self.body
        hips = body[:, [RIGHT_HIP, LEFT_HIP]]
        both = (hips[..., 2] >= MIN_CONFIDENCE).all(axis=1)
        centre = hips.mean(axis=1)
        centre[:, 2] = hips[..., 2].min(axis=1)
        return np.where(both[:, None], centre, body[:, NECK]).astype(np.float32)

    def check_for(self, frames: int, width: int, height: int, size_step: int = DEFAULT_SIZE_MULTIPLE) -> None:
        """A one-line FlashError unless these poses fit a take of ``frames`` frames at
        ``width`` x ``height``: the same frame count, and the same aspect ratio (the size may
        differ: coordinates are fractions of the image). The take's short side was rounded to a
        multiple of ``size_step`` (the model's), so it may be up to half a step off the aspect."""
        what = f"the poses in {self.source}" if self.source else "the poses"
        if self.frames != frames:
            fixes = [f"animate {self.frames} frames (--frames {self.frames})"] if 2 <= self.frames <= MAX_FRAMES else []
            fixes.append(f"give poses for {frames} frames")
            raise _bad(f"{what} have {self.frames} frames but the take has {frames}", " or ".join(fixes))
        slack = size_step / 2 + 1e-6
        if not (abs(width * self.height / self.width - height) <= slack
                or abs(height * self.width / self.height - width) <= slack):
            suggested = round_side(width * self.height / self.width, size_step)
            raise _bad(f"{what} were made for a {self.width}x{self.height} image (aspect {self.width / self.height:.3f}) "
                       f"but the take is {width}x{height} ({width / height:.3f})",
                       f"make the take at the poses' aspect, e.g. --width {width} --height {suggested}, "
                       "or make the poses for this shot")


# ---------------------------------------------------------------------------------------
# The file


def _points(value, count: int | None, where: str, what: str) -> np.ndarray:
    """A JSON list of [x, y, confidence] → float64 (P, 3), or a one-line error."""
    hint = f"each point is [x, y, confidence]; {FORMAT_HINT}"
    if not isinstance(value, list):
        raise _bad(f"{where}{what} must be a list of [x, y, confidence] points", hint)
    if count is not None and len(value) != count:
        raise _bad(f"{where}{what} has {len(value)} points; it needs {count}",
                   f"list all {count} in order, [0, 0, 0] for a missing one ({FORMAT_HINT})")
    for index, point in enumerate(value):
        if not isinstance(point, list) or len(point) != 3 or not all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in point):
            raise _bad(f"{where}{what} point {index} is not [x, y, confidence] ({json.dumps(point)[:40]})", hint)
    return np.array([[np.nan if v is None else v for v in point] for point in value], dtype=np.float64).reshape(-1, 3)


def read_pose_file(path: str | Path) -> PoseSequence:
    """A ``.pose.json`` file → PoseSequence; every problem is a one-line FlashError naming the fix."""
    path = Path(path)
    if not path.exists():
        raise _bad(f"pose file not found: {path}", "check the path")
    if not path.is_file():
        raise _bad(f"not a pose file: {path} is a folder", "pass a .pose.json file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise _bad(f"{path} is larger than {MAX_FILE_BYTES >> 20} MB: not a pose file", "pass a .pose.json file")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        detail = f" (line {err.lineno}: {err.msg})" if isinstance(err, json.JSONDecodeError) else ""
        raise _bad(f"{path} is not JSON{detail}", f"a .pose.json file is JSON text; {FORMAT_HINT}") from None
    except OSError as err:
        raise _bad(f"cannot read {path}: {err.strerror or err}", "check the file's permissions") from None
    where = f"{path}: "
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise _bad(f"{path} is not a FLASH pose file (its \"format\" is {json.dumps(found)[:40]}, not \"{FORMAT}\")",
                   f"write it as {FORMAT_HINT} describes")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _bad(f"{where}\"version\" must be a whole number (this engine reads {VERSION}), got "
                   f"{json.dumps(version)[:40]}", f"write \"version\": {VERSION}")
    if version > VERSION:
        raise _bad(f"{where}pose file version {version} is newer than this engine reads ({VERSION})",
                   "update the FLASH engine, or write the file as version 1")
    if data.get("points", BODY_POINTS) != BODY_POINTS:
        raise _bad(f"{where}body points {json.dumps(data.get('points'))[:40]} are not read; only \"{BODY_POINTS}\"",
                   f"convert the keypoints to OpenPose's 18-point order ({FORMAT_HINT})")
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise _bad(f"{where}the file has no frames", "give \"frames\": a list with one entry per frame")
    bodies, hands, faces = [], [], []
    for index, frame in enumerate(frames):
        at = f"{where}frame {index} "
        if not isinstance(frame, dict):
            raise _bad(f"{at}is not an object with a \"body\"", FORMAT_HINT)
        bodies.append(_points(frame.get("body"), len(BODY_POINT_NAMES), at, "body"))
        frame_hands = frame.get("hands")
        if frame_hands is not None:
            if not isinstance(frame_hands, list) or len(frame_hands) != 2:
                raise _bad(f"{at}\"hands\" must be [right hand, left hand] (each 21 points, or null)", FORMAT_HINT)
            frame_hands = [np.zeros((HAND_POINT_COUNT, 3)) if hand is None else
                           _points(hand, HAND_POINT_COUNT, at, f"{side} hand")
                           for side, hand in zip(HAND_SIDES, frame_hands)]
        hands.append(frame_hands)
        frame_face = frame.get("face")
        faces.append(None if frame_face is None else _points(frame_face, None, at, "face"))
    counts = {len(face) for face in faces if face is not None}
    if len(counts) > 1:
        raise _bad(f"{where}the frames have different numbers of face points ({', '.join(map(str, sorted(counts)))})",
                   "give every frame the same face points, or none")
    hands_array = None
    if any(h is not None for h in hands):
        hands_array = np.stack([np.zeros((2, HAND_POINT_COUNT, 3)) if h is None else np.stack(h) for h in hands])
    face_array = None
    if counts:
        count = counts.pop()
        face_array = np.stack([np.zeros((count, 3)) if f is None else f for f in faces])
    face_points = data.get("face_points")
    if face_points is not None and not isinstance(face_points, str):
        raise _bad(f"{where}\"face_points\" must be a string naming the face points' order, or absent", FORMAT_HINT)
    return PoseSequence(body=np.stack(bodies), width=data.get("width"), height=data.get("height"),
                        fps=data.get("fps"), hands=hands_array, face=face_array, face_points=face_points,
                        source=str(path))


def _rounded(points: np.ndarray) -> list:
    return [[round(float(x), COORDINATE_DECIMALS), round(float(y), COORDINATE_DECIMALS),
             round(float(c), CONFIDENCE_DECIMALS)] for x, y, c in points]


def pose_file_text(seq: PoseSequence) -> str:
    """The ``.pose.json`` text of ``seq``: a header, then one frame per line (diffable, editable)."""
    header = {"format": FORMAT, "version": VERSION, "width": seq.width, "height": seq.height, "fps": seq.fps,
              "points": BODY_POINTS}
    if seq.face is not None and seq.face_points:
        header["face_points"] = seq.face_points
    lines = []
    for index in range(seq.frames):
        frame = {"body": _rounded(seq.body[index])}
        if seq.hands is not None:
            frame["hands"] = [_rounded(hand) for hand in seq.hands[index]]
        if seq.face is not None:
            frame["face"] = _rounded(seq.face[index])
        lines.append(json.dumps(frame, separators=(",", ":"), allow_nan=False))
    head = json.dumps(header, allow_nan=False)[:-1]
    return head + ', "frames": [\n' + ",\n".join(lines) + "\n]}\n"


def write_pose_file(seq: PoseSequence, path: str | Path) -> Path:
    """Write ``seq`` to a new ``.pose.json`` at ``path``. An existing file is never replaced (a
    one-line FlashError); the file appears whole or not at all."""
    path = Path(path)
    exists = FlashError(f"{path} already exists; it was left as it is", "choose another name",
                        code="output_exists")
    if path.exists() or path.is_symlink():
        raise exists
    text = pose_file_text(seq)
    staging = path.parent / f"{staging_prefix(path.name)}{secrets.token_hex(4)}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging.write_text(text, encoding="utf-8")
        try:
            os.link(staging, path)  # fails if the name was taken meanwhile: never replaces
        except FileExistsError:
            raise exists from None
        except OSError:  # a file system without hard links: create it exclusively instead
            try:
                with path.open("x", encoding="utf-8") as handle:
                    handle.write(text)
            except FileExistsError:
                raise exists from None
    except OSError as err:
        raise FlashError(f"cannot write {path}: {err.strerror or err}", "choose a folder you can write to",
                         code="output_error") from None
    finally:
        staging.unlink(missing_ok=True)
    return path
