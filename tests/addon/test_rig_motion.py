"""Motion from the scene, without Blender (issue 18): which bone gives which OpenPose point,
where a point lands in the camera's picture, the pose file the engine reads, the pose and depth
pictures of the preview, the frames a take is read at, and the motion fields of the request."""

from __future__ import annotations

from array import array

import numpy as np
import pytest
from PIL import Image

from flash_blender import camera_frame as cf
from flash_blender import motion, pose_file, pose_maps, rig_pose
from flash_blender.camera_project import camera_view, image_point, to_camera
from flash_blender.errors import PlanError
from flash_blender.png_files import grey16_png, rgb_png, write_new
from flash_blender.request_limits import check_request
from flash_blender.timing import TakeTiming

# ---------------------------------------------------------------------------------------
# Bone names


def rigify_generated() -> set[str]:
    names = {"root", "torso", "hips", "chest", "neck", "head", "upper_arm_fk.L", "thigh_ik.R"}
    for side in "LR":
        for bone in ("upper_arm", "upper_arm.001", "forearm", "hand", "thigh", "shin", "foot", "toe", "eye", "ear"):
            name = bone.replace(".001", f".{side}.001") if ".001" in bone else f"{bone}.{side}"
            names |= {f"DEF-{name}", f"ORG-{name}"}
    names |= {f"DEF-spine{s}" for s in ("", ".001", ".002", ".003", ".004", ".005", ".006")}
    return names


def mixamo(prefix="mixamorig:") -> set[str]:
    names = {"Hips", "Spine", "Spine1", "Spine2", "Neck", "Head", "HeadTop_End"}
    for side in ("Left", "Right"):
        names |= {side + bone for bone in ("Shoulder", "Arm", "ForeArm", "Hand", "UpLeg", "Leg", "Foot", "ToeBase")}
    return {prefix + name for name in names}


def test_a_generated_rigify_rig_maps_its_deforming_bones_head_for_head():
    mapping = rig_pose.resolve("Rig", rigify_generated())
    assert mapping.preset == "rigify" and mapping.prefix == "DEF-"
    s = mapping.sources
    assert s["left_shoulder"] == rig_pose.PointSource("DEF-upper_arm.L", "HEAD")
    assert s["left_elbow"] == rig_pose.PointSource("DEF-forearm.L", "HEAD")  # not the twist segment's tail
    assert s["right_wrist"].bone == "DEF-hand.R" and s["right_ankle"].bone == "DEF-foot.R"
    assert s["neck"] == rig_pose.PointSource("DEF-spine.004", "HEAD")
    assert s["nose"] == rig_pose.PointSource("DEF-spine.006", "FACE")
    assert s["left_eye"].bone == "DEF-eye.L" and s["left_eye"].end == "HEAD"  # eye bones where the rig has them
    assert mapping.mapped == 18


def test_the_metarig_mixamo_and_auto_rig_pro_names_are_detected():
    metarig = {"spine", "spine.004", "spine.006"} | {f"{b}.{s}" for b in ("upper_arm", "forearm", "hand", "thigh",
                                                                          "shin", "foot") for s in "LR"}
    assert rig_pose.resolve("Meta", metarig).preset == "metarig"
    simple = (metarig - {"spine.004", "spine.006"}) | {"neck", "head"}
    m = rig_pose.resolve("Simple", simple)
    assert m.sources["neck"].bone == "neck" and m.sources["nose"] == rig_pose.PointSource("head", "FACE")
    for prefix in ("mixamorig:", "mixamorig1:", ""):
        m = rig_pose.resolve("Mix", mixamo(prefix))
        assert m.preset == "mixamo" and m.prefix == prefix
        assert m.sources["left_knee"] == rig_pose.PointSource(prefix + "LeftLeg", "HEAD")
        assert m.sources["right_hip"] == rig_pose.PointSource(prefix + "RightUpLeg", "HEAD")
        assert m.sources["left_eye"] == rig_pose.PointSource(prefix + "Head", "FACE")  # no eye bones: on the head
    arp = {f"{b}.{s}" for b in ("arm_stretch", "forearm_stretch", "hand", "thigh_stretch", "leg_stretch", "foot")
           for s in "lr"} | {"neck.x", "head.x", "c_eye.l"}
    m = rig_pose.resolve("ARP", arp)
    assert m.preset == "autorigpro" and m.sources["left_hip"].bone == "thigh_stretch.l"
    assert m.sources["left_eye"].bone == "c_eye.l" and m.sources["right_eye"].end == "FACE"


