"""Pose maps as public OpenPose ControlNets were trained on them (controlnet_aux's ``draw_bodypose``,
``draw_handpose``, ``draw_facepose``).

The convention (docs/pose-format.md): a black image; the 17 limbs first, each a filled ellipse
from point to point of half-width 4 in its colour x 0.6, then the 18 points as filled circles
of radius 4 in their full colour; then hands (20 edges of thickness 2 in HSV(i/20, 1, 1),
points of radius 4 in blue) and face points (white, radius 3). Sizes are for a picture whose
short side is 512 px. controlnet_aux draws its colour list into the array it hands back as an
RGB image, so the colours here are RGB as listed.

The map is drawn at a size whose short side is 512 px and then resized to the take's size, as
OpenposeDetector does (it draws at its detect resolution, 512, and resizes to the output's):
the picture then equals what the public nets saw at 512 px, with its integer ellipse outlines,
rather than widths scaled and rounded per size (at 64 px a scaled half-width of 0.5 px would
round to 0 or 1 px). Enlarging is bilinear, as controlnet_aux's final resize; shrinking is
area-averaged, as its own ``resize_image`` shrinks, so thin limbs fade instead of breaking up.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from flash_engine.pose.format import HAND_POINT_COUNT, MIN_CONFIDENCE, PoseSequence

DRAW_SHORT_SIDE = 512
STICK_WIDTH = 4  # a limb's half-width
JOINT_RADIUS = 4
LIMB_SHADE = 0.6
# The limbs as pairs of OpenPose points (0-based), in the order they are drawn.
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
# RGB, one per limb (in LIMBS' order) and one per point.
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
# A hand: the wrist (0) to each finger's four points, thumb first.
HAND_EDGES = tuple(edge for finger in range(5)
                   for edge in ((0, 4 * finger + 1),) + tuple((4 * finger + k, 4 * finger + k + 1) for k in (1, 2, 3)))
HAND_LINE_THICKNESS = 2
HAND_POINT_RADIUS = 4
HAND_POINT_COLOUR = (0, 0, 255)
FACE_POINT_RADIUS = 3
FACE_POINT_COLOUR = (255, 255, 255)


def hand_edge_colour(index: int) -> tuple[float, float, float]:
    """Edge ``index``'s colour, HSV(index / 20, 1, 1) as 0..255 RGB (OpenCV rounds it when drawing)."""
    return tuple(255.0 * c for c in colorsys.hsv_to_rgb(index / len(HAND_EDGES), 1.0, 1.0))


def drawing_size(width: int, height: int) -> tuple[int, int]:
    """The (width, height) a map for a ``width`` x ``height`` take is drawn at: short side 512."""
    scale = DRAW_SHORT_SIDE / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _pixel(point, width: int, height: int) -> tuple[int, int]:
    return int(point[0] * width), int(point[1] * height)


def _draw_body(canvas: np.ndarray, body: np.ndarray, min_confidence: float) -> None:
    import cv2

    height, width = canvas.shape[:2]
    found = body[:, 2] >= min_confidence
    for (a, b), colour in zip(LIMBS, COLOURS):
        if not (found[a] and found[b]):
            continue
        xs, ys = body[[a, b], 0] * width, body[[a, b], 1] * height
        length = math.hypot(xs[0] - xs[1], ys[0] - ys[1])
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        outline = cv2.ellipse2Poly((int(xs.mean()), int(ys.mean())), (int(length / 2), STICK_WIDTH), int(angle),
                                   0, 360, 1)
        cv2.fillConvexPoly(canvas, outline, [int(c * LIMB_SHADE) for c in colour])
    for point, colour, visible in zip(body, COLOURS, found):
        if visible:
            cv2.circle(canvas, _pixel(point, width, height), JOINT_RADIUS, colour, thickness=-1)


def _draw_hand(canvas: np.ndarray, hand: np.ndarray, min_confidence: float) -> None:
    import cv2

    height, width = canvas.shape[:2]
    found = hand[:, 2] >= min_confidence
    for index, (a, b) in enumerate(HAND_EDGES):
        if found[a] and found[b]:
            cv2.line(canvas, _pixel(hand[a], width, height), _pixel(hand[b], width, height),
                     hand_edge_colour(index), thickness=HAND_LINE_THICKNESS)
    for point, visible in zip(hand, found):
        if visible:
            cv2.circle(canvas, _pixel(point, width, height), HAND_POINT_RADIUS, HAND_POINT_COLOUR, thickness=-1)


def _draw_face(canvas: np.ndarray, face: np.ndarray, min_confidence: float) -> None:
    import cv2

    height, width = canvas.shape[:2]
    for point in face:
        if point[2] >= min_confidence:
            cv2.circle(canvas, _pixel(point, width, height), FACE_POINT_RADIUS, FACE_POINT_COLOUR, thickness=-1)


def draw_pose_map(body: np.ndarray, width: int, height: int, hands: np.ndarray | None = None,
                  face: np.ndarray | None = None, min_confidence: float = MIN_CONFIDENCE) -> np.ndarray:
    """One frame's map: uint8 (height, width, 3) RGB from normalised (18, 3) body points,
    optional (2, 21, 3) hands and (K, 3) face points."""
    import cv2

    draw_w, draw_h = drawing_size(width, height)
    canvas = np.zeros((draw_h, draw_w, 3), dtype=np.uint8)
    _draw_body(canvas, np.asarray(body, dtype=np.float64), min_confidence)
    if hands is not None:
        for hand in np.asarray(hands, dtype=np.float64)[::-1]:  # left, then right, as draw_poses does
            _draw_hand(canvas, hand.reshape(HAND_POINT_COUNT, 3), min_confidence)
    if face is not None:
        _draw_face(canvas, np.asarray(face, dtype=np.float64), min_confidence)
    if (draw_w, draw_h) == (width, height):
        return canvas
    shrink = width * height < draw_w * draw_h
    return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def draw_pose_maps(seq: PoseSequence, width: int, height: int, *, hands: bool = True, face: bool = True,
                   min_confidence: float = MIN_CONFIDENCE) -> np.ndarray:
    """The pose map of every frame: uint8 (F, height, width, 3) RGB, what controlnet_aux's
    OpenposeDetector returns for those keypoints. Points below ``min_confidence`` are not drawn,
    nor the limbs that touch them. ``hands`` / ``face``: draw them when the poses have them."""
    return np.stack([
        draw_pose_map(seq.body[i], width, height,
                      hands=seq.hands[i] if hands and seq.hands is not None else None,
                      face=seq.face[i] if face and seq.face is not None else None,
                      min_confidence=min_confidence)
        for i in range(seq.frames)])
