"""Where a camera's frame is: the four corners of the rendered image at a distance.

Pure Python (no bpy), so plain pytest checks it; a bpy test cross-checks it against
Blender's own ``Camera.view_frame``. It follows Blender's view-plane rules
(``BKE_camera_params_compute_viewplane``):

- the frame's aspect is ``resolution_x * pixel_aspect_x : resolution_y * pixel_aspect_y``
  (the resolution percentage does not change it);
- the sensor fit picks the dimension the sensor (or the orthographic scale) spans:
  AUTO fits the longer side with ``sensor_width``; HORIZONTAL fits the width with
  ``sensor_width``; VERTICAL fits the height with ``sensor_height``;
- lens shift moves the frame by ``shift × (the fitted dimension's full size)`` on both axes.

Corners are in the camera's local space (it looks down -Z, +Y up), in Blender's
``view_frame`` order: top-right, bottom-right, bottom-left, top-left.
"""

from __future__ import annotations

from dataclasses import dataclass

Vector3 = tuple[float, float, float]

PERSPECTIVE, ORTHOGRAPHIC = "PERSP", "ORTHO"
FITS = ("AUTO", "HORIZONTAL", "VERTICAL")


@dataclass(frozen=True)
class CameraParams:
    """The camera data and render settings the frame depends on (Blender's names and units)."""

    type: str = PERSPECTIVE  # PERSP or ORTHO (PANO has no flat frame)
    lens: float = 50.0  # mm
    sensor_width: float = 36.0  # mm
    sensor_height: float = 24.0  # mm
    sensor_fit: str = "AUTO"
    shift_x: float = 0.0
    shift_y: float = 0.0
    ortho_scale: float = 6.0
    resolution_x: int = 1920
    resolution_y: int = 1080
    pixel_aspect_x: float = 1.0
    pixel_aspect_y: float = 1.0

    def __post_init__(self):
        if self.type not in (PERSPECTIVE, ORTHOGRAPHIC):
            raise ValueError(f"camera type {self.type!r} has no flat frame (use a perspective or orthographic camera)")
        if self.sensor_fit not in FITS:
            raise ValueError(f"unknown sensor fit {self.sensor_fit!r}")
        if min(self.resolution_x, self.resolution_y, self.pixel_aspect_x, self.pixel_aspect_y) <= 0:
            raise ValueError("resolution and pixel aspect must be positive")
        if self.type == PERSPECTIVE and self.lens <= 0:
            raise ValueError("lens must be positive")

    @property
    def aspect(self) -> tuple[float, float]:
        """The frame's width and height in display units (pixels × pixel aspect)."""
        return self.resolution_x * self.pixel_aspect_x, self.resolution_y * self.pixel_aspect_y

    @property
    def fit(self) -> str:
        """HORIZONTAL or VERTICAL: which frame dimension the sensor spans."""
        if self.sensor_fit != "AUTO":
            return self.sensor_fit
        width, height = self.aspect
        return "HORIZONTAL" if width >= height else "VERTICAL"

    @property
    def sensor_size(self) -> float:
        return self.sensor_height if self.sensor_fit == "VERTICAL" else self.sensor_width


def fitted_extent(params: CameraParams, distance: float) -> float:
    """Full size of the fitted dimension of the frame at ``distance`` in front of the camera."""
    if params.type == ORTHOGRAPHIC:
        return params.ortho_scale
    return distance * params.sensor_size / params.lens


def frame_size(params: CameraParams, distance: float) -> tuple[float, float]:
    """Width and height of the frame at ``distance`` (orthographic: the same at any distance)."""
    extent = fitted_extent(params, distance)
    width, height = params.aspect
    if params.fit == "HORIZONTAL":
        return extent, extent * height / width
    return extent * width / height, extent


def frame_corners(params: CameraParams, distance: float) -> list[Vector3]:
    """The frame's corners at ``distance`` in front of the camera, in camera space,
    ordered like ``Camera.view_frame``: top-right, bottom-right, bottom-left, top-left."""
    if distance <= 0:
        raise ValueError("distance must be positive (in front of the camera)")
    width, height = frame_size(params, distance)
    extent = fitted_extent(params, distance)
    dx, dy = params.shift_x * extent, params.shift_y * extent
    right, left = dx + width / 2, dx - width / 2
    top, bottom = dy + height / 2, dy - height / 2
    z = -distance
    return [(right, top, z), (right, bottom, z), (left, bottom, z), (left, top, z)]


def view_frame_depth(params: CameraParams) -> float:
    """The distance at which Blender's ``Camera.view_frame`` (draw size 1) puts its corners:
    ``lens / sensor`` for a perspective camera, 1 for an orthographic one."""
    if params.type == ORTHOGRAPHIC:
        return 1.0
    return params.lens / params.sensor_size


def clamp_distance(distance: float, clip_start: float, clip_end: float) -> float:
    """Keep the plane inside the camera's clipping range (else it would not render)."""
    low, high = clip_start * 1.001, clip_end * 0.999
    if low >= high:
        return (clip_start + clip_end) / 2
    return min(max(distance, low), high)


def frame_fit(base: CameraParams, now: CameraParams, distance: float) -> tuple[float, float, float, float]:
    """How a plane built for ``base``'s frame at ``distance`` maps onto ``now``'s frame at the
    same distance: ``(scale_x, scale_y, offset_x, offset_y)`` in camera space, so that
    ``corner_now = offset + scale * corner_base`` (a zoom, a shift or a sensor change)."""
    (r0, t0, _), _, (l0, b0, _), _ = frame_corners(base, distance)
    (r1, t1, _), _, (l1, b1, _), _ = frame_corners(now, distance)
    scale_x, scale_y = (r1 - l1) / (r0 - l0), (t1 - b1) / (t0 - b0)
    return scale_x, scale_y, l1 - scale_x * l0, b1 - scale_y * b0
