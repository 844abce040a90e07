"""Image and video I/O around the model: reference in, frames and MP4 out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from flash_engine.errors import FlashError
from flash_engine.requests import round_side
from flash_engine.layout import frame_name



# The most pixels a reference may have: Pillow's own decompression-bomb bound (89.5 MP, e.g.
# 9459²); the engine scales every reference down to the clip's size anyway.
MAX_REFERENCE_PIXELS = Image.MAX_IMAGE_PIXELS
# Integer modes whose values run to 65535 (16-bit PNGs, TIFFs): Pillow's convert("RGB") clips
# them at 255, which turns a 16-bit render nearly white.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(values / 257.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":  # float images: 0..1
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def load_reference(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise FlashError(f"reference image not found: {path}", "check the --image path", code="bad_image")
    if not path.is_file():
        raise FlashError(f"reference is not a file: {path}", "pass an image file (PNG, JPEG, ...)", code="bad_image")
    too_large = FlashError(f"reference image {path} is larger than {MAX_REFERENCE_PIXELS / 1e6:.0f} megapixels",
                           "render the reference at most 4096 pixels on the long side", code="bad_image")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_REFERENCE_PIXELS:
                raise too_large
            image.load()
            return _to_rgb(image)
    except Image.DecompressionBombError as err:
        raise too_large from err
    except PermissionError as err:
        raise FlashError(f"cannot read reference image {path}: permission denied",
                         "fix the file's permissions", code="bad_image") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise FlashError(f"not a readable image: {path}",
                         "pass a PNG or JPEG render of the shot", code="bad_image") from err


def check_size(name: str, value: int, multiple: int) -> None:
    """A one-line FlashError naming the nearest sizes when ``value`` is not a positive
    multiple of ``multiple``, the model's size step (``model_limits``' ``size_multiple``)."""
    if value < multiple or value % multiple:
        lower = max(multiple, value // multiple * multiple)
        raise FlashError(
            f"{name} {value} is not a multiple of {multiple}, this model's size step",
            f"use {lower} or {lower + multiple}",
            code="bad_size",
        )


def resolve_size(image_size: tuple[int, int], width: int | None, height: int | None,
                 long_side: int, multiple: int) -> tuple[int, int]:
    """The model resolution: explicit sizes are checked, missing ones follow the image's aspect.

    With neither given, the long side is ``long_side`` and the short side the image's
    aspect ratio rounded to a multiple of ``multiple`` (the model's size step), so a 16:9
    camera is not squeezed into a square.
    """
    image_w, image_h = image_size
    aspect = image_w / image_h
    if width is not None:
        check_size("width", width, multiple)
    if height is not None:
        check_size("height", height, multiple)
    if width is None and height is None:
        check_size("long side", long_side, multiple)
        if aspect >= 1:
            width, height = long_side, round_side(long_side / aspect, multiple)
        else:
            width, height = round_side(long_side * aspect, multiple), long_side
    elif width is None:
        width = round_side(height * aspect, multiple)
    elif height is None:
        height = round_side(width / aspect, multiple)
    return width, height


def fit_reference(image: Image.Image, width: int, height: int,
                  resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """Scale to cover width×height, then centre-crop: the aspect is kept, nothing is stretched.
    Whatever else is fitted to a take (depth) goes through here too, so it stays aligned."""
    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    scaled = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                          resample)
    left = (scaled.width - width) // 2
    top = (scaled.height - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def to_model_pixels(image: Image.Image):
    """PIL RGB → float tensor (1, 3, H, W) in [-1, 1]."""
    import torch

    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_uint8_frames(pixels) -> np.ndarray:
    """Decoder output (F, 3, H, W) in [-1, 1] → (F, H, W, 3) uint8."""
    import torch

    frames = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 1).cpu().numpy()


def save_frames(frames: np.ndarray, folder: Path) -> list[Path]:
    paths = []
    for index, frame in enumerate(frames):
        path = folder / frame_name(index)
        Image.fromarray(frame).save(path)
        paths.append(path)
    return paths


def write_mp4(frames: np.ndarray, path: Path, fps: int = 8) -> Path:
    """H.264 MP4 through imageio-ffmpeg's bundled ffmpeg (frames padded to even sizes)."""
    import imageio.v2 as imageio

    height, width = frames.shape[1:3]
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                            ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(frame)
    return path