def test_an_unmapped_required_point_is_one_line_naming_it_and_the_fix():
    names = mixamo() - {"mixamorig:LeftArm"}
    with pytest.raises(PlanError) as err:
        rig_pose.resolve("Hero", names)
    text = str(err.value)
    assert "no bone for the left shoulder" in text and "'Hero'" in text
    assert "FLASH › Motion › Bones" in text and "mixamorig:LeftArm" in text and "\n" not in text
    # the user's table fills it
    fixed = rig_pose.resolve("Hero", names, {"left_shoulder": ("mixamorig:LeftShoulder", "TAIL")})
    assert fixed.sources["left_shoulder"] == rig_pose.PointSource("mixamorig:LeftShoulder", "TAIL")
    assert fixed.overridden == ("left_shoulder",)


def test_an_armature_with_no_known_bones_and_a_table_naming_a_missing_bone_are_refused():
    with pytest.raises(PlanError, match="none of the bone names FLASH knows.*map its bones"):
        rig_pose.resolve("Blob", {"Bone", "Bone.001"})
    with pytest.raises(PlanError, match="bone 'Nope' \\(mapped to the right hip\\) is not in armature 'Rig'"):
        rig_pose.resolve("Rig", rigify_generated(), {"right_hip": ("Nope", "HEAD")})
    with pytest.raises(PlanError, match="left wrist cannot be placed on a head bone"):
        rig_pose.resolve("Rig", rigify_generated(), {"left_wrist": ("DEF-hand.L", "FACE")})
    # a table alone maps an unknown rig
    table = {"right_shoulder": ("Bone", "HEAD"), "left_shoulder": ("Bone", "TAIL"),
             "right_hip": ("Bone.001", "HEAD"), "left_hip": ("Bone.001", "TAIL")}
    m = rig_pose.resolve("Blob", {"Bone", "Bone.001"}, table)
    assert m.preset is None and m.mapped == 4 and "your bone table" in m.describe()


def test_points_come_from_heads_and_tails_the_neck_from_the_shoulders_and_the_face_from_the_head():
    mapping = rig_pose.resolve("Mix", mixamo(""))
    # a person facing -Y, its left at +X, head bone 0.2 long from z 1.6
    bones = {"LeftArm": ((0.2, 0, 1.45), (0.45, 0, 1.45)), "RightArm": ((-0.2, 0, 1.45), (-0.45, 0, 1.45)),
             "LeftUpLeg": ((0.1, 0, 1.0), (0.1, 0, 0.55)), "RightUpLeg": ((-0.1, 0, 1.0), (-0.1, 0, 0.55)),
             "Head": ((0, 0, 1.6), (0, 0, 1.8))}
    without_neck = rig_pose.Mapping("Mix", "mixamo", "", {**mapping.sources, "neck": None})
    points = dict(zip(rig_pose.POINTS, rig_pose.world_points(without_neck, bones)))
    assert points["left_shoulder"] == (0.2, 0, 1.45) and points["left_elbow"] is None  # its bone is absent
    assert points["neck"] == pytest.approx((0, 0, 1.45))
    nose, left_eye, right_ear = points["nose"], points["left_eye"], points["right_ear"]
    assert nose == pytest.approx((0, -0.2 * 0.45, 1.6 + 0.2 * 0.25))  # forward is -Y
    assert left_eye[0] > 0 > points["right_eye"][0] and left_eye[1] < 0  # the person's left is +X
    assert right_ear == pytest.approx((-0.2 * 0.3, 0, 1.6 + 0.2 * 0.32))
    # a turned person: the face follows the shoulders, not the world axes
    turned = {name: (tuple(np.array(h)[[1, 0, 2]] * (1, -1, 1)), tuple(np.array(t)[[1, 0, 2]] * (1, -1, 1)))
              for name, (h, t) in bones.items()}  # rotated -90° about Z: now facing -X
    nose = dict(zip(rig_pose.POINTS, rig_pose.world_points(without_neck, turned)))["nose"]
    assert nose == pytest.approx((-0.2 * 0.45, 0, 1.6 + 0.2 * 0.25))


