"""Motion-control inputs for tests: a ControlNet folder for ``tiny``, pose files, depth folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# A standing person in OpenPose's 18-point order, normalised to the image (x right, y down).
STANDING = np.array([
    [0.50, 0.15], [0.50, 0.25], [0.42, 0.25], [0.38, 0.40], [0.36, 0.55], [0.58, 0.25], [0.62, 0.40],
    [0.64, 0.55], [0.45, 0.55], [0.45, 0.72], [0.45, 0.90], [0.55, 0.55], [0.55, 0.72], [0.55, 0.90],
    [0.48, 0.13], [0.52, 0.13], [0.46, 0.14], [0.54, 0.14]])


def save_tiny_controlnet(folder: Path, seed: int = 1, **config_changes) -> Path:
    """A ControlNet for ``tiny`` saved as diffusers does (safetensors); random output convolutions
    so it steers. ``config_changes``: build it for another UNet (e.g. cross_attention_dim=16)."""
    from flash_engine.models.controlnet import new_controlnet
    from flash_engine.models.tiny import tiny_parts

    unet2d = tiny_parts()["unet2d"]
    if config_changes:
        from diffusers import UNet2DConditionModel

        unet2d = UNet2DConditionModel(**{**dict(unet2d.config), **config_changes})
    new_controlnet(unet2d, seed=seed).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def moving_poses(frames: int, width: int, height: int, step: float = 0.03):
    """A person walking to the right, one pose per frame."""
    from flash_engine.pose.format import PoseSequence

    body = np.zeros((frames, 18, 3))
    for frame in range(frames):
        body[frame, :, :2] = STANDING + [step * frame, 0.0]
        body[frame, :, 2] = 1.0
    return PoseSequence(body=body, width=width, height=height, fps=8.0)


def write_poses(path: Path, frames: int, width: int, height: int) -> Path:
    from flash_engine.pose.format import write_pose_file

    return write_pose_file(moving_poses(frames, width, height), path)


def write_depth(folder: Path, frames: int, width: int, height: int, bits: int = 16, names=None) -> Path:
    """Depth images, near = bright: a bright disc (near) moving right over a far gradient."""
    folder.mkdir(parents=True, exist_ok=True)
    full = 65535 if bits == 16 else 255
    ys, xs = np.mgrid[0:height, 0:width]
    for frame in range(frames):
        depth = 0.2 + 0.3 * ys / max(1, height - 1)
        disc = (xs - (0.3 + 0.1 * frame) * width) ** 2 + (ys - height / 2) ** 2 < (height / 4) ** 2
        depth[disc] = 0.9
        values = np.round(depth * full).astype(np.uint16 if bits == 16 else np.uint8)
        name = names[frame] if names else f"depth_{frame + 1}.png"
        Image.fromarray(values).save(folder / name)
    return folder
