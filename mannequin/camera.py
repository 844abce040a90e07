"""The camera model, in numpy: where the camera is for a spec, and where world points land.

The renderer places Blender's camera with :func:`camera_matrix`; :func:`project` gives the
same pixel positions (used to check framing and by anyone who wants 2D keypoints).
"""

from __future__ import annotations

import math

import numpy as np

LOOK_AT_HEIGHT = 1.0      # metres: the camera looks at (0, 0, LOOK_AT_HEIGHT)
FIELD_OF_VIEW = 23.0      # degrees (square frames)


def camera_matrix(azimuth: float, elevation: float, distance: float) -> np.ndarray:
    """Camera-to-world 4×4 (Blender convention: the camera looks down its -Z, +Y is up).

    Azimuth 0 puts the camera in front of the figure (on -Y); positive azimuth moves it
    towards the figure's left (+X). Elevation is the angle above the look-at point.
    """
    az, el = math.radians(azimuth), math.radians(elevation)
    target = np.array([0.0, 0.0, LOOK_AT_HEIGHT])
    offset = np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])
    back = offset                                   # camera +Z points away from the target
    right = np.cross(np.array([0.0, 0.0, 1.0]), back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2] = right, up, back
    out[:3, 3] = target + distance * offset
    return out


def project(points: np.ndarray, azimuth: float, elevation: float, distance: float, size: int) -> np.ndarray:
    """World points (..., 3) → pixel coordinates (..., 2), x right and y down, in a size×size frame."""
    cam = camera_matrix(azimuth, elevation, distance)
    local = (np.asarray(points, float) - cam[:3, 3]) @ cam[:3, :3]
    depth = -local[..., 2]
    focal = 0.5 * size / math.tan(math.radians(FIELD_OF_VIEW) / 2)
    x = size / 2 + focal * local[..., 0] / depth
    y = size / 2 - focal * local[..., 1] / depth
    return np.stack([x, y], axis=-1)


def figure_transforms(spec) -> np.ndarray:
    """World transforms (F, segments, 4, 4) of the mannequin's segments for every frame of a spec."""
    from mannequin.actions import action_pose, clip_times, forward_kinematics

    pose = action_pose(spec.action, clip_times(spec.num_frames), spec.speed, spec.amplitude, spec.mirror)
    placement = np.diag([spec.scale, spec.scale, spec.scale, 1.0])
    placement[:2, 3] = spec.position
    return placement @ forward_kinematics(pose)


def keypoints_2d(spec) -> np.ndarray:
    """Pixel positions (F, N, 2) of the mannequin's key points (joints, hands, head top, toes)."""
    from mannequin.actions import action_pose, clip_times, joint_positions

    pose = action_pose(spec.action, clip_times(spec.num_frames), spec.speed, spec.amplitude, spec.mirror)
    points = joint_positions(pose) * spec.scale
    points[..., :2] += np.asarray(spec.position)
    return project(points, spec.camera_azimuth, spec.camera_elevation, spec.camera_distance, spec.size)