# ---------------------------------------------------------------------------------------
# Projection


def look_down_minus_y(location=(0.0, -10.0, 1.0), scale=1.0):
    """A camera at ``location`` looking along +Y (rotation X 90°), as a 4x4 world matrix."""
    return ((scale, 0, 0, location[0]), (0, 0, -scale, location[1]), (0, scale, 0, location[2]), (0, 0, 0, 1))


def test_a_point_on_the_view_axis_lands_in_the_middle_and_the_frame_edges_on_0_and_1():
    params = cf.CameraParams(lens=50, sensor_width=36, resolution_x=1920, resolution_y=1080)
    matrix = look_down_minus_y()
    assert camera_view(params, matrix, (0, 0, 1)) == pytest.approx((0.5, 0.5, 10.0))
    width, height = cf.frame_size(params, 10.0)
    assert camera_view(params, matrix, (width / 2, 0, 1 + height / 2))[:2] == pytest.approx((1.0, 1.0))
    x, y, c = image_point(params, matrix, (-width / 2, 0, 1 - height / 2 + 1e-9))
    assert (x, c) == pytest.approx((0.0, 1.0)) and y == pytest.approx(1.0)  # y runs down in the image
    # the camera object's scale changes nothing
    assert camera_view(params, look_down_minus_y(scale=3.0), (1, 2, 3)) == pytest.approx(
        camera_view(params, matrix, (1, 2, 3)))


def test_shift_ortho_and_pixel_aspect_move_the_point_as_the_frame_moves():
    base = dict(resolution_x=640, resolution_y=480)
    point = (0.7, 0.0, 1.4)
    plain = camera_view(cf.CameraParams(**base), look_down_minus_y(), point)
    shifted = camera_view(cf.CameraParams(**base, shift_x=0.25), look_down_minus_y(), point)
    assert shifted[0] == pytest.approx(plain[0] - 0.25) and shifted[1] == pytest.approx(plain[1])
    ortho = cf.CameraParams(**base, type="ORTHO", ortho_scale=4.0)
    near = camera_view(ortho, look_down_minus_y((0, -3, 1)), point)
    far = camera_view(ortho, look_down_minus_y((0, -30, 1)), point)
    assert near[:2] == pytest.approx(far[:2]) and near[0] == pytest.approx(0.5 + 0.7 / 4.0)
    wide = camera_view(cf.CameraParams(**base, pixel_aspect_x=2.0), look_down_minus_y(), point)
    # AUTO fit spans the sensor across the (now twice as wide) width: the frame is half as tall
    assert wide[0] == pytest.approx(plain[0]) and wide[1] - 0.5 == pytest.approx(2 * (plain[1] - 0.5))


def test_behind_the_camera_outside_the_frame_and_past_the_clip_range_have_confidence_0():
    params = cf.CameraParams()
    matrix = look_down_minus_y()
    assert image_point(params, matrix, (0, -20, 1))[2] == 0.0  # behind
    assert image_point(params, matrix, (50, 0, 1))[2] == 0.0  # far to the right
    assert image_point(params, matrix, (0, 0, 1))[2] == 1.0
    assert image_point(params, matrix, (0, 0, 1), clip=(0.1, 5.0))[2] == 0.0  # beyond clip end
    assert image_point(params, matrix, None) == (0.0, 0.0, 0.0)


