"""The camera model, in numpy: where the camera is for a spec, and where world points land.

The renderer places Blender's camera with :func:`camera_matrix`; :func:`project` gives the
same pixel positions (used to check framing and by anyone who wants 2D keypoints), and
:func:`openpose_keypoints` the ground-truth 18-point OpenPose skeleton of every frame.

Pixel coordinates are continuous with pixel ``i`` covering [i, i + 1): its centre is at
i + 0.5, the frame's centre at size / 2 (Blender's principal point).
"""

from __future__ import annotations

import math

import numpy as np

from mannequin.actions import HEAD_CENTRE

LOOK_AT_HEIGHT = 1.0      # metres: the camera looks at (0, 0, LOOK_AT_HEIGHT)
FIELD_OF_VIEW = 23.0      # degrees (square frames)
NEAR_CLIP = 0.5           # metres: the camera draws nothing nearer than this


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


def project_with_depth(points: np.ndarray, azimuth: float, elevation: float, distance: float,
                       size: int) -> tuple[np.ndarray, np.ndarray]:
    """World points (..., 3) → pixel coordinates (..., 2) and depth along the view axis (...,)
    in metres (Blender's Z pass; ≤ 0 behind the camera, where the coordinates mean nothing)."""
    cam = camera_matrix(azimuth, elevation, distance)
    local = (np.asarray(points, float) - cam[:3, 3]) @ cam[:3, :3]
    depth = -local[..., 2]
    focal = 0.5 * size / math.tan(math.radians(FIELD_OF_VIEW) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = size / 2 + focal * local[..., 0] / depth
        y = size / 2 - focal * local[..., 1] / depth
    return np.stack([x, y], axis=-1), depth


def project(points: np.ndarray, azimuth: float, elevation: float, distance: float, size: int) -> np.ndarray:
    """World points (..., 3) → pixel coordinates (..., 2), x right and y down, in a size×size frame."""
    return project_with_depth(points, azimuth, elevation, distance, size)[0]


def placement(spec) -> np.ndarray:
    """The figure's placement in the world (4×4): the spec's scale and floor position."""
    out = np.diag([spec.scale, spec.scale, spec.scale, 1.0])
    out[:2, 3] = spec.position
    return out


def figure_transforms(spec) -> np.ndarray:
    """World transforms (F, segments, 4, 4) of the mannequin's segments for every frame of a spec."""
    from mannequin.actions import action_pose, clip_times, forward_kinematics

    pose = action_pose(spec.action, clip_times(spec.num_frames), spec.speed, spec.amplitude, spec.mirror)
    return placement(spec) @ forward_kinematics(pose)


def keypoints_2d(spec) -> np.ndarray:
    """Pixel positions (F, N, 2) of the mannequin's key points (joints, hands, head top, toes)."""
    from mannequin.actions import action_pose, clip_times, joint_positions

    pose = action_pose(spec.action, clip_times(spec.num_frames), spec.speed, spec.amplitude, spec.mirror)
    points = joint_positions(pose) * spec.scale
    points[..., :2] += np.asarray(spec.position)
    return project(points, spec.camera_azimuth, spec.camera_elevation, spec.camera_distance, spec.size)


# -- OpenPose keypoints ------------------------------------------------------------------------------

# The 18 body points of OpenPose (COCO) in their order; "r_" is the person's right.
OPENPOSE_POINTS = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
                   "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")
# Body points: the origin of a segment's frame (its proximal joint) or, for the wrists, the forearm's end.
_JOINT_SEGMENTS = {"r_shoulder": "r_upper_arm", "r_elbow": "r_forearm", "l_shoulder": "l_upper_arm",
                   "l_elbow": "l_forearm", "r_hip": "r_thigh", "r_knee": "r_shin", "r_ankle": "r_foot",
                   "l_hip": "l_thigh", "l_knee": "l_shin", "l_ankle": "l_foot"}
# The face has no features on the mannequin's ellipsoid head: each face point is where a fixed
# direction from the head ellipsoid's centre, in the head's frame (x = the figure's left, -y = the
# way it faces, z up), meets the ellipsoid's surface. A point is seen while the camera is within
# its angle (degrees) of the surface's outward normal there: 90° is the plain back-face test; ears
# stick out, so a face seen from the front (90° from either ear) shows both, as OpenPose does.
FACE_POINTS = {"nose": ((0.0, -1.0, -0.1), 90.0), "r_eye": ((-0.35, -1.0, 0.2), 90.0),
               "l_eye": ((0.35, -1.0, 0.2), 90.0), "r_ear": ((-1.0, 0.0, 0.1), 110.0),
               "l_ear": ((1.0, 0.0, 0.1), 110.0)}
