"""What moves a take: the action alone, a rig in the scene, or a reference clip; and the scene's
depth. The user's choice → the checks, the request's motion fields and the take's record.

Pure Python (no bpy). ``rig_motion.py`` reads the scene (the rig's pose per take frame, the
depth pass, the clip's frame count) and hands the results to these functions:

- *Action*: today's take, nothing added;
- *Rig*: the take's ``.pose.json`` (beside its reference) goes to the engine as ``pose``;
- *Reference clip*: the video goes to the engine as ``driving`` (the engine reads its poses),
  from ``driving_start``;
- *Depth from scene*: a folder of 16-bit depth PNGs, one per take frame, as ``depth``.

Every bad input is a one-line PlanError naming the fix, raised before anything is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PlanError

ACTION, RIG, CLIP = "ACTION", "RIG", "CLIP"
SOURCES = (ACTION, RIG, CLIP)
POSE_SUFFIX = ".pose.json"  # beside the take's reference: <take>.pose.json
DEPTH_SUFFIX = ".depth"  # beside the take's reference: <take>.depth/frame_0000.png, ...
DEPTH_FRAME = "frame_{:04d}.png"
# What Blender's movie reader (FFmpeg) opens; anything else is refused before the engine sees it.
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ogv", ".wmv", ".mxf",
                    ".dv", ".flv", ".gif")
STRENGTH_DECIMALS = 3  # Blender's float properties are 32-bit: 0.8 is sent as 0.8, not 0.800000011920929
PANEL = "FLASH › Motion"
RIG_FIX = f"pick an armature in {PANEL} › Rig, or set Motion to Action"
CLIP_FIX = f"pick a video file in {PANEL} › Reference Clip"


@dataclass(frozen=True)
class MotionChoice:
    """The scene's Motion settings with the operator's (or the batch's) overrides."""

    source: str = ACTION
    rig: str = ""  # the armature object's name
    clip: str = ""  # the reference clip, absolute
    clip_start: int = 0  # the clip's first frame used (0-based)
    depth: bool = False
    pose_strength: float | None = None  # None: the engine's default
    depth_strength: float | None = None
    bones: dict = field(default_factory=dict)  # the user's bone table: point -> (bone, end)

    def __post_init__(self):
        if self.source not in SOURCES:
            raise PlanError(f"unknown motion {self.source!r}", f"use one of {', '.join(s.lower() for s in SOURCES)}")

    @property
    def controlled(self) -> bool:
        return self.source != ACTION or self.depth


def parse_motion(text: str) -> dict:
    """The batch's ``--motion``: ``action``, ``rig:NAME`` or ``clip:PATH`` → take overrides."""
    kind, _, value = (text or "").partition(":")
    kind = kind.strip().lower()
    if kind == "action" and not value:
        return {"motion": ACTION}
    if kind in ("rig", "clip") and value.strip():
        return {"motion": kind.upper(), kind: value.strip()}
    raise PlanError(f"--motion {text!r} is not action, rig:NAME or clip:PATH",
                    "e.g. --motion rig:Armature or --motion clip:/footage/run.mp4")


def pose_path(reference: Path) -> Path:
    """``ROOT/<take>.reference.png`` → ``ROOT/<take>.pose.json``."""
    return _beside(reference, POSE_SUFFIX)


def depth_folder(reference: Path) -> Path:
    return _beside(reference, DEPTH_SUFFIX)


def _beside(reference: Path, suffix: str) -> Path:
    name = reference.name
    stem = name[: name.index(".reference")] if ".reference" in name else reference.stem
    return reference.with_name(stem + suffix)


def request_args(choice: MotionChoice, reference: Path) -> dict:
    """The animate request's motion fields (empty for an action alone)."""
    args: dict = {}
    if choice.source == RIG:
        args["pose"] = str(pose_path(reference).resolve())
    elif choice.source == CLIP:
        args["driving"] = choice.clip
        if choice.clip_start:
            args["driving_start"] = choice.clip_start
    if choice.source != ACTION and choice.pose_strength is not None:
        args["pose_strength"] = round(float(choice.pose_strength), STRENGTH_DECIMALS)
    if choice.depth:
        args["depth"] = str(depth_folder(reference).resolve())
        if choice.depth_strength is not None:
            args["depth_strength"] = round(float(choice.depth_strength), STRENGTH_DECIMALS)
    return args


# ---------------------------------------------------------------------------------------
# Checks


def check_rig_picked(choice: MotionChoice, armature_type: str | None) -> None:
    """``armature_type``: the type of the object named ``choice.rig`` (None: no such object)."""
    if not choice.rig:
        raise PlanError("no rig picked for the motion", RIG_FIX)
    if armature_type is None:
        raise PlanError(f"the rig '{choice.rig}' is not in this file", RIG_FIX)
    if armature_type != "ARMATURE":
        raise PlanError(f"'{choice.rig}' is not an armature (it is a {armature_type.lower()})", RIG_FIX)


def check_visible(confidences: list, rig: str, camera: str, frames: tuple[int, int]) -> None:
    """PlanError when no point of the rig is in the camera's picture on any take frame.
    ``confidences``: per frame, the 18 points' confidences."""
    if not any(c > 0 for frame in confidences for c in frame):
        raise PlanError(f"the rig '{rig}' is not in camera '{camera}''s view on any frame of the take "
                        f"(scene frames {frames[0]}-{frames[1]})",
                        "frame the character with the camera, or pick the rig the camera sees")


@dataclass(frozen=True)
class ClipInfo:
    """What Blender's movie reader says of a clip file (0 frames: it cannot read it)."""

    frames: int
    fps: float = 0.0


def check_clip_path(path: str) -> Path:
    """The clip's path, if it can be a video at all (before Blender is asked to open it)."""
    if not path:
        raise PlanError("no reference clip picked", CLIP_FIX)
    clip = Path(path)
    if not clip.is_file():
        raise PlanError(f"reference clip not found: {clip}", "check the path, or pick the file again")
    if clip.suffix.lower() not in VIDEO_EXTENSIONS:
        raise PlanError(f"{clip.name} is not a video", f"pick a video file ({', '.join(VIDEO_EXTENSIONS[:4])}, ...)")
    return clip


def check_clip(path: str, info: ClipInfo, start: int) -> None:
    clip = Path(path)
    if info.frames < 2:
        raise PlanError(f"{clip.name} is not a video Blender can read (it has no frames)",
                        "pick another file, or convert it to .mp4 (H.264)")
    if start >= info.frames:
        raise PlanError(f"the clip's start offset {start} is past its end ({info.frames} frames)",
                        f"set Start to {info.frames - 1} or less")


def describe_clip(info: ClipInfo | None, start: int) -> str:
    """For the panel: how long the clip is and where the take starts reading it."""
    if info is None:
        return "Clip: not read yet"
    if info.frames < 2:
        return "Clip: Blender cannot read this file as a video"
    seconds = f", {info.frames / info.fps:.1f} s at {info.fps:g} fps" if info.fps > 0 else ""
    return f"Clip: {info.frames} frames{seconds}; the take starts at its frame {start}"


# ---------------------------------------------------------------------------------------
# The take's record


def rig_record(choice: MotionChoice, mapping_record: dict, preset: str | None, camera: str,
               samples: list[tuple[int, float]], pose_file: Path) -> dict:
    return {"source": "rig", "armature": choice.rig, "mapping": mapping_record, "mapping_preset": preset,
            "camera": camera, "scene_frames": [frame + sub for frame, sub in samples], "pose_file": str(pose_file),
            "pose_strength": choice.pose_strength}


def clip_record(choice: MotionChoice, info: ClipInfo, frames: int) -> dict:
    return {"source": "clip", "path": choice.clip, "start": choice.clip_start, "frames": frames,
            "clip_frames": info.frames, "clip_fps": info.fps, "pose_strength": choice.pose_strength}


def depth_record(choice: MotionChoice, folder: Path, camera: str, samples: list[tuple[int, float]],
                 near_far: tuple[float, float] | None) -> dict:
    return {"folder": str(folder), "camera": camera, "scene_frames": [frame + sub for frame, sub in samples],
            "near_far": list(near_far) if near_far else None, "depth_strength": choice.depth_strength}


MANIFEST_KEY = "motion_source"  # the add-on's entry in the take's flash.json (the engine ignores it)


def record_in_manifest(manifest: Path, record: dict) -> None:
    """Add the motion source to the take's ``flash.json`` (written whole, through a temporary
    file, so a failure leaves the engine's manifest as it was)."""
    manifest = Path(manifest)
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data[MANIFEST_KEY] = record
    staging = manifest.with_name(f".{manifest.name}.{os.getpid()}.partial")
    try:
        staging.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(staging, manifest)
    finally:
        staging.unlink(missing_ok=True)
