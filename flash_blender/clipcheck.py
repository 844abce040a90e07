"""Training clips, checked before the engine sees them: a light standard-library check.

Pure Python (no bpy, no imageio, no torch). The engine reads every clip when the training
starts (``flash_engine/training/clips.py``) and reports the ones it cannot use; this module
answers earlier, while the user is still choosing, "how many of these clips are usable":

- a clip is a video file (mp4/mov/m4v/webm/mkv/gif/avi) or a folder of numbered frame images;
- a video must not be empty and its first bytes must be one of the container signatures
  (ISO-BMFF/QuickTime atoms, EBML, GIF, RIFF AVI): no decoding, so a video's length is only
  known once the engine reads it;
- a frame folder must hold enough images (``(frames - 1) * stride + 1``), each with an image
  signature (PNG, JPEG, WebP, BMP, TIFF).

It never calls a clip bad that the engine could use (a false alarm would hide a clip from
the count, not from the training: the engine still gets everything and judges for itself).

Clips chosen as files are staged for the engine, which takes clip folders: see
:func:`stage_files`.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .bundled import engine_module

# The engine's lists, from its stdlib-only layout module (the add-on never imports the torch side).
VIDEO_SUFFIXES = engine_module("layout").VIDEO_SUFFIXES
IMAGE_SUFFIXES = engine_module("layout").IMAGE_SUFFIXES
NOT_A_CLIP = f"not a clip (use {', '.join(VIDEO_SUFFIXES)} or a folder of frames)"
EMPTY_FILE = "the file is empty (0 bytes)"
NOT_A_VIDEO = "not a readable video (its first bytes are not MP4/MOV, WebM/MKV, GIF or AVI)"
NO_FRAMES = "the folder has no frame images (png/jpg)"
HEADER_BYTES = 16
# ISO base media (mp4, m4v) and QuickTime (mov) files start with an atom: size, then its type.
MP4_ATOMS = {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot", b"uuid"}


def frames_needed(frames: int, stride: int) -> int:
    """Source frames one training sample spans (the engine's rule)."""
    return (max(frames, 1) - 1) * max(stride, 1) + 1


def _head(path: Path) -> bytes:
    with open(path, "rb") as file:
        return file.read(HEADER_BYTES)


def video_kind(head: bytes) -> str | None:
    """The container a file's first bytes announce, or None."""
    if len(head) >= 8 and head[4:8] in MP4_ATOMS:
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    return None


def image_kind(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    return None


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def video_problem(path: Path) -> str | None:
    """Why a video file cannot be a clip, or None when it looks like one."""
    try:
        if path.stat().st_size == 0:
            return EMPTY_FILE
        head = _head(path)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    return None if video_kind(head) else NOT_A_VIDEO


def frames_problem(images: list[Path], frames: int, stride: int) -> str | None:
    """Why a frame sequence cannot be a clip, or None."""
    if not images:
        return NO_FRAMES
    needed = frames_needed(frames, stride)
    if len(images) < needed:
        return (f"has {len(images)} frames, needs {needed} ({frames} frames at stride {stride}): "
                "use a longer clip or a smaller stride")
    for image in images:
        try:
            head = _head(image)
        except OSError:
            head = b""
        if image_kind(head) is None:
            return f"frame {image.name} is not a readable image"
    return None


def frame_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and is_image(p)), key=_natural_key)


@dataclass(frozen=True)
class ClipProblem:
    path: Path
    reason: str

    def line(self) -> str:
        return f"{self.path.name}: {self.reason}"


@dataclass
class ClipCheck:
    """What the check found: clips that look usable, and the bad ones with their reasons."""

    usable: list[Path] = field(default_factory=list)
    bad: list[ClipProblem] = field(default_factory=list)
    videos: int = 0  # usable videos: their length is only checked when the training reads them
    error: str = ""  # nothing could be checked (no folder chosen, folder missing)
    hint: str = ""  # a likely mistake (a single clip's frame folder chosen as the clips folder)

    @property
    def total(self) -> int:
        return len(self.usable) + len(self.bad)

    def summary(self) -> str:
        if self.error:
            return self.error
        text = f"{len(self.usable)} usable clip{'s' if len(self.usable) != 1 else ''} of {self.total}"
        if self.bad:
            text += f" ({len(self.bad)} will be skipped)"
        if self.videos:
            text += "; video lengths are checked when training starts"
        return text

    def lines(self) -> list[str]:
        return [problem.line() for problem in self.bad]


def check_folder(folder: str | Path, frames: int, stride: int) -> ClipCheck:
    """A clips folder as the engine scans it: each video file and each sub-folder is a clip,
    any other file is reported (hidden entries are ignored)."""
    if not str(folder).strip():
        return ClipCheck(error="no clips chosen")
    folder = Path(folder)
    if not folder.is_dir():
        return ClipCheck(error=f"clips folder not found: {folder}")
    check = ClipCheck()
    entries = sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=_natural_key)
    for path in entries:
        if path.is_dir():
            problem = frames_problem(frame_images(path), frames, stride)
        elif is_video(path):
            problem = video_problem(path)
            check.videos += problem is None
        else:
            problem = NOT_A_CLIP
        if problem:
            check.bad.append(ClipProblem(path, problem))
        else:
            check.usable.append(path)
    images = [p for p in entries if p.is_file() and is_image(p)]
    if images and not check.usable:
        check.hint = (f"{folder.name} holds {len(images)} frame images: it looks like one clip; choose the folder "
                      "that holds it (one sub-folder or video per clip), or pick its frames as files")
    return check