def test_the_inverse_matches_numpy_for_a_rotated_scaled_camera():
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    m = np.eye(4)
    m[:3, :3] = q @ np.diag([2.0, 0.5, 3.0])
    m[:3, 3] = (1, -2, 3)
    point = (0.3, 0.4, -0.5)
    normalised = m.copy()
    normalised[:3, :3] = q
    want = np.linalg.inv(normalised) @ np.array([*point, 1.0])
    assert to_camera(tuple(map(tuple, m)), point) == pytest.approx(want[:3])


# ---------------------------------------------------------------------------------------
# The pose file


def test_the_pose_file_is_what_the_engines_reader_reads(tmp_path):
    engine_format = pytest.importorskip("flash_engine.pose.format")
    assert (pose_file.FORMAT, pose_file.VERSION, pose_file.BODY_POINTS) == (
        engine_format.FORMAT, engine_format.VERSION, engine_format.BODY_POINTS)
    assert tuple(rig_pose.label(p) for p in rig_pose.POINTS) == engine_format.BODY_POINT_NAMES
    assert pose_file.COORDINATE_RANGE == engine_format.COORDINATE_RANGE
    frames = [[(0.1 * (i % 10), 0.05 * i, 1.0) for i in range(18)] for _ in range(3)]
    frames[1][4] = (7.5, -30.0, 0.0)  # a hidden point far off the image: written as missing
    frames[2][0] = (1.2, 0.5, 0.0)  # just off the image: kept, with confidence 0
    path = pose_file.write_pose(tmp_path / "t.pose.json", pose_file.pose_text(frames, 64, 40, 8.0))
    seq = engine_format.read_pose_file(path)
    assert (seq.frames, seq.width, seq.height, seq.fps) == (3, 64, 40, 8.0)
    assert seq.body[0, 3].tolist() == pytest.approx([0.3, 0.15, 1.0])
    assert seq.body[1, 4].tolist() == [0.0, 0.0, 0.0]
    assert seq.body[2, 0].tolist() == pytest.approx([1.2, 0.5, 0.0])
    seq.check_for(3, 64, 40)  # a take of 3 frames at the poses' aspect
    with pytest.raises(PlanError, match="already exists"):
        pose_file.write_pose(path, pose_file.pose_text(frames, 64, 40, 8.0))
    assert engine_format.read_pose_file(path).frames == 3  # the first stays
    assert [p.name for p in tmp_path.iterdir()] == ["t.pose.json"]  # no staging file left


# ---------------------------------------------------------------------------------------
# Pictures


def test_pngs_read_back_exactly_8_bit_rgb_and_16_bit_grey(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    grey16 = np.arange(35, dtype=np.uint16).reshape(5, 7) * 1871
    write_new(tmp_path / "a.png", rgb_png(7, 5, rgb.tobytes()))
    write_new(tmp_path / "d.png", grey16_png(7, 5, array("H", grey16.ravel().tolist())))
    with Image.open(tmp_path / "a.png") as image:
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), rgb)
    with Image.open(tmp_path / "d.png") as image:
        assert image.mode.startswith("I") and np.array_equal(np.asarray(image).astype(np.uint16), grey16)
    with pytest.raises(FileExistsError):
        write_new(tmp_path / "a.png", b"")
    with pytest.raises(ValueError):
        rgb_png(7, 5, b"short")


def picture(pixels: bytearray, width: int, height: int) -> np.ndarray:
    return np.frombuffer(bytes(pixels), np.uint8).reshape(height, width, 3)


