"""Training clips: find them, read them, report the bad ones, sample frames.

A clip is a video file (mp4/mov/webm/gif/avi, read with imageio + imageio-ffmpeg) or a
folder of numbered frame images. Every clip is decoded once at scan time and kept in memory
at a working size just above the training resolution, so steps never wait on ffmpeg. The
scan is part of the train job (seconds per clip), never of the checks before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from flash_engine.errors import FlashError
from flash_engine import layout
from flash_engine.devices import to_device
from flash_engine.errors import JobCancelled
from flash_engine.training.augment import MIN_CROP_SCALE

VIDEO_SUFFIXES = set(layout.VIDEO_SUFFIXES)
UNREADABLE_VIDEO = "not a readable video (corrupt, or not a video file)"
IMAGE_SUFFIXES = set(layout.IMAGE_SUFFIXES)


@dataclass
class Clip:
    path: Path
    prompt: str
    frames: np.ndarray  # (T, H, W, 3) uint8 at the working size
    fps: float | None = None  # a video's frame rate (a folder of frames has none)


@dataclass
class BadClip:
    path: Path
    reason: str

    def line(self) -> str:
        return f"skipped {self.path}: {self.reason}"


@dataclass
class ClipScan:
    good: list[Clip]
    bad: list[BadClip]

    def summary(self) -> str:
        return f"using {len(self.good)} of {len(self.good) + len(self.bad)} clips"


_natural_key = layout.natural_key


def _working_size(width: int, height: int, resolution: tuple[int, int]) -> tuple[int, int]:
    """Scale so the frame still covers the training size after the smallest random crop."""
    target_w, target_h = resolution
    scale = max(target_w / width, target_h / height) / MIN_CROP_SCALE
    return max(target_w, round(width * scale)), max(target_h, round(height * scale))


def _resize_all(frames: list[np.ndarray], resolution: tuple[int, int]) -> np.ndarray:
    height, width = frames[0].shape[:2]
    size = _working_size(width, height, resolution)
    return np.stack([np.asarray(Image.fromarray(f).convert("RGB").resize(size, Image.Resampling.BILINEAR))
                     for f in frames])


def read_video(path: Path) -> list[np.ndarray]:
    import imageio.v2 as imageio

    if path.stat().st_size == 0:
        raise ValueError("the file is empty (0 bytes)")
    try:
        if path.suffix.lower() == ".gif":
            frames = imageio.mimread(path, memtest=False)
        else:
            with imageio.get_reader(path, format="FFMPEG") as reader:
                frames = [frame for frame in reader]
    except Exception as err:  # noqa: BLE001 - ffmpeg's errors are walls of text; say it plainly
        raise ValueError(UNREADABLE_VIDEO) from err
    frames = [np.asarray(f)[..., :3] if np.asarray(f).ndim == 3 else np.stack([np.asarray(f)] * 3, -1)
              for f in frames]
    if not frames:
        raise ValueError("no frames could be decoded")
    return frames


def video_fps(path: Path) -> float | None:
    """The frame rate a video file declares (None when it declares none)."""
    import imageio.v2 as imageio

    try:
        with imageio.get_reader(path, format="GIF" if path.suffix.lower() == ".gif" else "FFMPEG") as reader:
            meta = reader.get_meta_data()
    except Exception:  # noqa: BLE001 - the frames were readable; a missing rate is not an error
        return None
    fps = meta.get("fps")
    if fps is None and meta.get("duration"):  # GIF: milliseconds per frame
        fps = 1000.0 / float(meta["duration"])
    return float(fps) if isinstance(fps, (int, float)) and fps > 0 else None


def learned_fps(clips: list["Clip"], stride: int) -> float | None:
    """The speed an action learns from its clips: their frame rate over the sampling stride
    (the median over clips that declare one; None when none does)."""
    rates = sorted(clip.fps / stride for clip in clips if clip.fps)
    if not rates:
        return None
    middle = len(rates) // 2
    median = rates[middle] if len(rates) % 2 else (rates[middle - 1] + rates[middle]) / 2
    return round(median, 3)


def read_frame_folder(folder: Path) -> list[np.ndarray]:
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not files:
        raise ValueError("the folder has no frame images (png/jpg)")
    frames = []
    for file in files:
        try:
            with Image.open(file) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except Exception as err:  # noqa: BLE001 - any decoder failure means an unusable frame
            raise ValueError(f"frame {file.name} is not a readable image") from err
    if len({f.shape for f in frames}) > 1:
        raise ValueError("its frames have different sizes")
    return frames


def _read_error(err: Exception) -> str:
    return str(err) if isinstance(err, ValueError) and str(err) else UNREADABLE_VIDEO


def check_clip_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise FlashError(f"clips folder not found: {folder}", "pass a folder of video files or frame folders",
                         code="bad_clips")


def find_clip_paths(folder: Path) -> list[Path]:
    check_clip_folder(folder)
    return sorted((p for p in folder.iterdir()
                   if not p.name.startswith(".") and (p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES)),
                  key=_natural_key)


def frames_needed(num_frames: int, stride: int) -> int:
    return (num_frames - 1) * stride + 1


def scan_clips(sources: list[tuple[Path, str]], num_frames: int, stride: int, resolution: tuple[int, int],
               on_bad: Callable[[BadClip], None] | None = None,
               should_cancel: Callable[[], bool] | None = None) -> ClipScan:
    """Read every clip of every (folder, prompt) source; bad ones are reported, not fatal.

    ``on_bad`` hears of each bad clip as it is found; ``should_cancel`` is asked before each
    clip is read (JobCancelled when it says yes)."""
    needed = frames_needed(num_frames, stride)
    good, bad = [], []

    def skip(path: Path, reason: str) -> None:
        bad.append(BadClip(path, reason))
        if on_bad is not None:
            on_bad(bad[-1])

    for folder, prompt in sources:
        candidates = find_clip_paths(folder)
        for other in folder.iterdir():
            if other.is_file() and not other.name.startswith(".") and other.suffix.lower() not in VIDEO_SUFFIXES:
                skip(other, f"not a clip (use {', '.join(sorted(VIDEO_SUFFIXES))} or a folder of frames)")
        for path in candidates:
            if should_cancel is not None and should_cancel():
                raise JobCancelled()
            try:
                frames = read_frame_folder(path) if path.is_dir() else read_video(path)
            except Exception as err:  # noqa: BLE001 - every reader failure is reported per clip
                skip(path, _read_error(err))
                continue
            if len(frames) < needed:
                skip(path, f"has {len(frames)} frames, needs {needed} ({num_frames} frames at "
                           f"stride {stride}): use a longer clip or a smaller --stride")
                continue
            good.append(Clip(path=path, prompt=prompt, frames=_resize_all(frames, resolution),
                             fps=None if path.is_dir() else video_fps(path)))
    return ClipScan(good=good, bad=bad)


def sample_frames(clip: Clip, num_frames: int, stride: int, generator: torch.Generator,
                  device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """``num_frames`` frames at ``stride`` from a random start → float (F, 3, H, W) in [0, 1] on
    ``device``; the frames travel as uint8 (¼ of the bytes) and become floats there."""
    last_start = len(clip.frames) - frames_needed(num_frames, stride)
    start = int(torch.randint(0, last_start + 1, (1,), generator=generator))
    frames = clip.frames[start: start + frames_needed(num_frames, stride): stride]
    frames = torch.from_numpy(np.ascontiguousarray(frames))
    return to_device(frames, device).permute(0, 3, 1, 2).float() / 255.0
