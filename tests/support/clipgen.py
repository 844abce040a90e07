"""Synthetic training clips: a coloured disc moving along a path over a plain background."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def moving_disc(frames: int, size: int = 64, seed: int = 0, direction: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    background = tuple(int(c) for c in rng.integers(0, 120, 3))
    colour = tuple(int(c) for c in rng.integers(130, 256, 3))
    radius = size // 8
    out = []
    for t in range(frames):
        image = Image.new("RGB", (size, size), background)
        phase = t / max(frames - 1, 1)
        cx = size / 2 + math.cos(direction) * (phase - 0.5) * size * 0.6
        cy = size / 2 + math.sin(direction) * (phase - 0.5) * size * 0.6 + math.sin(phase * math.pi) * size * 0.1
        ImageDraw.Draw(image).ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
        out.append(np.asarray(image))
    return np.stack(out)


def write_mp4(frames: np.ndarray, path: Path, fps: int = 12) -> Path:
    import imageio.v2 as imageio

    with imageio.get_writer(path, fps=fps, codec="libx264", quality=9, macro_block_size=1,
                            ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def write_frame_folder(frames: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index + 1}.png")  # unpadded: natural sort must order them
    return folder


def make_clips(folder: Path, count: int = 3, frames: int = 12, size: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        video = moving_disc(frames, size, seed=index, direction=index * 0.7)
        if index % 2:
            write_frame_folder(video, folder / f"clip{index}")
        else:
            write_mp4(video, folder / f"clip{index}.mp4")
    return folder