def test_the_pose_map_draws_openposes_limbs_and_points_in_their_colours():
    points = [(0.0, 0.0, 0.0)] * 18
    points[2], points[3] = (0.25, 0.5, 1.0), (0.75, 0.5, 1.0)  # right shoulder → right elbow
    points[5] = (0.5, 0.1, 0.1)  # low confidence: not drawn
    image = picture(pose_maps.draw_pose(points, 512, 256), 512, 256)
    assert image[128, 128].tolist() == list(pose_maps.COLOURS[2])  # the shoulder point, full colour
    assert image[128, 384].tolist() == list(pose_maps.COLOURS[3])
    limb = [int(c * 0.6) for c in pose_maps.COLOURS[2]]  # limb [3,4] is the third: colour index 2
    assert image[128, 256].tolist() == limb
    assert image[128 + 4, 256].tolist() == [0, 0, 0]  # half-width: 4 px per 512 px of the short side, 2 here
    assert image[128 + 1, 256].tolist() == limb
    assert not image[25, 256].any() and not image[0, 0].any()
    drawn = image.any(axis=2)
    assert drawn.sum() < 0.02 * drawn.size
    # over a background: only the drawn pixels change
    grey = bytearray([90] * (512 * 256 * 3))
    over = picture(pose_maps.draw_pose(points, 512, 256, grey), 512, 256)
    assert over[128, 256].tolist() == limb and over[0, 0].tolist() == [90, 90, 90] and grey[0] == 90


def test_depth_is_inverse_depth_over_the_take_near_bright_background_black():
    near = [2.0] * 6
    far = [4.0] + [8.0] * 5
    mask = [True] * 6
    empty = [True] * 5 + [False]
    maps = pose_maps.normalise_depth([near, far], [mask, empty])
    assert maps[0].typecode == "H" and list(maps[0]) == [65535] * 6  # the take's nearest
    assert maps[1][1] == 0 and maps[1][5] == 0  # the farthest, and nothing
    assert maps[1][0] == round((1 / 4 - 1 / 8) / (1 / 2 - 1 / 8) * 65535)  # inverse depth between
    assert list(pose_maps.depth_preview(array("H", [65535, 0]))) == [255] * 3 + [0] * 3


# ---------------------------------------------------------------------------------------
# When the scene is read, and what the request carries


@pytest.mark.parametrize("clip_fps,scene_fps", [(8, 24), (8, 25), (8, 24000 / 1001), (8, 8), (24, 12), (30, 24)])
def test_each_clip_frame_is_read_on_the_first_scene_frame_that_shows_it(clip_fps, scene_fps):
    timing = TakeTiming(frame_start=10, clip_frames=16, clip_fps=clip_fps, scene_fps=scene_fps)
    samples = timing.sample_frames()
    assert len(samples) == 16 and samples[0] == (10, 0.0)
    for k, (frame, sub) in enumerate(samples):
        if sub == 0.0 and timing.clip_frame(frame) == k:
            assert frame == 10 or timing.clip_frame(frame - 1) != k  # the first frame showing it
        else:  # shown on no scene frame: read at its own time
            assert clip_fps > scene_fps
            assert frame - 10 + sub == pytest.approx(k * scene_fps / clip_fps)
    if clip_fps == 8 and scene_fps == 24:
        assert [f for f, _ in samples] == [10 + 3 * k for k in range(16)]


def test_motion_args_are_a_request_the_engines_schema_takes(tmp_path):
    reference = tmp_path / "Scene_Cam_run_001.reference.png"
    rig = motion.MotionChoice(source=motion.RIG, rig="Hero", depth=True, pose_strength=0.8, depth_strength=0.5)
    args = motion.request_args(rig, reference)
    assert args["pose"].endswith("Scene_Cam_run_001.pose.json") and args["depth"].endswith("Scene_Cam_run_001.depth")
    base = {"image": str(reference), "out": str(tmp_path / "Scene_Cam_run_001"), "prompt": "a person runs."}
    check_request("animate", {**base, **args})
    clip = motion.MotionChoice(source=motion.CLIP, clip="/f/run.mp4", clip_start=12, pose_strength=1.0)
    args = motion.request_args(clip, reference)
    assert args == {"driving": "/f/run.mp4", "driving_start": 12, "pose_strength": 1.0}
    check_request("animate", {**base, **args})
    assert motion.request_args(motion.MotionChoice(pose_strength=1.0), reference) == {}


