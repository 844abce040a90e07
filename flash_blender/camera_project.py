"""Where a world-space point lands in a camera's picture, and whether the camera sees it.

Pure Python (no bpy). :func:`camera_view` is Blender's ``world_to_camera_view``
(``bpy_extras.object_utils``) on :mod:`camera_frame`'s frame, so lens shift, sensor fit,
orthographic cameras and the pixel aspect are those of the render: x from 0 (left) to 1
(right), y from 0 (bottom) to 1 (top), and the depth along the view axis. :func:`image_point`
turns that into an image keypoint (y down, as pose files have it) with a confidence: 0 for a
point behind the camera, outside the picture or outside the clipping range, else 1 (the
Blender side lowers it to :data:`OCCLUDED` where the set hides the point).
"""

from __future__ import annotations

import math

from .camera_frame import ORTHOGRAPHIC, CameraParams, frame_corners

Vec3 = tuple[float, float, float]
Matrix4 = tuple  # 4 rows of 4 numbers, as ``tuple(map(tuple, obj.matrix_world))`` gives them
VISIBLE, HIDDEN = 1.0, 0.0
OCCLUDED = 0.1  # in the picture but behind something else: below the engine's 0.3, so not drawn


def _normalized_inverse(matrix: Matrix4) -> tuple:
    """The inverse of ``matrix`` with its axes scaled to length 1 (``Matrix.normalized()
    .inverted()``: a camera's scale does not change what it sees)."""
    columns = []
    for j in range(3):
        axis = [matrix[i][j] for i in range(3)]
        length = math.sqrt(sum(a * a for a in axis)) or 1.0
        columns.append([a / length for a in axis])
    m = [[columns[j][i] for j in range(3)] for i in range(3)]  # rows of the normalised 3x3
    det = (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
           + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))
    if abs(det) < 1e-15:
        raise ValueError("the camera's matrix is singular (a zero scale)")
    inv = [[(m[(j + 1) % 3][(i + 1) % 3] * m[(j + 2) % 3][(i + 2) % 3]
             - m[(j + 1) % 3][(i + 2) % 3] * m[(j + 2) % 3][(i + 1) % 3]) / det for j in range(3)] for i in range(3)]
    t = [matrix[i][3] for i in range(3)]
    translation = [-sum(inv[i][k] * t[k] for k in range(3)) for i in range(3)]
    return inv, translation


def to_camera(matrix_world: Matrix4, point: Vec3) -> Vec3:
    """``point`` in the camera's own space (it looks down -Z, +Y up)."""
    inv, translation = _normalized_inverse(matrix_world)
    return tuple(sum(inv[i][k] * point[k] for k in range(3)) + translation[i] for i in range(3))


def view_ray(params: CameraParams, matrix_world: Matrix4, point: Vec3) -> tuple[Vec3, Vec3, float]:
    """The ray the camera sees ``point`` along: (origin, unit direction, distance to the point).
    A perspective camera's rays start at its centre, an orthographic one's on its own plane."""
    inv, _ = _normalized_inverse(matrix_world)
    forward = tuple(-inv[2][k] for k in range(3))  # the camera's -Z axis in world space (rows of inv: axes)
    if params.type == ORTHOGRAPHIC:
        depth = -to_camera(matrix_world, point)[2]
        return tuple(p - f * depth for p, f in zip(point, forward)), forward, depth
    origin = tuple(matrix_world[i][3] for i in range(3))
    offset = tuple(p - o for p, o in zip(point, origin))
    distance = math.sqrt(sum(v * v for v in offset)) or 1e-12
    return origin, tuple(v / distance for v in offset), distance


def camera_view(params: CameraParams, matrix_world: Matrix4, point: Vec3) -> Vec3:
    """``world_to_camera_view``: (x, y, depth), x and y from the frame's bottom-left corner."""
    x, y, z = to_camera(matrix_world, point)
    depth = -z
    (right, top, _), _, (left, bottom, _), _ = frame_corners(params, 1.0)
    if params.type != ORTHOGRAPHIC:
        if depth == 0.0:
            return (0.5, 0.5, 0.0)
        x, y = x / depth, y / depth  # the frame at distance 1 scaled to the point's depth
    return ((x - left) / (right - left), (y - bottom) / (top - bottom), depth)


def image_point(params: CameraParams, matrix_world: Matrix4, point: Vec3 | None,
                clip: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """``point`` as an image keypoint [x, y down, confidence]. A point the camera cannot show
    (behind it, out of the picture, nearer than ``clip[0]`` or beyond ``clip[1]``, or None)
    has confidence 0."""
    if point is None:
        return (0.0, 0.0, HIDDEN)
    x, y, depth = camera_view(params, matrix_world, point)
    image = (x, 1.0 - y)
    inside = 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0
    in_range = depth > 0 and (clip is None or clip[0] <= depth <= clip[1])
    return (*image, VISIBLE if inside and in_range else HIDDEN)
