"""A driving clip → a pose sequence for the reference's person (docs/pose-format.md).

MediaPipe Pose (``mediapipe==0.10.21``, whose wheel ships its models: nothing downloads;
``model_complexity=1``) finds 33 landmarks per frame, tracking the person from frame to frame.
They are mapped to OpenPose's 18 points (the neck is the mid-point of the shoulders; the
confidence is MediaPipe's visibility), frames without a person are interpolated from their
neighbours (held at the clip's ends), the points are smoothed over time, and the whole
sequence is **retargeted**: scaled and moved so that the driving pose of frame 0 lands on the
reference's person, whose torso fixes the scale (neck to hip centre) and the position (the
torso's centre). A driver twice the reference's size, or standing elsewhere in the frame, so
drives the reference where it stands: a misaligned pose is what costs identity most.

DirectAnimator's two other cues are kept: the face (MediaPipe Pose's 11 face landmarks, as
``face``, order ``mediapipe-pose-face-11``) and the body's location (``PoseSequence.location()``,
the hip centre per frame).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np

from flash_engine import layout
from flash_engine.errors import FlashError
from flash_engine.pose.format import (COORDINATE_RANGE, LEFT_HIP, MEDIAPIPE_FACE_POINTS, MIN_CONFIDENCE, NECK,
                                      RIGHT_HIP, PoseSequence)

MODEL_COMPLEXITY = 1  # the only one whose model the wheel ships (0 and 2 would download)
MEDIAPIPE_LANDMARKS = 33
# OpenPose point -> MediaPipe Pose landmark (both name the person's own left and right); the
# neck (1) has none: the mid-point of the shoulders.
OPENPOSE_FROM_MEDIAPIPE = {0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28, 11: 23, 12: 25,
                           13: 27, 14: 5, 15: 2, 16: 8, 17: 7}
MEDIAPIPE_SHOULDERS = (11, 12)
MEDIAPIPE_FACE = tuple(range(11))  # nose, eyes (inner, centre, outer; left then right), ears, mouth
# MediaPipe's detector works on 224-256 px crops: a smaller frame (a 64 px mannequin render) is
# enlarged first, by a whole factor, as mannequin.judge does.
MIN_DETECT_SIDE = 256
# Over time: each frame's points averaged with its neighbours', these weights times confidence.
SMOOTHING_WEIGHTS = (1.0, 2.0, 1.0)
DRIVING_HINT = "check the --driving path"


def _bad(message: str, hint: str) -> FlashError:
    return FlashError(message, hint, code="bad_driving")


# ---------------------------------------------------------------------------------------
# Reading the clip: only the frames used are kept (a driving clip may be long and large).


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _rgb(frame) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = np.stack([frame] * 3, axis=-1)
    return np.ascontiguousarray(frame[..., :3], dtype=np.uint8)


def _picked(first: int, count: int, step: float) -> list[int]:
    return [first + int(round(i * step)) for i in range(count)]


def _too_short(path: Path, length: int, frames: int, start: int, step: float, fps: float | None) -> FlashError:
    needed = _picked(start, frames, step)[-1] + 1
    fit = sum(1 for index in _picked(start, frames, step) if index < length)
    rate = f" at {fps:g} fps" if step != 1 else ""
    fixes = [f"use at most {fit} frames from there"] if fit >= 2 else []
    fixes += ["start earlier" if start else None, "or use a longer clip"]
    return _bad(f"the driving clip {path} has {length} frames; {frames} frames from frame {start}{rate} need {needed}",
                ", ".join(fix for fix in fixes if fix))


def read_driving_frames(path: str | Path, frames: int, start: int = 0, fps: float | None = None
                        ) -> tuple[list[np.ndarray], float | None]:
    """``frames`` RGB frames of a video file or a folder of frame images, from frame ``start``,
    and the clip's frame rate (None for a folder). With ``fps`` and a video that declares its
    rate, frames are picked at that rate (every 3rd of a 24 fps clip for 8 fps)."""
    path = Path(path)
    if not path.exists():
        raise _bad(f"driving clip not found: {path}", DRIVING_HINT)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in layout.IMAGE_SUFFIXES
                        and not p.name.startswith(".")), key=_natural_key)
        if not files:
            raise _bad(f"the driving folder {path} has no frame images (png/jpg)", "pass a video or a folder of frames")
        picked = _picked(start, frames, 1)
        if picked[-1] >= len(files):
            raise _too_short(path, len(files), frames, start, 1, None)
        from PIL import Image

        read = []
        for index in picked:
            try:
                with Image.open(files[index]) as image:
                    read.append(_rgb(image.convert("RGB")))
            except Exception as err:  # noqa: BLE001 - any decoder failure: an unusable frame
                raise _bad(f"driving frame {files[index]} is not a readable image", "replace or remove it") from err
        if len({frame.shape for frame in read}) > 1:
            raise _bad(f"the driving frames in {path} have different sizes", "use frames of one size")
        return read, None
    if path.suffix.lower() not in layout.VIDEO_SUFFIXES:
        raise _bad(f"the driving clip {path} is not a video ({', '.join(layout.VIDEO_SUFFIXES)}) or a folder of frames",
                   DRIVING_HINT)
    if path.stat().st_size == 0:
        raise _bad(f"the driving clip {path} is empty (0 bytes)", DRIVING_HINT)
    import imageio.v2 as imageio

    unreadable = _bad(f"the driving clip {path} is not a readable video", "re-export it (e.g. H.264 MP4)")
    kept, length, clip_fps = {}, 0, None
    try:
        with imageio.get_reader(path, format="GIF" if path.suffix.lower() == ".gif" else "FFMPEG") as reader:
            meta = reader.get_meta_data()
            rate = meta.get("fps") or (1000.0 / meta["duration"] if meta.get("duration") else None)
            clip_fps = float(rate) if isinstance(rate, (int, float)) and rate > 0 else None
            step = clip_fps / fps if fps and clip_fps else 1.0
            picked = _picked(start, frames, step)
            wanted = set(picked)
            for index, frame in enumerate(reader):
                length = index + 1
                if index in wanted:
                    kept[index] = _rgb(frame)
                if index >= picked[-1]:
                    break
    except Exception as err:  # noqa: BLE001 - ffmpeg's errors are walls of text; say it plainly
        raise unreadable from err
    if length == 0:
        raise unreadable
    if len(kept) < frames:
        raise _too_short(path, length, frames, start, step, fps)
    return [kept[index] for index in picked], clip_fps


# ---------------------------------------------------------------------------------------
# MediaPipe -> OpenPose points


def openpose_from_mediapipe(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe Pose's (33, 3) [x, y, visibility] → OpenPose's (18, 3) body and the (11, 3)
    face points, in the same units as given."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    body = np.zeros((18, 3))
    for openpose, mediapipe in OPENPOSE_FROM_MEDIAPIPE.items():
        body[openpose] = landmarks[mediapipe]
    shoulders = landmarks[list(MEDIAPIPE_SHOULDERS)]
    body[NECK, :2] = shoulders[:, :2].mean(axis=0)
    body[NECK, 2] = shoulders[:, 2].min()
    return body, landmarks[list(MEDIAPIPE_FACE)].copy()


def _mediapipe_pose(static: bool):
    try:
        import mediapipe as mp
    except ImportError as err:
        raise FlashError(f"MediaPipe is not installed ({err})",
                         "install the engine's requirements: pip install mediapipe==0.10.21", code="missing_dependency") \
            from None
    return mp.solutions.pose.Pose(static_image_mode=static, model_complexity=MODEL_COMPLEXITY,
                                  enable_segmentation=False)


def _detect(pose, frame: np.ndarray) -> np.ndarray | None:
    """(33, 3) [x_px, y_px, visibility] in the frame's own pixels, or None without a person."""
    height, width = frame.shape[:2]
    factor = -(-MIN_DETECT_SIDE // min(width, height))
    if factor > 1:
        from PIL import Image

        frame = np.asarray(Image.fromarray(frame).resize((width * factor, height * factor), Image.BICUBIC))
    result = pose.process(frame)
    if result.pose_landmarks is None:
        return None
    return np.array([[p.x * width, p.y * height, p.visibility] for p in result.pose_landmarks.landmark])


def detect_person(image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """OpenPose body (18, 3) and face (11, 3) points in pixels of one image, or None."""
    pose = _mediapipe_pose(static=True)
    try:
        found = _detect(pose, _rgb(image))
    finally:
        pose.close()
    return None if found is None else openpose_from_mediapipe(found)


def detect_clip(frames: list[np.ndarray]) -> list[np.ndarray | None]:
    """(33, 3) pixel landmarks (or None) per frame. MediaPipe tracks the person from frame to
    frame; when it loses them (a fast move out of the tracked box) it reports nothing for that
    frame, so such a frame is looked at again on its own before it counts as person-less."""
    tracker, single = _mediapipe_pose(static=False), None
    try:
        detections = []
        for frame in frames:
            found = _detect(tracker, frame)
            if found is None:
                single = single or _mediapipe_pose(static=True)
                found = _detect(single, frame)
            detections.append(found)
        return detections
    finally:
        tracker.close()
        if single is not None:
            single.close()


# ---------------------------------------------------------------------------------------
# Over time


def fill_gaps(points: np.ndarray, found: np.ndarray) -> np.ndarray:
    """(F, P, 3) points where ``found`` (F,) is False replaced by the linear interpolation of
    the nearest frames with a person (the first or last such frame beyond the clip's ends)."""
    found = np.asarray(found, dtype=bool)
    if not found.any():
        raise ValueError("no frame has a person")
    frames = np.arange(len(points))
    flat = points.reshape(len(points), -1)
    filled = np.stack([np.interp(frames, frames[found], flat[found, k]) for k in range(flat.shape[1])], axis=1)
    return filled.reshape(points.shape)


def smooth(points: np.ndarray, weights=SMOOTHING_WEIGHTS) -> np.ndarray:
    """(F, P, 3) points with x, y averaged over neighbouring frames (``weights`` centred on the
    frame, times each frame's confidence); confidences are kept."""
    weights = np.asarray(weights, dtype=np.float64)
    half = len(weights) // 2
    out = points.copy()
    frames = len(points)
    for t in range(frames):
        lo, hi = max(0, t - half), min(frames, t + half + 1)
        w = weights[lo - t + half: hi - t + half, None] * points[lo:hi, :, 2]  # (n, P)
        total = w.sum(axis=0)
        usable = total > 0
        averaged = (w[..., None] * points[lo:hi, :, :2]).sum(axis=0) / np.where(usable, total, 1)[:, None]
        out[t, usable, :2] = averaged[usable]
    return out


# ---------------------------------------------------------------------------------------
# Retargeting


def _torso(body: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(neck, hip centre) in pixels, or None when the neck or a hip is missing."""
    if (body[[NECK, RIGHT_HIP, LEFT_HIP], 2] < MIN_CONFIDENCE).any():
        return None
    return body[NECK, :2], body[[RIGHT_HIP, LEFT_HIP], :2].mean(axis=0)


def alignment(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """(scale, offset): ``scale * source + offset`` puts the (18, 3) pixel pose ``source`` on
    ``target``. The torso decides (its length from neck to hip centre, its centre) as it barely
    changes with the arms' and legs' pose; without a whole torso in both, the points both have
    (their spread and centroid)."""
    source_torso, target_torso = _torso(source), _torso(target)
    scale = None
    if source_torso is not None and target_torso is not None:
        length = np.linalg.norm(source_torso[0] - source_torso[1])
        if length > 1e-6:
            scale = float(np.linalg.norm(target_torso[0] - target_torso[1]) / length)
            source_anchor, target_anchor = np.mean(source_torso, axis=0), np.mean(target_torso, axis=0)
    if scale is None:
        shared = (source[:, 2] >= MIN_CONFIDENCE) & (target[:, 2] >= MIN_CONFIDENCE)
        spread = np.sqrt(((source[shared, :2] - source[shared, :2].mean(axis=0)) ** 2).sum(axis=1).mean()) \
            if shared.sum() >= 2 else 0.0
        if spread <= 1e-6:
            raise FlashError("the reference's pose and the driving clip's first frame share too few points to "
                             "align them", "give a --reference-pose with the whole body, or a clip that starts "
                             "with the whole person in view", code="bad_driving")
        target_spread = np.sqrt(((target[shared, :2] - target[shared, :2].mean(axis=0)) ** 2).sum(axis=1).mean())
        scale = float(target_spread / spread)
        source_anchor, target_anchor = source[shared, :2].mean(axis=0), target[shared, :2].mean(axis=0)
    return scale, target_anchor - scale * source_anchor


def _apply(points: np.ndarray | None, scale: float, offset: np.ndarray) -> np.ndarray | None:
    if points is None:
        return None
    moved = points.copy()
    moved[..., :2] = points[..., :2] * scale + offset
    return moved


# ---------------------------------------------------------------------------------------


def _reference(reference_image, reference_pose: PoseSequence | None) -> tuple[tuple[int, int] | None, np.ndarray | None]:
    """The reference's (width, height) and image (as RGB) or None."""
    if reference_image is None:
        return (None if reference_pose is None else (reference_pose.width, reference_pose.height)), None
    if isinstance(reference_image, (str, Path)):
        from flash_engine.images import load_reference

        reference_image = load_reference(reference_image)
    if hasattr(reference_image, "convert"):  # a PIL image of any mode
        reference_image = reference_image.convert("RGB")
    image = _rgb(reference_image)
    return (image.shape[1], image.shape[0]), image


def poses_from_driving(path: str | Path, frames: int, start: int, reference_image,
                       reference_pose: PoseSequence | None = None, *, fps: float | None = None,
                       report: Callable[[str], None] | None = None) -> PoseSequence:
    """The poses of ``frames`` frames of the driving clip at ``path`` (a video or a folder of
    frames) from frame ``start``, retargeted to the reference's person.

    ``reference_image``: the shot's reference (a PIL image, an RGB array or a path), whose size
    the poses are for; its person is found with MediaPipe unless ``reference_pose`` (a
    PoseSequence, frame 0 used) gives it. With neither, the poses stay as in the clip, at its
    size. ``fps``: pick the clip's frames at this rate when the video declares its own (the
    sequence's fps is then ``fps``; else the clip's, None for a folder). ``report`` gets a few
    lines on what was found. Every problem is a one-line FlashError."""
    if frames < 1 or start < 0:
        raise FlashError(f"a driving clip needs at least 1 frame from a start of 0 or more (got {frames} from {start})",
                         "fix --frames / --driving-start", code="bad_argument")
    say = report or (lambda line: None)
    size, image = _reference(reference_image, reference_pose)
    if reference_pose is not None and image is not None:
        width, height = size
        if abs(width * reference_pose.height / reference_pose.width - height) > 1:
            raise FlashError(f"the reference pose was made for a {reference_pose.width}x{reference_pose.height} image "
                             f"but the reference image is {width}x{height}",
                             "give the reference pose of this image", code="bad_pose")
    clip, clip_fps = read_driving_frames(path, frames, start, fps)
    clip_h, clip_w = clip[0].shape[:2]

    target = None
    if reference_pose is not None:
        target = reference_pose.body[0].astype(np.float64) * [size[0], size[1], 1.0]
    elif image is not None:
        found = detect_person(image)
        if found is None:
            raise FlashError("no person found in the reference image, so the driving clip cannot be fitted to one",
                             "give the reference's pose with --reference-pose (a .pose.json of one frame)",
                             code="bad_driving")
        target = found[0]

    detections = detect_clip(clip)
    found = np.array([d is not None for d in detections])
    if not found.any():
        raise _bad(f"no person found in any of the {frames} driving frames of {path} used (from frame {start})",
                   "use a clip in which one whole person is in view, or give the poses with --pose")
    mapped = [openpose_from_mediapipe(d) if d is not None else (np.zeros((18, 3)), np.zeros((11, 3)))
              for d in detections]
    body = np.stack([m[0] for m in mapped])
    face = np.stack([m[1] for m in mapped])
    say(f"person found in {int(found.sum())} of {frames} driving frames"
        + ("" if found.all() else f"; interpolated: {', '.join(str(i) for i in np.flatnonzero(~found))}"))
    points = smooth(fill_gaps(np.concatenate([body, face], axis=1), found))
    body, face = points[:, :18], points[:, 18:]

    if target is not None:
        scale, offset = alignment(body[0], target)
        body, face = _apply(body, scale, offset), _apply(face, scale, offset)
        say(f"retargeted to the reference's person: scale {scale:.3g}, moved by "
            f"({offset[0]:.0f}, {offset[1]:.0f}) px")
        width, height = size
    else:
        width, height = clip_w, clip_h
    scale_to_unit = np.array([width, height, 1.0])
    body, face = body / scale_to_unit, face / scale_to_unit
    low, high = COORDINATE_RANGE
    for points in (body, face):
        outside = ((points[..., :2] < low) | (points[..., :2] > high)).any(axis=-1)
        points[outside] = 0.0  # too far off the image to draw: missing
        np.clip(points[..., 2], 0.0, 1.0, out=points[..., 2])
    return PoseSequence(body=body, width=width, height=height, fps=fps if fps is not None else clip_fps,
                        face=face, face_points=MEDIAPIPE_FACE_POINTS, source=str(path))