# The head ellipsoid (the renderer builds the same one): centre in the head's frame and radii.
HEAD_ELLIPSOID_CENTRE = (HEAD_CENTRE[0], HEAD_CENTRE[1] - 0.01, HEAD_CENTRE[2])   # 1 cm forward of the head's centre
HEAD_ELLIPSOID_RADII = (0.105, 0.115, 0.125)


def face_points_local() -> tuple[np.ndarray, np.ndarray]:
    """The face points (5, 3) on the head ellipsoid in the head's frame, and their unit outward normals."""
    centre, radii = np.array(HEAD_ELLIPSOID_CENTRE), np.array(HEAD_ELLIPSOID_RADII)
    directions = np.array([direction for direction, _ in FACE_POINTS.values()])
    on_surface = directions / np.sqrt(((directions / radii) ** 2).sum(-1, keepdims=True))
    normals = on_surface / radii ** 2
    return centre + on_surface, normals / np.linalg.norm(normals, axis=-1, keepdims=True)


def openpose_world(spec) -> tuple[np.ndarray, np.ndarray]:
    """World positions (F, 18, 3) of the OpenPose points, and a mask (F, 18) of the face points
    the camera cannot see (its side of the head faces away; body points are always False)."""
    from mannequin.actions import FOREARM, SEGMENT_INDEX

    world = figure_transforms(spec)
    frames = world.shape[0]
    points = np.zeros((frames, len(OPENPOSE_POINTS), 3))
    index = {name: i for i, name in enumerate(OPENPOSE_POINTS)}
    for name, segment in _JOINT_SEGMENTS.items():
        points[:, index[name]] = world[:, SEGMENT_INDEX[segment], :3, 3]
    for side in "rl":
        wrist = world[:, SEGMENT_INDEX[f"{side}_forearm"]] @ np.array([0.0, 0.0, -FOREARM, 1.0])
        points[:, index[f"{side}_wrist"]] = wrist[:, :3]
    # OpenPose's neck is the midpoint of the shoulders (how its COCO training data defines it, and
    # what a pose from MediaPipe gets), not the rig's neck joint 5 cm higher.
    points[:, index["neck"]] = 0.5 * (points[:, index["r_shoulder"]] + points[:, index["l_shoulder"]])

    head = world[:, SEGMENT_INDEX["head"]]
    local, normals = face_points_local()
    face = [index[name] for name in FACE_POINTS]
    points[:, face] = np.einsum("fij,pj->fpi", head[:, :3, :3], local) + head[:, None, :3, 3]
    cam = camera_matrix(spec.camera_azimuth, spec.camera_elevation, spec.camera_distance)
    world_normals = np.einsum("fij,pj->fpi", head[:, :3, :3], normals)
    world_normals /= np.linalg.norm(world_normals, axis=-1, keepdims=True)   # the placement scales
    to_camera = cam[:3, 3] - points[:, face]
    cosine = (to_camera * world_normals).sum(-1) / np.linalg.norm(to_camera, axis=-1)
    limits = np.cos(np.radians([limit for _, limit in FACE_POINTS.values()]))
    hidden = np.zeros((frames, len(OPENPOSE_POINTS)), dtype=bool)
    hidden[:, face] = cosine <= limits
    return points, hidden


def openpose_keypoints(spec) -> np.ndarray:
    """The ground-truth OpenPose skeleton of every frame: (F, 18, 3) of [x, y, confidence].

    ``x, y`` are normalised to the image (0..1, y down; pixel ``i`` of a ``size``-pixel frame
    spans [i / size, (i + 1) / size), so its centre is (i + 0.5) / size). Confidence is 1 for a
    point in frame and in front of the camera, 0 otherwise; a face point (nose, eyes, ears) also
    gets 0 when its side of the head faces away from the camera (see :data:`FACE_POINTS`: a
    head seen from behind has no eyes, a profile one ear, as OpenPose draws them). Body points
    hidden behind other limbs keep 1: the rig knows where they are and a pose map draws them.
    Points behind the camera are put at (0, 0).
    """
    points, hidden = openpose_world(spec)
    pixels, depth = project_with_depth(points, spec.camera_azimuth, spec.camera_elevation,
                                       spec.camera_distance, spec.size)
    in_front = depth > NEAR_CLIP
    xy = np.where(in_front[..., None], pixels / spec.size, 0.0)
    in_frame = ((xy >= 0.0) & (xy < 1.0)).all(-1)
    confidence = (in_front & in_frame & ~hidden).astype(float)
    return np.concatenate([xy, confidence[..., None]], axis=-1)
