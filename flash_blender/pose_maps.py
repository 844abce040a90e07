"""The pictures Preview Motion shows: OpenPose maps of a take's poses, and its depth.

numpy only (Blender ships it). The maps follow the convention public OpenPose ControlNets were
trained on (controlnet_aux's ``draw_bodypose``, see /work/shared/motion-control.md): 17 limbs
in OpenPose's order, each a filled ellipse from point to point in its colour × 0.6, then every
point a filled circle in its full colour, half-width and radius 4 px per 512 px of the short
side, on black; a point with low confidence is not drawn, nor its limbs. The engine draws the
maps it conditions on itself, from the same pose file: this preview is for the artist's eyes.

Depth: the shot's depth along the view axis per pixel, as depth ControlNets expect it (MiDaS'
convention): inverse depth normalised over the whole take (not per frame, so the maps do not
flicker), the nearest point 1, the farthest 0, empty background 0; 16-bit.
"""

from __future__ import annotations

import numpy as np

# controlnet_aux open_pose/util.py: limbs as 1-based point pairs, in drawing order, and colours.
LIMBS = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
         (2, 1), (1, 15), (15, 17), (1, 16), (16, 18))
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
LIMB_SHADE = 0.6
STICK_WIDTH = 4  # px per REFERENCE_SIDE of the short side: limbs' half-width, points' radius
REFERENCE_SIDE = 512
MIN_CONFIDENCE = 0.3  # the engine's: below it a point is missing (flash_engine.pose.format)
DEPTH_MAX = 65535


def _stroke(width: int, height: int) -> float:
    return max(1.0, STICK_WIDTH * min(width, height) / REFERENCE_SIDE)


def _fill(canvas: np.ndarray, inside, colour, box) -> None:
    """Paint the pixels of ``box`` (x0, y0, x1, y1, clipped) whose centres ``inside`` accepts."""
    height, width = canvas.shape[:2]
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(width, int(np.ceil(box[2])) + 1), min(height, int(np.ceil(box[3])) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    ys, xs = np.mgrid[y0:y1, x0:x1]
    mask = inside(xs + 0.5, ys + 0.5)
    canvas[y0:y1, x0:x1][mask] = colour


def draw_pose(points, width: int, height: int) -> np.ndarray:
    """uint8 (height, width, 3): ``points`` (18 × [x, y, confidence], fractions of the image)."""
    canvas = np.zeros((height, width, 3), np.uint8)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    xy = pts[:, :2] * (width, height)
    seen = pts[:, 2] >= MIN_CONFIDENCE
    half = _stroke(width, height)
    for index, (a, b) in enumerate(LIMBS):
        a, b = a - 1, b - 1
        if not (seen[a] and seen[b]):
            continue
        centre = (xy[a] + xy[b]) / 2
        along = xy[b] - xy[a]
        length = float(np.hypot(*along))
        major = max(length / 2, 0.5)
        unit = along / length if length > 0 else np.array([1.0, 0.0])

        def inside(x, y, centre=centre, unit=unit, major=major):
            dx, dy = x - centre[0], y - centre[1]
            u = (dx * unit[0] + dy * unit[1]) / major
            v = (-dx * unit[1] + dy * unit[0]) / half
            return u * u + v * v <= 1.0

        reach = major + half
        colour = tuple(int(c * LIMB_SHADE) for c in COLOURS[index])
        _fill(canvas, inside, colour, (centre[0] - reach, centre[1] - reach, centre[0] + reach, centre[1] + reach))
    for index in range(len(pts)):
        if not seen[index]:
            continue
        cx, cy = xy[index]
        _fill(canvas, lambda x, y, cx=cx, cy=cy: (x - cx) ** 2 + (y - cy) ** 2 <= half * half, COLOURS[index],
              (cx - half, cy - half, cx + half, cy + half))
    return canvas


def normalise_depth(depths: list, masks: list) -> list[np.ndarray]:
    """uint16 maps from per-frame depth along the view axis (float (H, W)) and masks of the
    pixels that hit something: inverse depth over the take, nearest 1 → 65535, farthest 0."""
    inverse = [np.where(mask & (depth > 0), 1.0 / np.maximum(depth, 1e-12), np.nan)
               for depth, mask in zip(depths, masks)]
    values = np.concatenate([inv[np.isfinite(inv)] for inv in inverse]) if inverse else np.array([])
    if values.size == 0:
        return [np.zeros(np.shape(depth), np.uint16) for depth in depths]
    near, far = float(values.max()), float(values.min())
    span = near - far
    maps = []
    for inv in inverse:
        scaled = np.ones_like(inv) if span <= 0 else (inv - far) / span
        scaled = np.where(np.isfinite(inv), scaled, 0.0)
        maps.append(np.round(np.clip(scaled, 0.0, 1.0) * DEPTH_MAX).astype(np.uint16))
    return maps


def depth_preview(depth_map: np.ndarray) -> np.ndarray:
    """A 16-bit depth map as an 8-bit grey RGB picture (for the preview plane)."""
    grey = (depth_map.astype(np.float64) / DEPTH_MAX * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def overlay(background: np.ndarray, pose_map: np.ndarray) -> np.ndarray:
    """The pose map's drawn pixels over ``background`` (both uint8 (H, W, 3))."""
    drawn = pose_map.any(axis=2, keepdims=True)
    return np.where(drawn, pose_map, background)