def group_files(files: Iterable[str | Path]) -> list[tuple[str, list[Path]]]:
    """Chosen files as clips: each video file is one; images chosen together from one folder
    are one clip (its frames, in natural order); other files stay single (reported as not
    clips). Returns ``[(kind, paths)]`` with kind ``video``, ``frames`` or ``other``, in the
    order first chosen."""
    groups: list[tuple[str, list[Path]]] = []
    frames: dict[Path, list[Path]] = {}
    seen: set[Path] = set()
    for raw in files:
        path = Path(raw)
        if path in seen:
            continue
        seen.add(path)
        if is_image(path):
            if path.parent not in frames:
                frames[path.parent] = []
                groups.append(("frames", frames[path.parent]))
            frames[path.parent].append(path)
        else:
            groups.append(("video" if is_video(path) else "other", [path]))
    for images in frames.values():
        images.sort(key=_natural_key)
    return groups


def check_files(files: Iterable[str | Path], frames: int, stride: int) -> ClipCheck:
    groups = group_files(files)
    if not groups:
        return ClipCheck(error="no clips chosen")
    check = ClipCheck()
    for kind, paths in groups:
        first = paths[0]
        if kind == "frames":
            clip = first.parent  # reported by its folder: the clip is the sequence
            missing = [p for p in paths if not p.is_file()]
            problem = f"frame {missing[0].name} is missing" if missing else frames_problem(paths, frames, stride)
        elif not first.is_file():
            clip, problem = first, "file not found"
        elif kind == "video":
            clip, problem = first, video_problem(first)
            check.videos += problem is None
        else:
            clip, problem = first, NOT_A_CLIP
        if problem:
            check.bad.append(ClipProblem(clip, problem))
        else:
            check.usable.append(clip)
    return check


# ---------------------------------------------------------------------------------------
# Staging chosen files as a clips folder


def link_or_copy(source: Path, dest: Path) -> str:
    """A hard link to ``source`` at ``dest`` (no space used, the user's file untouched), or a
    copy where links cannot be made (another drive, FAT, a network share). Never a move."""
    try:
        os.link(source, dest)
        return "link"
    except OSError:
        shutil.copy2(source, dest)
        return "copy"


def _unique(name: str, taken: set[str]) -> str:
    stem, suffix = os.path.splitext(name)
    candidate, number = name, 2
    while candidate.lower() in taken:
        candidate = f"{stem}-{number}{suffix}"
        number += 1
    taken.add(candidate.lower())
    return candidate


def stage_files(files: Iterable[str | Path], dest: Path) -> dict[str, str]:
    """Build a clips folder at ``dest`` (replaced if there) from chosen files: videos as
    links/copies under their own names, images of one folder as a sub-folder of frames.
    Returns ``{staged path: the user's path}`` (a frame sub-folder maps to the images'
    folder), for turning the engine's reports back into the user's names."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    sources: dict[str, str] = {}
    taken: set[str] = set()
    for kind, paths in group_files(files):
        if kind == "frames":
            folder = dest / _unique(paths[0].parent.name or "frames", taken)
            folder.mkdir()
            for path in paths:
                if path.is_file():
                    link_or_copy(path, folder / path.name)
            sources[str(folder)] = str(paths[0].parent)
        elif paths[0].is_file():
            target = dest / _unique(paths[0].name, taken)
            link_or_copy(paths[0], target)
            sources[str(target)] = str(paths[0])
    return sources


def user_paths(text: str, sources: dict[str, str]) -> str:
    """``text`` (an engine log line) with staged paths replaced by the user's own."""
    for staged in sorted(sources, key=len, reverse=True):
        text = text.replace(staged, sources[staged])
    return text


# ---------------------------------------------------------------------------------------
# A small cache, so the preferences can show the count on every redraw


def _stamp(paths: Iterable[Path]) -> tuple:
    stamp = []
    for path in paths:
        try:
            stamp.append((str(path), os.stat(path).st_mtime_ns))
        except OSError:
            stamp.append((str(path), None))
    return tuple(stamp)


class CheckCache:
    """Re-checks only when the choice, the folder's contents or the sampling change (and at
    most every ``ttl`` seconds, for changes inside clip folders)."""

    def __init__(self, ttl: float = 2.0, clock=time.monotonic):
        self.ttl, self._clock = ttl, clock
        self._key, self._when, self._value = None, 0.0, None

    def folder(self, folder: str, frames: int, stride: int) -> ClipCheck:
        path = Path(folder)
        key = ("folder", _stamp([path]), frames, stride)
        return self._get(key, lambda: check_folder(path, frames, stride))

    def files(self, files: list[str], frames: int, stride: int) -> ClipCheck:
        key = ("files", _stamp(Path(f) for f in files), frames, stride)
        return self._get(key, lambda: check_files(files, frames, stride))

    def _get(self, key, compute) -> ClipCheck:
        now = self._clock()
        if key != self._key or now - self._when > self.ttl or self._value is None:
            self._key, self._when, self._value = key, now, compute()
        return self._value
