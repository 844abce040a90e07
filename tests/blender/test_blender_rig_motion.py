"""Motion from the scene, for real (issue 18): the built extension in Blender (the bpy 5.0.1
wheel, background mode, a throw-away user directory).

One Blender process (``scenario``) builds a Rigify-named and a Mixamo-named armature, animated
through keys, a driver, a constraint and (the Mixamo one) an NLA strip, and cameras with lens
shift and an animated lens, an orthographic one, one at a 2:1 pixel aspect and one facing away.
It reads the rigs the add-on's way and Blender's own (``world_to_camera_view`` of the evaluated
bones), animates a take with Rig and Depth against a stand-in engine that writes frames, previews
the motion, runs a two-camera batch and tries the bad inputs. The tests check its record.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bpy") is None,
                                reason="needs the bpy 5.0.1 wheel (the test extra)")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # this file also runs as a script inside Blender's process
from tests.support.blender_harness import (  # noqa: E402
    ScenarioRecord, addon, call, install_extension, run_scenario, scenario_part, use_local_engine,
)

TOLERANCE = 1e-4
TAKE = {"frames": 4, "steps": 1, "long_side": 64, "output": 'BOTH'}
TAKE_START = 5  # 4 clip frames at 8 fps in a 24 fps scene: read on scene frames 5, 8, 11, 14
# The take camera's cards: (name, distance from the camera, x across the view, size)
CARDS = (("NearCard", 3.0, -0.6, 0.5), ("MidCard", 5.0, 1.6, 0.8), ("FarWall", 10.0, 0.0, 30.0))


# ---------------------------------------------------------------------------------------
# pytest side


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> dict:
    return run_scenario(__file__, tmp_path_factory.mktemp("blender-rig-motion"), timeout=900)


part = scenario_part


def test_rigify_and_mixamo_rigs_project_as_world_to_camera_view_on_every_frame(record):
    cases = part(record, "projection")
    assert {(c["rig"], c["camera"]) for c in cases} >= {(rig, cam) for rig in ("Rigify", "Mixamo")
                                                        for cam in ("Shifted", "Ortho", "Aspect2", "Fast")}
    for case in cases:
        assert case["preset"] == {"Rigify": "rigify", "Mixamo": "mixamo"}[case["rig"]], case
        assert case["frames"] == case["expected_frames"] and case["compared"] >= 14 * case["frames"], case
        assert case["max_error"] <= TOLERANCE, case
        assert case["visible"] == case["expected_visible"], case  # the same points in and out of the picture
        # the evaluated pose moved: keys, driver, constraint (and the Mixamo NLA strip) were read
        assert case["moved"] > 0.05, case


def test_a_point_behind_the_camera_has_confidence_0_and_an_offscreen_rig_is_refused(record):
    behind = part(record, "behind")
    assert behind["all_behind"] and behind["confidences"] == [0.0] * 18 * behind["frames"]
    bad = part(record, "bad")["offscreen"]
    assert bad["result"] == ["CANCELLED"] and "is not in camera 'Away''s view on any frame" in bad["error"]
    assert bad["one_line"] and not bad["submitted"] and not bad["new_files"], bad


def test_joints_the_set_hides_get_low_confidence_and_the_characters_own_body_hides_none(record):
    seen = part(record, "occlusion")
    for point in ("right_hip", "left_hip", "right_knee", "left_knee", "right_ankle", "left_ankle"):
        assert seen[point] == [0.1], (point, seen[point])  # behind the low wall
    for point in ("neck", "right_shoulder", "left_shoulder", "right_elbow", "left_elbow", "right_wrist", "left_wrist",
                  "nose", "right_eye", "left_eye", "right_ear", "left_ear"):
        assert seen[point] == [1.0], (point, seen[point])  # above it; the shoulders inside the torso mesh


def test_a_rig_and_depth_take_sends_f_poses_and_f_depth_maps_and_changes_none_of_the_users_settings(record):
    take = part(record, "take")
    assert take["result"] == ["FINISHED"], take
    args = take["args"]
    engine_format = pytest.importorskip("flash_engine.pose.format")
    poses = engine_format.read_pose_file(args["pose"])
    width, height = take["reference_size"]
    assert poses.frames == args["frames"] == 4 and (poses.width, poses.height) == (width, height)
    poses.check_for(4, width, height)
    # read on the scene frames the clip plays on, through the take's camera
    assert take["expected_poses"] and len(take["expected_poses"]) == 4
    compared = 0
    for got, want in zip(poses.body.tolist(), take["expected_poses"]):
        for (gx, gy, gc), expected in zip(got, want):
            if expected is None:  # a face point: its projection is checked in the projection test
                continue
            wx, wy, wc = expected
            assert gc == wc and (not wc or (abs(gx - wx) <= 2e-5 and abs(gy - wy) <= 2e-5)), (got, want)
            compared += 1
    assert compared == 4 * 13
    # F depth images, 16-bit, the reference's size, near bright
    from PIL import Image

    depth_files = sorted(Path(args["depth"]).glob("frame_*.png"))
    assert len(depth_files) == 4
    mid = round((1 / 5 - 1 / 10) / (1 / 3 - 1 / 10) * 65535)
    for path in depth_files:
        with Image.open(path) as image:
            assert image.mode.startswith("I;16") and image.size == (width, height)
            for name, (x, y) in take["card_pixels"].items():
                value = image.getpixel((x, y))
                want = {"NearCard": 65535, "MidCard": mid, "FarWall": 0}[name]
                assert abs(value - want) <= 2, (path.name, name, value, want)
    assert args["pose_strength"] == 0.8 and args["depth_strength"] == 0.6
    # the take imported as today, and records its motion
    assert take["plane"] and take["strip"]
    motion = take["motion_source"]
    assert motion["source"] == "rig" and motion["armature"] == "Rigify" and motion["mapping_preset"] == "rigify"
    assert motion["mapping"]["left_shoulder"] == ["DEF-upper_arm.L", "HEAD"]
    assert motion["scene_frames"] == [5, 8, 11, 14] and motion["depth"]["scene_frames"] == [5, 8, 11, 14]
    # the user's render settings, active camera, markers and frame are as they were
    assert take["after"] == take["before"], [k for k in take["before"] if take["before"][k] != take["after"].get(k)]


def test_a_failed_take_leaves_no_pose_file_depth_maps_or_reference(record):
    failed = part(record, "failed")
    assert "not built into this engine yet" in failed["error"]
    assert failed["pose"] and failed["depth"]  # the request carried them...
    assert failed["new_files"] == [], failed  # ...and nothing of the take is left
    assert failed["left"] == [False, False]


def test_preview_motion_draws_the_skeleton_on_a_plane_without_the_engine(record):
    preview = part(record, "preview")
    assert preview["result"] == ["FINISHED"] and preview["submitted"] == 0, preview
    assert preview["frames"] == 4 and preview["size"] == preview["reference_size"]
    # the left shoulder's point, drawn in its OpenPose colour where the rig's shoulder projects
    assert preview["shoulder_pixel"] == [85, 255, 0], preview
    assert preview["corner_pixel"] == [0, 0, 0]  # nothing drawn there, no depth (off for the preview)
    assert preview["planes_after_second"] == 1 and preview["second_folder"] != preview["folder"]
    assert preview["after"] == preview["before"]


def test_the_batch_reads_the_rig_through_each_shots_own_camera(record):
    batch = part(record, "batch")
    assert batch["code"] == 0, batch
    assert sorted(batch["cameras"]) == ["Shifted", "Take"]
    for shot in batch["shots"]:
        assert shot["max_error"] <= 2e-5, shot  # the pose file matches that camera's view
    assert batch["shots"][0]["pose"] != batch["shots"][1]["pose"]


def test_bad_motion_inputs_are_one_line_each_before_the_engine_is_asked(record):
    bad = part(record, "bad")
    expected = {"no_rig": "no rig picked for the motion", "no_bones": "none of the bone names FLASH knows",
                "text_clip": "is not a video", "fake_video": "is not a video Blender can read",
                "offscreen": "is not in camera"}
    for name, text in expected.items():
        case = bad[name]
        assert case["result"] == ["CANCELLED"] and text in case["error"], (name, case)
        assert case["one_line"] and not case["submitted"] and not case["new_files"], (name, case)
    assert bad["engine_starts"] == 0


def test_a_reference_clip_goes_to_the_engine_with_its_start_and_the_panel_says_its_length(record):
    clip = part(record, "clip")
    assert clip["read"] == ["FINISHED"] and clip["result"] == ["FINISHED"], clip
    args = clip["args"]
    assert args["driving"].endswith("reference.mp4") and args["driving_start"] == 10 and "pose" not in args
    source = clip["motion_source"]
    assert source["source"] == "clip" and source["clip_frames"] == 48 and source["start"] == 10
    assert source["frames"] == 4 and source["clip_fps"] == 24
    assert clip["clips_left"] == 0  # reading the clip leaves no movie clip in the file
    assert "start offset 60 is past its end (48 frames)" in clip["past_end"]


def test_the_motion_panels_draw_with_real_properties_and_operators_and_the_table_is_saved(record):
    panels = part(record, "panels")
    assert panels["problems"] == [] and panels["rows"] == 18
    labels = panels["labels"]
    assert "Bones: Rigify (generated rig): 18 of 18 points, 1 from your table" in " ".join(labels), labels  # wrapped
    assert any("auto: DEF-upper_arm.L (head)" in text for text in labels), labels
    assert any("Clip: 48 frames, 2.0 s at 24 fps; the take starts at its frame 10" in text for text in labels), labels
    assert panels["saved_rows"] == [["nose", "DEF-spine.006", "HEAD"], ["neck", "", "HEAD"]]


# ---------------------------------------------------------------------------------------
# Blender side


RIG_BONES = {  # logical bone: (head, tail, parent) of a person facing -Y, its left at +X
    "hips": ((0, 0, 1.0), (0, 0, 1.2), None), "chest": ((0, 0, 1.2), (0, 0, 1.45), "hips"),
    "neck": ((0, 0, 1.45), (0, 0, 1.6), "chest"), "head": ((0, 0, 1.6), (0, 0, 1.85), "neck"),
    "upper_arm.L": ((0.2, 0, 1.45), (0.45, 0, 1.45), "chest"), "forearm.L": ((0.45, 0, 1.45), (0.7, 0, 1.45),
                                                                             "upper_arm.L"),
    "hand.L": ((0.7, 0, 1.45), (0.8, 0, 1.45), "forearm.L"),
    "thigh.L": ((0.1, 0, 1.0), (0.1, 0, 0.55), "hips"), "shin.L": ((0.1, 0, 0.55), (0.1, 0, 0.1), "thigh.L"),
    "foot.L": ((0.1, 0, 0.1), (0.1, -0.15, 0.0), "shin.L"),
}
for _name, (_h, _t, _p) in list(RIG_BONES.items()):  # the right side mirrors the left
    if _name.endswith(".L"):
        RIG_BONES[_name[:-2] + ".R"] = ((-_h[0], _h[1], _h[2]), (-_t[0], _t[1], _t[2]),
                                        _p[:-2] + ".R" if _p and _p.endswith(".L") else _p)
RIGIFY_NAMES = {name: ("DEF-spine" if name == "hips" else "DEF-spine.003" if name == "chest" else
                       "DEF-spine.004" if name == "neck" else "DEF-spine.006" if name == "head" else f"DEF-{name}")
                for name in RIG_BONES}
_MIXAMO = {"hips": "Hips", "chest": "Spine2", "neck": "Neck", "head": "Head", "upper_arm": "Arm",
           "forearm": "ForeArm", "hand": "Hand", "thigh": "UpLeg", "shin": "Leg", "foot": "Foot"}
MIXAMO_NAMES = {name: "mixamorig:" + (_MIXAMO[name] if "." not in name else
                                      ("Left" if name.endswith(".L") else "Right") + _MIXAMO[name[:-2]])
                for name in RIG_BONES}


def scenario(zip_path: str, work: str, out: str) -> None:  # pragma: no cover - runs in Blender
    import bpy
    from bpy_extras.object_utils import world_to_camera_view

    scenario_record = ScenarioRecord(out, errors={})
    record, save, step = scenario_record.record, scenario_record.save, scenario_record.step
    work_dir = Path(work)
    work_dir.mkdir(parents=True)

    install_extension(zip_path)
    use_local_engine('TINY')

    # The stand-in engine: every animate job writes its frames and a flash.json, then is done.
    from tests.support.fake_client import FakeClient
    from PIL import Image

    clients: list = []

    from flash_engine.client import EngineError

    class WritingClient(FakeClient):
        fail_next = False  # the next job fails, as the engine reports a refused request

        def submit(self, kind, args):
            job_id = super().submit(kind, args)
            if WritingClient.fail_next:
                WritingClient.fail_next = False
                state = self.jobs[job_id]
                state.state = "failed"
                state.error = EngineError("motion control is not built into this engine yet", "animate without it",
                                          code="bad_argument")
                return job_id
            folder = Path(args["out"])
            folder.mkdir(parents=True)
            frames = []
            for k in range(args["frames"]):
                Image.new("RGB", (64, 36), (40 * k, 90, 160)).save(folder / f"frame_{k:04d}.png")
                frames.append(str(folder / f"frame_{k:04d}.png"))
            (folder / "flash.json").write_text(json.dumps({"fps": 8, "frames": [Path(f).name for f in frames]}))
            state = self.jobs[job_id]
            state.state, state.phase = "done", "decode"
            state.result = {"out": str(folder), "frames": frames, "metadata": {"fps": 8}}
            return job_id

    manager = addon("engine").MANAGER
    manager._factory = lambda config: clients.append(WritingClient(config)) or clients[-1]

    def submitted() -> list:
        return [args for client in clients for _kind, args in client.submitted]

    scene = bpy.context.scene
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    render = scene.render
    render.fps, render.fps_base = 24, 1.0
    render.resolution_x, render.resolution_y, render.resolution_percentage = 96, 54, 50

    def link(obj):
        scene.collection.objects.link(obj)
        return obj

    def camera(name, location, rotation, kind='PERSP', **data):
        cam = link(bpy.data.objects.new(name, bpy.data.cameras.new(name)))
        cam.location, cam.rotation_euler = location, rotation
        cam.data.type = kind
        for key, value in data.items():
            setattr(cam.data, key, value)
        return cam

    def card(name, distance, x, size, cam_location):
        bpy.ops.mesh.primitive_plane_add(size=size, location=(cam_location[0] + x, cam_location[1] + distance,
                                                              cam_location[2]), rotation=(math.pi / 2, 0, 0))
        obj = bpy.context.active_object
        obj.name = name
        return obj

    def build_rig(name, names, offset_x):
        data = bpy.data.armatures.new(name)
        rig = link(bpy.data.objects.new(name, data))
        bpy.context.view_layer.objects.active = rig
        bpy.ops.object.mode_set(mode='EDIT')
        for logical, (head, tail, _parent) in RIG_BONES.items():
            bone = data.edit_bones.new(names[logical])
            bone.head, bone.tail = head, tail
        for logical, (_h, _t, parent) in RIG_BONES.items():
            if parent:
                data.edit_bones[names[logical]].parent = data.edit_bones[names[parent]]
        bpy.ops.object.mode_set(mode='OBJECT')
        rig.location = (offset_x, 0.0, 0.0)
        # keys: the rig walks +X and raises its left arm
        arm = rig.pose.bones[names["upper_arm.L"]]
        arm.rotation_mode = 'XYZ'
        for frame, x, angle in ((1, offset_x, 0.0), (30, offset_x + 0.8, 1.0)):
            rig.location.x = x
            rig.keyframe_insert("location", frame=frame)
            arm.rotation_euler = (0.0, 0.0, angle)
            arm.keyframe_insert("rotation_euler", frame=frame)
        # a driver bends the right forearm with the frame
        forearm = rig.pose.bones[names["forearm.R"]]
        forearm.rotation_mode = 'XYZ'
        driver = forearm.driver_add("rotation_euler", 2).driver
        driver.type, driver.expression = 'SCRIPTED', "frame / 25"
        # a constraint swings the left thigh after an animated empty
        empty = link(bpy.data.objects.new(f"{name}_target", None))
        empty.rotation_mode = 'XYZ'
        for frame, angle in ((1, 0.0), (30, 0.8)):
            empty.rotation_euler = (angle, 0.0, 0.0)
            empty.keyframe_insert("rotation_euler", frame=frame)
        constraint = rig.pose.bones[names["thigh.L"]].constraints.new('COPY_ROTATION')
        constraint.target = empty
        return rig

    def nla_only(rig):
        """Move the rig's action into an NLA strip played at half speed from frame 3."""
        data = rig.animation_data
        action = data.action
        slot = data.action_slot
        data.action = None
        strip = data.nla_tracks.new().strips.new("walk", 3, action)
        if slot is not None and hasattr(strip, "action_slot"):
            strip.action_slot = slot
        strip.scale = 2.0

    rigify = build_rig("Rigify", RIGIFY_NAMES, 0.0)
    mixamo = build_rig("Mixamo", MIXAMO_NAMES, 0.3)
    nla_only(mixamo)
    # the Rigify rig's body: its joints sit inside it, which must not hide them
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0.0, 0.0, 1.25))
    torso = bpy.context.active_object
    torso.name, torso.scale = "Torso", (0.5, 0.3, 0.5)
    torso.parent = rigify
    # beside the rigs, a low wall hides their legs from a camera looking across at them (its top
    # is where a ray from the camera to a point 1.3 high 7 away crosses it)
    blocked_at = (-7.0, 0.0, 1.2)
    bpy.ops.mesh.primitive_plane_add(size=1.0, location=(-1.5, 0.0, (1.2786 - 10.0) / 2),
                                     rotation=(0, math.pi / 2, 0))
    wall = bpy.context.active_object
    wall.name, wall.scale = "LowWall", (11.2786, 4.0, 1.0)
    take_cam_at = (0.2, -8.0, 1.2)
    cams = {
        "Shifted": camera("Shifted", (0.4, -7.0, 1.1), (math.pi / 2, 0, 0.05), lens=35.0, shift_x=0.15,
                          shift_y=-0.1),
        "Ortho": camera("Ortho", (0.0, -9.0, 1.0), (math.radians(85), 0, math.radians(8)), 'ORTHO', ortho_scale=4.0),
        "Aspect2": camera("Aspect2", (0.3, -7.5, 1.0), (math.pi / 2, 0, 0), lens=40.0, sensor_fit='VERTICAL'),
        "Fast": camera("Fast", (0.2, -6.5, 1.3), (math.pi / 2, 0, -0.05), lens=30.0),
        "Away": camera("Away", (0.2, -6.0, 1.0), (math.pi / 2, 0, math.pi)),
        "Take": camera("Take", take_cam_at, (math.pi / 2, 0, 0), lens=28.0),
        "Blocked": camera("Blocked", blocked_at, (math.pi / 2, 0, -math.pi / 2), lens=28.0),
    }
    lens = cams["Shifted"].data  # an animated lens: 35 mm to 50 mm over the take
    for frame, value in ((1, 35.0), (30, 50.0)):
        lens.lens = value
        lens.keyframe_insert("lens", frame=frame)
    other = camera("Other", (5.0, -5.0, 1.0), (math.pi / 2, 0, 0))
    for name, distance, x, size in CARDS:
        card(name, distance, x, size, take_cam_at)

    def evaluated_uv(rig, bone_name, end, cam):
        depsgraph = bpy.context.evaluated_depsgraph_get()
        evaluated = rig.evaluated_get(depsgraph)
        bone = evaluated.pose.bones[bone_name]
        world = evaluated.matrix_world @ (bone.tail if end == "TAIL" else bone.head)
        return world_to_camera_view(scene, cam, world), world

    def compare_rig(rig, cam, samples):
        """The add-on's reading of ``rig`` through ``cam`` against Blender's own, on each sample."""
        rig_motion, rig_pose = addon("rig_motion"), addon("rig_pose")
        choice = addon("motion").MotionChoice(source="RIG", rig=rig.name)
        mapping = rig_motion.rig_mapping(rig, choice)
        read = rig_motion.read_rig(bpy.context, scene, cam, rig, mapping, samples)
        worst, compared, visible, expected_visible, first = 0.0, 0, 0, 0, None
        for (frame, sub), image, world in zip(samples, read.image, read.world):
            scene.frame_set(frame, subframe=sub)
            for index, point in enumerate(rig_pose.POINTS):
                source = mapping.sources[point]
                if source is not None and source.end != "FACE":
                    uv, _ = evaluated_uv(rig, source.bone, source.end, cam)
                elif world[index] is not None:  # mid-shoulders, face points: their projection
                    from mathutils import Vector
                    uv = world_to_camera_view(scene, cam, Vector(world[index]))
                else:
                    continue
                x, y, c = image[index]
                worst = max(worst, abs(x - uv.x), abs(y - (1 - uv.y)))
                compared += 1
                visible += c > 0
                expected_visible += 0 <= uv.x <= 1 and 0 <= uv.y <= 1 and uv.z > 0
        first, last = read.world[0], read.world[-1]
        moved = max(math.dist(a, b) for a, b in zip(first, last) if a and b)
        return {"rig": rig.name, "camera": cam.name, "preset": mapping.preset, "frames": len(read.image),
                "expected_frames": len(samples), "compared": compared, "max_error": worst, "visible": visible,
                "expected_visible": expected_visible, "moved": moved}

    def take_samples(start, frames, clip_fps=8.0):
        timing = addon("timing").TakeTiming(start, frames, clip_fps, 24.0)
        return timing.sample_frames()

    @step("projection")
    def _projection():
        cases = []
        for rig in (rigify, mixamo):
            for name in ("Shifted", "Ortho", "Aspect2", "Fast"):
                cam = cams[name]
                render.pixel_aspect_x = 2.0 if name == "Aspect2" else 1.0
                samples = take_samples(3, 16, clip_fps=30.0 if name == "Fast" else 8.0)  # Fast: between frames
                cases.append(compare_rig(rig, cam, samples))
        render.pixel_aspect_x = 1.0
        record["projection"] = cases

    @step("behind")
    def _behind():
        rig_motion = addon("rig_motion")
        choice = addon("motion").MotionChoice(source="RIG", rig="Rigify")
        mapping = rig_motion.rig_mapping(rigify, choice)
        samples = take_samples(3, 4)
        read = rig_motion.read_rig(bpy.context, scene, cams["Away"], rigify, mapping, samples)
        behind = []
        for (frame, sub), world in zip(samples, read.world):
            scene.frame_set(frame, subframe=sub)
            from mathutils import Vector
            behind += [world_to_camera_view(scene, cams["Away"], Vector(p)).z < 0 for p in world if p]
        record["behind"] = {"all_behind": all(behind) and len(behind) > 0, "frames": len(read.image),
                            "confidences": [c for frame in read.image for _x, _y, c in frame]}

    @step("occlusion")
    def _occlusion():
        rig_motion = addon("rig_motion")
        mapping = rig_motion.rig_mapping(rigify, addon("motion").MotionChoice(source="RIG", rig="Rigify"))
        read = rig_motion.read_rig(bpy.context, scene, cams["Blocked"], rigify, mapping, take_samples(3, 4))
        names = addon("rig_pose").POINTS
        record["occlusion"] = {name: sorted({frame[i][2] for frame in read.image}) for i, name in enumerate(names)}

    # The take's scene: the user's own render settings, a marker bound to another camera.
    view_layer = bpy.context.view_layer
    user_override = bpy.data.materials.new("UserOverride")
    render.engine = 'BLENDER_WORKBENCH'
    render.film_transparent = True
    render.use_motion_blur = True
    scene.cycles.samples, scene.cycles.use_denoising, scene.cycles.filter_width = 7, True, 2.0
    scene.cycles.sample_clamp_direct = 3.0
    view_layer.material_override = user_override
    render.image_settings.file_format = 'JPEG'
    render.filepath = "//renders/shot_"
    scene.timeline_markers.new("M2", frame=2).camera = other
    scene.frame_current = TAKE_START
    scene.camera = cams["Take"]
    flash = scene.flash
    flash.plane_distance = 6.0
    bpy.ops.wm.save_as_mainfile(filepath=str(work_dir / "shot.blend"))

    def user_state() -> dict:
        cycles = scene.cycles
        return {"engine": render.engine, "resolution": [render.resolution_x, render.resolution_y,
                                                        render.resolution_percentage],
                "pixel_aspect": [render.pixel_aspect_x, render.pixel_aspect_y],
                "film_transparent": render.film_transparent, "motion_blur": render.use_motion_blur,
                "compositing": render.use_compositing, "sequencer": render.use_sequencer,
                "filepath": render.filepath, "format": [render.image_settings.file_format,
                                                        render.image_settings.color_depth],
                "cycles": [cycles.samples, cycles.use_denoising, cycles.filter_width, cycles.pixel_filter_type,
                           cycles.sample_clamp_direct, cycles.film_exposure],
                "override": view_layer.material_override.name if view_layer.material_override else None,
                "view": [scene.view_settings.view_transform, scene.view_settings.exposure],
                "camera": scene.camera.name, "frame": scene.frame_current,
                "markers": sorted([m.name, m.frame, m.camera.name if m.camera else None]
                                  for m in scene.timeline_markers),
                "materials": sorted(m.name for m in bpy.data.materials),
                "images": sorted(i.name for i in bpy.data.images if i.name != "Render Result"),
                "clips": len(bpy.data.movieclips)}

    def flash_files() -> set:
        folder = work_dir / "flash"
        return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()

    def take_state() -> dict:  # what a take may change: only its own plane, strip and images
        state = user_state()
        state["materials"] = [m for m in state["materials"] if not m.startswith("Scene_")]
        state["images"] = [i for i in state["images"] if not i.startswith("Scene_")]
        return state

    @step("take")
    def _take():
        flash.motion, flash.rig, flash.use_depth = 'RIG', rigify, True
        flash.pose_strength, flash.depth_strength = 0.8, 0.6
        before = take_state()
        result = sorted(bpy.ops.flash.animate_action(**TAKE))
        args = submitted()[-1]
        take = addon("progress").STATUS.job.meta
        width, height = take.reference_size
        # what the pose file must hold: the evaluated bones through the take camera at 5, 8, 11, 14
        rig_pose = addon("rig_pose")
        mapping = addon("rig_motion").rig_mapping(rigify, addon("motion").MotionChoice(source="RIG", rig="Rigify"))
        expected = []
        for frame in (5, 8, 11, 14):
            scene.frame_set(frame)
            points = []
            for point in rig_pose.POINTS:
                source = mapping.sources[point]
                if source is None or source.end == "FACE":
                    points.append(None)
                    continue
                uv, _ = evaluated_uv(rigify, source.bone, source.end, cams["Take"])
                seen = 0 <= uv.x <= 1 and 0 <= uv.y <= 1 and uv.z > 0
                points.append([round(uv.x, 5), round(1 - uv.y, 5), 1.0 if seen else 0.0])
            expected.append(points)
        scene.frame_set(TAKE_START)
        scene.camera = cams["Take"]
        card_pixels = {}
        for name, distance, x, _size in CARDS:
            from mathutils import Vector
            uv = world_to_camera_view(scene, cams["Take"], Vector((take_cam_at[0] + x, take_cam_at[1] + distance,
                                                                   take_cam_at[2] + (0.0 if name != "FarWall" else 0.6))))
            card_pixels[name] = (min(width - 1, int(uv.x * width)), min(height - 1, int((1 - uv.y) * height)))
        manifest = json.loads((Path(args["out"]) / "flash.json").read_text())
        record["take"] = {
            "result": result, "args": args, "reference_size": [width, height], "before": before, "after": take_state(),
            "expected_poses": expected,
            "card_pixels": card_pixels, "plane": bpy.data.objects.get(take.name) is not None,
            "strip": take.name in scene.sequence_editor.strips, "motion_source": manifest.get("motion_source")}

    @step("failed")
    def _failed():
        flash.motion, flash.rig, flash.use_depth = 'RIG', rigify, True
        files = flash_files()
        WritingClient.fail_next = True
        _, error = call(bpy.ops.flash.animate_action, **TAKE)
        args = submitted()[-1]
        record["failed"] = {"error": error, "new_files": sorted(flash_files() - files), "pose": args.get("pose"),
                            "depth": args.get("depth"), "left": [Path(args[k]).exists() for k in ("pose", "depth")]}

    @step("preview")
    def _preview():
        flash.motion, flash.rig, flash.use_depth = 'RIG', rigify, False
        flash.frames = 4
        before = user_state()
        count = len(submitted())
        result = sorted(bpy.ops.flash.preview_motion())
        planes = [o for o in scene.objects if o.get("flash_preview")]
        plane = planes[0]
        folder = Path(bpy.path.abspath(plane["flash_folder"]))
        frames = sorted(folder.glob("frame_*.png"))
        with Image.open(frames[0]) as image:
            size = list(image.size)
            pixels = image.convert("RGB")
            mapping = addon("rig_motion").rig_mapping(rigify, addon("motion").MotionChoice(source="RIG",
                                                                                          rig="Rigify"))
            scene.frame_set(TAKE_START)
            uv, _ = evaluated_uv(rigify, mapping.sources["left_shoulder"].bone, "HEAD", cams["Take"])
            scene.camera = cams["Take"]
            shoulder = list(pixels.getpixel((int(uv.x * size[0]), int((1 - uv.y) * size[1]))))
            corner = list(pixels.getpixel((0, 0)))
        shot = addon("takes").Shot("Scene", "Take", TAKE_START, render.resolution_x, render.resolution_y)
        choice = addon("animate_take").take_choice(scene, {})
        reference_size = list(addon("takes").reference_size(choice, shot, None))
        bpy.ops.flash.preview_motion()
        planes_after = [o for o in scene.objects if o.get("flash_preview")]
        preview_state = user_state()
        record["preview"] = {
            "result": result, "submitted": len(submitted()) - count, "frames": len(frames), "size": size,
            "reference_size": reference_size, "shoulder_pixel": shoulder, "corner_pixel": corner,
            "folder": str(folder),
            "second_folder": bpy.path.abspath(planes_after[0]["flash_folder"]) if planes_after else None,
            "planes_after_second": len(planes_after),
            "before": {k: v for k, v in before.items() if k not in ("materials", "images")},
            "after": {k: v for k, v in preview_state.items() if k not in ("materials", "images")}}

    @step("batch")
    def _batch():
        for obj in [o for o in scene.objects if o.get("flash_preview")]:
            bpy.data.objects.remove(obj)
        flash.use_depth = False
        flash.motion = 'ACTION'  # the batch's --motion says Rig
        count = len(submitted())
        code = addon("operators.batch").main(["blender", "--", "--camera", "Take", "--camera", "Shifted",
                                              "--motion", "rig:Rigify", "--frames", "4", "--steps", "1",
                                              "--long-side", "64", "--output", "plane"])
        shots = []
        for args in submitted()[count:]:
            data = json.loads(Path(args["pose"]).read_text())
            cam_name = Path(args["out"]).name.split("_")[1]
            cam = cams[cam_name]
            mapping = addon("rig_motion").rig_mapping(rigify, addon("motion").MotionChoice(source="RIG",
                                                                                          rig="Rigify"))
            worst = 0.0
            for frame_number, frame in zip((TAKE_START, TAKE_START + 3, TAKE_START + 6, TAKE_START + 9),
                                           data["frames"]):
                scene.frame_set(frame_number)
                source = mapping.sources["left_wrist"]
                uv, _ = evaluated_uv(rigify, source.bone, "HEAD", cam)
                x, y, _c = frame["body"][7]
                worst = max(worst, abs(x - uv.x), abs(y - (1 - uv.y)))
            scene.frame_set(TAKE_START)
            shots.append({"camera": cam_name, "max_error": worst, "pose": data["frames"][0]["body"][7]})
        scene.camera = cams["Take"]
        record["batch"] = {"code": code, "cameras": [s["camera"] for s in shots], "shots": shots}

    @step("bad")
    def _bad():
        starts = manager.starts
        blob = link(bpy.data.objects.new("Blob", bpy.data.armatures.new("Blob")))
        bpy.context.view_layer.objects.active = blob
        bpy.ops.object.mode_set(mode='EDIT')
        blob.data.edit_bones.new("Bone").tail = (0, 0, 1)
        bpy.ops.object.mode_set(mode='OBJECT')
        notes = work_dir / "notes.txt"
        notes.write_text("not a video")
        fake = work_dir / "fake.mp4"
        fake.write_text("not a video either")
        cases = {"no_rig": ({"motion": 'RIG'}, None), "no_bones": ({"motion": 'RIG', "rig": "Blob"}, None),
                 "text_clip": ({"motion": 'CLIP', "clip": str(notes)}, None),
                 "fake_video": ({"motion": 'CLIP', "clip": str(fake)}, None),
                 "offscreen": ({"motion": 'RIG', "rig": "Rigify"}, "Away")}
        flash.rig = None
        record["bad"] = {}
        for name, (overrides, camera_name) in cases.items():
            scene.camera = cams[camera_name] if camera_name else cams["Take"]
            files, count = flash_files(), len(submitted())
            result, error = call(bpy.ops.flash.animate_action, **TAKE, **overrides)
            error = error.strip()
            line = error.removeprefix("Error: ").strip()
            record["bad"][name] = {"result": result, "error": error, "one_line": "\n" not in line and bool(line),
                                   "submitted": len(submitted()) - count,
                                   "new_files": sorted(flash_files() - files)}
        scene.camera = cams["Take"]
        record["bad"]["engine_starts"] = manager.starts - starts

    video = work_dir / "reference.mp4"

    @step("clip")
    def _clip():
        import cv2  # the engine's environment has OpenCV: a real 48-frame video to read
        import numpy as np

        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 24.0, (64, 48))
        for k in range(48):
            writer.write(np.full((48, 64, 3), 5 * k, np.uint8))
        writer.release()
        flash.motion, flash.clip_path, flash.clip_start, flash.use_depth = 'CLIP', str(video), 10, False
        clips = len(bpy.data.movieclips)
        read = sorted(bpy.ops.flash.read_clip())
        result = sorted(bpy.ops.flash.animate_action(**TAKE))
        args = submitted()[-1]
        manifest = json.loads((Path(args["out"]) / "flash.json").read_text())
        record["clip"] = {"read": read, "result": result, "args": args, "motion_source": manifest.get("motion_source"),
                          "clips_left": len(bpy.data.movieclips) - clips}
        flash.clip_start = 60
        record["clip"]["past_end"] = call(bpy.ops.flash.animate_action, **TAKE)[1]
        flash.clip_start = 10

    @step("panels")
    def _panels():
        harness = sys.modules["tests.support.blender_harness"]
        panels = addon("panels")
        flash.motion, flash.rig = 'RIG', rigify
        bpy.ops.flash.edit_bones()
        flash.bone_points[0].bone = "DEF-spine.006"  # one row of the table set by hand
        calls: list = []
        problems: list = []
        for motion_kind in ('RIG', 'CLIP', 'ACTION'):
            flash.motion = motion_kind
            for panel in (panels.FLASH_PT_motion, panels.FLASH_PT_motion_bones):
                mine: list = []
                panel.draw(harness.Drawer(harness.Layout(mine), None), bpy.context)
                problems += harness.layout_problems(bpy, mine, where=f"{panel.__name__}/{motion_kind}")
                calls += mine
        record["panels"] = {"problems": problems, "rows": len(flash.bone_points),
                            "labels": [str(kwargs.get("text", "")) for name, _a, kwargs in calls if name == "label"]}
        bpy.ops.wm.save_as_mainfile(filepath=str(work_dir / "table.blend"))
        bpy.ops.wm.open_mainfile(filepath=str(work_dir / "table.blend"))
        table = bpy.context.scene.flash.bone_points
        record["panels"]["saved_rows"] = [[row.point, row.bone, row.end] for row in table][:2]

    save()


if __name__ == "__main__":
    scenario(*sys.argv[1:4])
