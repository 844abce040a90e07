"""Depth images as depth ControlNets expect them: 16-bit, near = bright, background = 0.

The renderer's Z pass gives each supersampled pixel its distance along the camera's view axis
in metres (Blender's background is 1e10). :func:`depth_images` turns a clip of them into the
MiDaS convention (inverse depth, normalised): with ``near`` and ``far`` the nearest and farthest
geometry of the whole clip (the figure and the floor), a pixel at ``z`` metres gets

    65535 · (1/z − 1/far) / (1/near − 1/far)

so the nearest point of the clip is 65535, its farthest 0, and the empty background 0. One
range per clip, not per frame, so a still object keeps its value over time (no flicker). Then
each ``SUPERSAMPLE``×``SUPERSAMPLE`` block is averaged, like the colour frames, so edges are
anti-aliased the same way. :func:`depth_metres` inverts the mapping for pixels wholly on geometry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEPTH_MAX = 65535               # 16-bit PNG
BACKGROUND_Z = 1e9              # Blender's Z pass puts 1e10 where no geometry is


def depth_images(z: np.ndarray, factor: int) -> tuple[np.ndarray, float, float]:
    """Z pass (F, H·factor, W·factor) in metres → uint16 images (F, H, W), near and far (metres)."""
    z = np.asarray(z, dtype=np.float64)
    geometry = np.isfinite(z) & (z > 0) & (z < BACKGROUND_Z)
    if not geometry.any():
        return np.zeros((z.shape[0], z.shape[1] // factor, z.shape[2] // factor), np.uint16), 0.0, 0.0
    near, far = float(z[geometry].min()), float(z[geometry].max())
    span = 1.0 / near - 1.0 / far
    with np.errstate(divide="ignore"):
        inverse = np.where(geometry, 1.0 / z, 0.0)
    value = np.where(geometry, (inverse - 1.0 / far) / span if span > 0 else 1.0, 0.0)
    frames, height, width = z.shape[0], z.shape[1] // factor, z.shape[2] // factor
    blocks = value.reshape(frames, height, factor, width, factor).mean(axis=(2, 4))
    return np.round(np.clip(blocks, 0.0, 1.0) * DEPTH_MAX).astype(np.uint16), near, far


def depth_metres(images: np.ndarray, near: float, far: float) -> np.ndarray:
    """The distance in metres of each pixel of :func:`depth_images` (exact where a pixel lies wholly
    on geometry; 0 means the background or the clip's farthest point, and reads as ``far``)."""
    value = np.asarray(images, dtype=np.float64) / DEPTH_MAX
    return 1.0 / (value * (1.0 / near - 1.0 / far) + 1.0 / far)


def write_depth_pngs(images: np.ndarray, folder: Path | str) -> list[Path]:
    """Write ``depth_0001.png`` … as 16-bit greyscale PNGs; returns their paths."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(np.asarray(images, dtype=np.uint16)):
        path = folder / f"depth_{index + 1:04d}.png"
        Image.fromarray(image).save(path, compress_level=6)
        paths.append(path)
    return paths


def read_depth_pngs(folder: Path | str) -> np.ndarray:
    """The 16-bit depth images (F, H, W) of a folder written by :func:`write_depth_pngs`."""
    from PIL import Image

    paths = sorted(Path(folder).glob("depth_*.png"))
    if not paths:
        raise ValueError(f"no depth_*.png in {folder}")
    images = []
    for path in paths:
        with Image.open(path) as image:
            if image.mode not in ("I;16", "I"):
                raise ValueError(f"{path.name} is not a 16-bit greyscale PNG (mode {image.mode})")
            images.append(np.asarray(image).astype(np.uint16))
    return np.stack(images)