def test_batch_motion_and_clip_checks_are_one_line_with_the_fix(tmp_path):
    assert motion.parse_motion("rig:Hero Rig") == {"motion": "RIG", "rig": "Hero Rig"}
    assert motion.parse_motion("clip:/a/b:c.mp4") == {"motion": "CLIP", "clip": "/a/b:c.mp4"}
    assert motion.parse_motion("action") == {"motion": "ACTION"}
    with pytest.raises(PlanError, match="rig:NAME"):
        motion.parse_motion("rig:")
    with pytest.raises(PlanError, match="no rig picked.*pick an armature"):
        motion.check_rig_picked(motion.MotionChoice(source=motion.RIG), None)
    with pytest.raises(PlanError, match="'Cube' is not an armature \\(it is a mesh\\)"):
        motion.check_rig_picked(motion.MotionChoice(source=motion.RIG, rig="Cube"), "MESH")
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    with pytest.raises(PlanError, match="notes.txt is not a video \\(pick a video file"):
        motion.check_clip_path(str(text))
    with pytest.raises(PlanError, match="not found"):
        motion.check_clip_path(str(tmp_path / "gone.mp4"))
    with pytest.raises(PlanError, match="not a video Blender can read"):
        motion.check_clip(str(tmp_path / "fake.mp4"), motion.ClipInfo(0), 0)
    with pytest.raises(PlanError, match="start offset 40 is past its end \\(40 frames\\).*39 or less"):
        motion.check_clip("/f/run.mp4", motion.ClipInfo(40, 25.0), 40)
    assert motion.describe_clip(motion.ClipInfo(40, 25.0), 3) == (
        "Clip: 40 frames, 1.6 s at 25 fps; the take starts at its frame 3")
    with pytest.raises(PlanError, match="not in camera 'Cam''s view on any frame.*frames 5-16"):
        motion.check_visible([[0.0] * 18] * 4, "Hero", "Cam", (5, 16))
    motion.check_visible([[0.0] * 17 + [1.0]], "Hero", "Cam", (5, 16))


def test_the_batch_takes_motion_and_depth_flags(capsys):
    from flash_blender.batch import parse_args

    options = parse_args(["--motion", "rig:Hero", "--depth", "--frames", "4"])
    assert options.overrides == {"frames": 4, "motion": "RIG", "rig": "Hero", "depth": True}
    assert parse_args(["--motion", "clip:/f/a.mp4", "--no-depth"]).overrides == {
        "motion": "CLIP", "clip": "/f/a.mp4", "depth": False}
    assert "motion" not in parse_args([]).overrides and "depth" not in parse_args([]).overrides
    with pytest.raises(SystemExit) as stop:
        parse_args(["--motion", "dance"])
    assert stop.value.code == 2 and "rig:NAME" in capsys.readouterr().err


@pytest.mark.parametrize("size", [(512, 512), (910, 512), (512, 900)])
def test_the_preview_draws_the_engines_pose_map_at_512_on_the_short_side(size):
    draw = pytest.importorskip("flash_engine.pose.draw")
    pytest.importorskip("cv2")
    body = [(0.5, 0.2, 1), (0.5, 0.3, 1), (0.42, 0.3, 1), (0.38, 0.42, 1), (0.36, 0.55, 1), (0.58, 0.3, 1),
            (0.62, 0.42, 1), (0.66, 0.52, 1), (0.45, 0.55, 1), (0.44, 0.7, 1), (0.43, 0.85, 1), (0.55, 0.55, 1),
            (0.57, 0.7, 1), (0.6, 0.86, 1), (0.48, 0.18, 1), (0.52, 0.18, 1), (0.46, 0.2, 1), (0.54, 0.2, 0.1)]
    width, height = size
    ours = picture(pose_maps.draw_pose(body, width, height), width, height).astype(int)
    engines = draw.draw_pose_map(np.array(body), width, height).astype(int)
    drawn = ours.any(axis=2) | engines.any(axis=2)
    differ = (np.abs(ours - engines).max(axis=2) > 0) & drawn
    assert drawn.sum() > 3000 and differ.sum() < 0.05 * drawn.sum(), differ.sum() / drawn.sum()
