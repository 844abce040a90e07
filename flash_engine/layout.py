"""The names of what the engine writes on disk, in one place.

Standard library only: the Blender add-on reads the same folders (takes, actions, training
work folders) through the bundled engine, so both sides name them from here.
"""

from __future__ import annotations

import re
from pathlib import Path

# A take folder
TAKE_MANIFEST = "flash.json"  # every setting, and the list of files the engine wrote
TAKE_MP4 = "flash.mp4"
TAKE_DRIVING_POSES = "driving.pose.json"  # a take driven by a clip: the poses read from it

# An action folder
ACTION_MANIFEST = "action.toml"
ACTION_UNET = "unet.safetensors"
ACTION_DECODER = "decoder.safetensors"

# Hidden folders beside an output while a job works: ``.NAME.partial-XXXXXXXX`` (the job's
# staging folder), ``.NAME.old-XXXXXXXX`` (the folder it replaces, for a moment), and
# ``.NAME.training`` (a training's checkpoints, kept until the action is written).
PARTIAL_MARK = ".partial-"
OLD_MARK = ".old-"
OWNER_FILE = ".flash-owner.json"  # in a staging folder: which process made it
TRAINING_SUFFIX = ".training"
CHECKPOINT_JSON = "checkpoint.json"  # in a training work folder: written last, so it names a whole checkpoint

# Training clips: video files, or folders of numbered frames
VIDEO_SUFFIXES = (".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".webm")
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def natural_key(path: Path):
    """Sort key for numbered files: ``frame_2`` before ``frame_10`` (name order as people read it)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", Path(path).name)]


def frame_name(index: int) -> str:
    """The file of clip frame ``index`` (0-based) in a take: ``frame_0001.png`` …"""
    return f"frame_{index + 1:04d}.png"


def training_work_dir(action_folder: Path) -> Path:
    """Where a training's checkpoints live: ``.NAME.training`` beside the action folder."""
    action_folder = Path(action_folder)
    return action_folder.parent / f".{action_folder.name}{TRAINING_SUFFIX}"


def staging_prefix(name: str, mark: str = PARTIAL_MARK) -> str:
    """The start of a hidden staging folder's name for an output called ``name``."""
    return f".{name}{mark}"
