"""Scene depth for motion control: a folder of per-frame depth images → the depth condition.

One image per frame of the take, in name order (``depth_2`` before ``depth_10``): greyscale,
near = bright (the MiDaS convention depth ControlNets were trained on), 16-bit PNG or TIFF for
the precision, 8-bit accepted. Values are used as they are, full scale = nearest: no
per-frame normalisation, which would make the depth of a still scene flicker.

An image is the take's size, or the aspect of the reference image or of the take: it is then
scaled to cover the take and centre-cropped exactly as the reference is (``fit_reference``),
so depth rendered through the shot camera stays aligned with the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from flash_engine.errors import FlashError
from flash_engine.images import SIXTEEN_BIT_MODES, fit_reference
from flash_engine.layout import IMAGE_SUFFIXES, natural_key

SIXTEEN_BIT_FULL_SCALE = 65535.0
EIGHT_BIT_FULL_SCALE = 255.0
# A depth image has the reference's aspect when its sides agree with it to this fraction (a
# render at another resolution of the same camera); the take's aspect is matched to half of the
# model's size step, the rounding a take's short side gets.
REFERENCE_ASPECT_TOLERANCE = 0.01
FORMAT_HINT = "give one greyscale depth image per frame (16-bit PNG, near = bright)"


def _bad(message: str, hint: str = FORMAT_HINT) -> FlashError:
    return FlashError(message, hint, code="bad_depth")


def depth_files(folder: Path) -> list[Path]:
    """The depth images of a folder, in name order (hidden files and other files left out)."""
    if not folder.exists():
        raise _bad(f"depth folder not found: {folder}", "check the --depth path")
    if not folder.is_dir():
        raise _bad(f"--depth must be a folder of images, one per frame; {folder} is a file", FORMAT_HINT)
    files = sorted((p for p in folder.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=natural_key)
    if not files:
        raise _bad(f"depth folder {folder} has no images", FORMAT_HINT)
    return files


def _values(image: Image.Image, path: Path) -> np.ndarray:
    """A depth image's values as float32 (h, w) in 0..1 (1 = nearest)."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float32) / SIXTEEN_BIT_FULL_SCALE
    elif image.mode == "F":  # float TIFFs: already 0..1
        values = np.nan_to_num(np.asarray(image, dtype=np.float32))
    elif image.mode in ("L", "LA", "1"):
        values = np.asarray(image.getchannel(0).convert("L"), dtype=np.float32) / EIGHT_BIT_FULL_SCALE
    else:  # RGB, RGBA, palette: greyscale stored as colour is fine, a colour-mapped depth is not
        rgb = np.asarray(image.convert("RGB"))
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            raise _bad(f"depth image {path} is in colour; depth is one grey channel",
                       "save the depth as a greyscale image (16-bit PNG, near = bright), not a colour map")
        values = rgb[..., 0].astype(np.float32) / EIGHT_BIT_FULL_SCALE
    return np.clip(values, 0.0, 1.0)


def _fits(size: tuple[int, int], width: int, height: int, reference_size: tuple[int, int] | None,
          size_step: int) -> bool:
    image_w, image_h = size
    slack = size_step / 2 + 1e-6
    if abs(width * image_h / image_w - height) <= slack or abs(height * image_w / image_h - width) <= slack:
        return True
    if reference_size is None:
        return False
    aspect, reference = image_w / image_h, reference_size[0] / reference_size[1]
    return abs(aspect - reference) <= REFERENCE_ASPECT_TOLERANCE * reference


def read_depth_folder(folder: str | Path, frames: int, width: int, height: int,
                      reference_size: tuple[int, int] | None = None, size_step: int = 8) -> tuple[np.ndarray, list[str]]:
    """The depth condition of a take: float32 (frames, height, width) in 0..1, and the file names
    used. ``reference_size``: the reference image's own size (before it was fitted to the take).
    Every problem is a one-line FlashError, before any model loads."""
    folder = Path(folder).expanduser()
    files = depth_files(folder)
    if len(files) != frames:
        fix = f"give {frames} depth images (one per frame)"
        raise _bad(f"depth folder {folder} has {len(files)} images but the take has {frames} frames",
                   fix + (f", or animate {len(files)} frames (--frames {len(files)})" if len(files) >= 2 else ""))
    depth = np.empty((frames, height, width), dtype=np.float32)
    for index, path in enumerate(files):
        try:
            with Image.open(path) as image:
                image.load()
                if not _fits(image.size, width, height, reference_size, size_step):
                    wanted = f"{reference_size[0]}x{reference_size[1]}" if reference_size else f"{width}x{height}"
                    raise _bad(f"depth image {path} is {image.width}x{image.height} (aspect "
                               f"{image.width / image.height:.3f}), not the take's {width}x{height} "
                               f"({width / height:.3f})", f"render the depth through the shot camera at {wanted}")
                values = Image.fromarray(_values(image, path))  # float32: mode "F"
        except FlashError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise _bad(f"depth image {path} is not a readable image", FORMAT_HINT) from err
        fitted = fit_reference(values, width, height, Image.Resampling.BILINEAR)
        depth[index] = np.clip(np.asarray(fitted, dtype=np.float32), 0.0, 1.0)
    return depth, [path.name for path in files]


def depth_condition(depth: np.ndarray) -> np.ndarray:
    """(F, H, W) depth → (F, H, W, 3) float32: the grey image a depth ControlNet takes."""
    return np.repeat(depth[..., None], 3, axis=-1)
