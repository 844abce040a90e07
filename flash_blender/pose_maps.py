"""The pictures Preview Motion shows and the depth the engine gets: OpenPose maps of a take's
poses, and the shot's depth normalised over the take.

Pure Python (no bpy, no numpy): pictures are ``bytearray`` RGB rows (row 0 at the top), depth
maps ``array('H')``. The maps follow the convention public OpenPose ControlNets were trained on
(controlnet_aux's ``draw_bodypose``, see /work/shared/motion-control.md): 17 limbs in OpenPose's
order, each a filled ellipse from point to point in its colour × 0.6, then every point a filled
circle in its full colour, half-width and radius 4 px per 512 px of the short side, on black; a
point with low confidence is not drawn, nor its limbs. The engine draws the maps it conditions
on itself (``flash_engine.pose.draw``, with OpenCV, which Blender lacks) from the same pose
file: this drawing is for the artist's eyes, and a test holds it to the engine's.

Depth as depth ControlNets expect it (MiDaS' convention): inverse depth along the view axis,
normalised over the whole take (not per frame, so the maps do not flicker), the nearest point 1,
the farthest 0, empty background 0; 16-bit.
"""

from __future__ import annotations

import math
from array import array

# controlnet_aux open_pose/util.py: limbs as 1-based point pairs, in drawing order, and colours.
LIMBS = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
         (2, 1), (1, 15), (15, 17), (1, 16), (16, 18))
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
LIMB_SHADE = 0.6
STICK_WIDTH = 4  # px per REFERENCE_SIDE of the short side: limbs' half-width, points' radius
REFERENCE_SIDE = 512
OUTLINE = 0.5  # a filled OpenCV ellipse covers the pixels its outline touches: half a pixel beyond its axes
MIN_CONFIDENCE = 0.3  # the engine's: below it a point is missing (flash_engine.pose.format)
DEPTH_MAX = 65535


def black(width: int, height: int) -> bytearray:
    return bytearray(width * height * 3)


def _stroke(width: int, height: int) -> float:
    return max(1.0, STICK_WIDTH * min(width, height) / REFERENCE_SIDE)


def _fill(canvas: bytearray, width: int, height: int, inside, colour, box) -> None:
    """Paint the pixels in ``box`` (x0, y0, x1, y1) that ``inside(x, y)`` accepts; a pixel is at
    its integer coordinates, as OpenCV has it."""
    x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x1, y1 = min(width, math.ceil(box[2]) + 1), min(height, math.ceil(box[3]) + 1)
    value = bytes(colour)
    for y in range(y0, y1):
        row = y * width
        for x in range(x0, x1):
            if inside(x, y):
                start = (row + x) * 3
                canvas[start:start + 3] = value


def draw_pose(points, width: int, height: int, canvas: bytearray | None = None) -> bytearray:
    """The OpenPose map of ``points`` (18 × [x, y, confidence], fractions of the image), drawn
    on ``canvas`` (a copy; black when None). The geometry is controlnet_aux's as OpenCV draws
    it (whole-pixel centres, axes and angles; a filled outline covers half a pixel more), so at
    512 px on the short side it is the engine's map but for a few edge pixels; smaller, its
    strokes stay at least a pixel wide where the engine's map averages them down."""
    canvas = black(width, height) if canvas is None else bytearray(canvas)
    xy = [(p[0] * width, p[1] * height) for p in points]
    seen = [p[2] >= MIN_CONFIDENCE for p in points]
    half = _stroke(width, height)
    for index, (a, b) in enumerate(LIMBS):
        a, b = a - 1, b - 1
        if not (seen[a] and seen[b]):
            continue
        (xa, ya), (xb, yb) = xy[a], xy[b]
        cx, cy = int((xa + xb) / 2), int((ya + yb) / 2)
        major, minor = int(math.hypot(xa - xb, ya - yb) / 2) + OUTLINE, half + OUTLINE
        angle = math.radians(int(math.degrees(math.atan2(ya - yb, xa - xb))))
        ux, uy = math.cos(angle), math.sin(angle)

        def inside(x, y, cx=cx, cy=cy, ux=ux, uy=uy, major=major, minor=minor):
            ox, oy = x - cx, y - cy
            u = (ox * ux + oy * uy) / major
            v = (-ox * uy + oy * ux) / minor
            return u * u + v * v <= 1.0

        colour = tuple(int(c * LIMB_SHADE) for c in COLOURS[index])
        _fill(canvas, width, height, inside, colour, (cx - major, cy - major, cx + major, cy + major))
    for index, (px, py) in enumerate(xy):
        if seen[index]:
            px, py = int(px), int(py)
            _fill(canvas, width, height, lambda x, y, px=px, py=py: (x - px) ** 2 + (y - py) ** 2 <= half * half,
                  COLOURS[index], (px - half, py - half, px + half, py + half))
    return canvas


def normalise_depth(depths: list, covered: list) -> list[array]:
    """16-bit maps from per-frame depth along the view axis (floats, row-major) and which
    pixels hit something (truthy): inverse depth over the take, nearest → 65535, farthest → 0."""
    inverse = [[1.0 / d if c and d > 0 else None for d, c in zip(depth, mask)] for depth, mask in zip(depths, covered)]
    values = [v for frame in inverse for v in frame if v is not None]
    if not values:
        return [array("H", bytes(2 * len(depth))) for depth in depths]
    near, far = max(values), min(values)
    span = near - far
    maps = []
    for frame in inverse:
        maps.append(array("H", (0 if v is None else DEPTH_MAX if span <= 0 else
                                round(min(1.0, max(0.0, (v - far) / span)) * DEPTH_MAX) for v in frame)))
    return maps


def depth_preview(depth_map: array) -> bytearray:
    """A 16-bit depth map as an 8-bit grey RGB picture (for the preview plane)."""
    grey = bytearray()
    for value in depth_map:
        level = (value * 255 + DEPTH_MAX // 2) // DEPTH_MAX
        grey += bytes((level, level, level))
    return grey
