"""The extension for real: build the zip, install and enable it in Blender (the bpy 5.0.1
wheel, background mode, a throw-away user directory), animate shots with the tiny engine,
kill the engine mid-job, disable the add-on.

All of it runs in one Blender process (this file run as a script, ``scenario()``), which
writes what it saw to a JSON file; the tests below each check one part of that record.
Blender starts once and the engine is warm after the first job, which keeps the module
under a minute on a small machine.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path

import pytest

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("bpy") is None,
                                 reason="needs the bpy 5.0.1 wheel (the test extra)"),
              pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # this file also runs as a script inside Blender's process
from tests.support.blender_harness import (  # noqa: E402
    MODULE, Drawer, Layout, ScenarioRecord, addon, call, install_extension, layout_problems, run_scenario,
    scenario_part, use_local_engine,
)

SMALL = {"frames": 3, "steps": 2, "long_side": 64}  # 64x48 from the 4:3 shot: a second per job


# ---------------------------------------------------------------------------------------
# pytest side


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> dict:
    return run_scenario(__file__, tmp_path_factory.mktemp("blender"))


part = scenario_part


def close(a, b, tol=1e-4) -> bool:
    return all(abs(x - y) <= tol * max(1.0, abs(y)) for x, y in zip(a, b))


def same_corners(got, want, tol=1e-4) -> bool:
    return all(any(close(g, w, tol) for g in got) for w in want) and len(got) == len(want)


def test_the_zip_installs_and_enables(record):
    install = part(record, "install")
    assert install["result"] == ["FINISHED"]
    assert install["enabled"]
    # the add-on imported the engine bundled inside the extension, not the checkout
    assert install["engine_file"].startswith(install["extension_dir"]), install
    assert install["engine_path"] == install["extension_dir"]


def test_panels_and_preferences_draw_and_the_dropdown_prefills_the_prompt(record):
    ui = part(record, "ui")
    assert ui["problems"] == []
    assert ui["items"] >= 16
    assert ui["prefilled"] == "a person is doing push-ups."
    assert ui["kept"] == "a person does a slow push-up."
    assert ui["soccer_prompt"] == "a person is shooting a soccer ball."


def test_an_unsaved_file_puts_frames_in_the_user_directory_with_a_warning(record):
    unsaved = part(record, "unsaved")
    assert unsaved["result"] == ["FINISHED"], unsaved["error"]
    assert any("outside the project" in w for w in unsaved["warnings"])
    assert unsaved["image_path"].startswith(unsaved["user_dir"])
    assert unsaved["image_path"].endswith("Scene_Camera_backflip_001/frame_0001.png")


def test_an_action_given_to_the_operator_animates_its_own_sentence_not_the_scenes(record):
    from flash_engine.presets import find_preset

    unsaved = part(record, "unsaved")  # the scene's action is Soccer shoot; the call asks for backflip
    assert unsaved["scene_prompt"] == find_preset("soccer_shoot").prompt
    assert unsaved["sent_prompt"] == find_preset("backflip").prompt


def test_without_a_long_side_a_take_has_the_models_native_size(record):
    unsaved = part(record, "unsaved")
    assert unsaved["native_default"] is True
    assert unsaved["native_size"] == [64, 48]  # the tiny model's 64 at the shot's 4:3 (not 512x384)


def test_a_failed_render_restores_the_settings_and_leaves_nothing(record):
    failed = part(record, "render_fails")
    assert "the reference render failed: Error: simulated render failure" in failed["error"]
    assert failed["state_before"] == failed["state_after"]
    assert failed["before"] == failed["after"]


def test_setup_engine_runs_the_installer_and_shows_its_failure(record):
    setup = part(record, "setup")
    assert setup["ok_result"] == ["FINISHED"]
    assert setup["ok_lines"][-1] == "[2/2] checking"
    assert setup["ok_command"][1:4] == ["-m", "flash_engine.setup", "--env"]
    assert setup["ok_command"][4].endswith("engine-env")
    assert "broken index" in setup["failed_error"] and "pass --index-url" in setup["failed_error"]


def test_animate_writes_a_new_take_and_restores_render_settings(record):
    first = part(record, "perspective")
    assert first["result"] == ["FINISHED"]
    assert first["take_files"] == ["flash.json", "frame_0001.png", "frame_0002.png", "frame_0003.png"]
    assert first["reference_exists"]
    assert first["frame_size"] == [64, 48]
    assert first["render_before"] == first["render_after"]
    assert first["collection"] == "FLASH" and first["plane"] in first["collection_objects"]
    # names say which scene, camera, action and take
    assert first["plane"] == "Scene_Camera_soccer_shoot_001"


def test_plane_fills_the_camera_frame(record):
    for name in ("perspective", "orthographic"):
        shot = part(record, name)
        assert shot["plane_parent"] == shot["camera"]
        assert same_corners(shot["plane_world"], shot["expected_world"]), (name, shot)
        assert abs(shot["plane_size"][0] / shot["plane_size"][1] - 4 / 3) < 1e-4


def test_plane_material_plays_the_image_sequence_unlit(record):
    shot = part(record, "perspective")
    material = shot["material"]
    assert material["image_source"] == "SEQUENCE"
    assert material["frame_duration"] == 3 and material["frame_start"] == 7
    assert material["auto_refresh"] and material["emission_linked"]
    assert material["image_path"] == "//flash/Scene_Camera_soccer_shoot_001/frame_0001.png"


def test_strip_holds_every_frame_at_the_current_frame(record):
    shot = part(record, "perspective")
    strip = shot["strip"]
    # 3 frames at 8 fps in the 24 fps scene: each held for 3 scene frames
    assert strip["elements"] == 9 and strip["frame_start"] == 7 and strip["channel"] == 2  # 1 is taken
    assert strip["directory"] == "//flash/Scene_Camera_soccer_shoot_001/"
    assert strip["sequencer_scene"] == "Scene"


def test_rerun_makes_a_new_take_and_keeps_the_old(record):
    rerun = part(record, "rerun")
    assert rerun["result"] == ["FINISHED"]
    assert rerun["plane"] == "Scene_Camera_soccer_shoot_002"
    assert rerun["old_plane_kept"] and rerun["old_files_kept"]
    assert rerun["strip_channels"] == [1, 2, 3]
    assert len(set(rerun["pids"])) == 1 and None not in rerun["pids"]  # one engine, reused


def test_no_camera_is_an_error_that_creates_nothing(record):
    nocam = part(record, "no_camera")
    assert "no active camera" in nocam["error"] and "Ctrl+Numpad 0" in nocam["error"]
    assert nocam["before"] == nocam["after"]


def test_a_killed_engine_fails_the_job_and_the_next_run_restarts_it(record):
    killed = part(record, "killed")
    assert killed["killed_pid"] is not None
    assert "SIGKILL" in killed["error"] and "fresh engine" in killed["error"]
    assert killed["before"] == killed["after"]  # no plane, strip, take folder or reference left
    assert killed["next_result"] == ["FINISHED"]
    assert killed["next_pid"] not in (None, killed["killed_pid"])


def test_with_mannequin_the_dropdown_offers_its_own_actions_with_the_sentences_it_learned(record):
    from flash_engine.models.loading import model_card_actions

    actions = part(record, "model_actions")
    assert not [i for i in actions["tiny_items"] if i.startswith("model:")]  # tiny has no card: as before
    card = model_card_actions("mannequin")
    items = actions["items"]
    for action in card.actions:
        mark = "learned by mannequin" if action.learned else "not learned by mannequin: train it first"
        assert items[f"model:{action.id}"] == f"{action.name} ({mark})"
    assert items["soccer_shoot"] == "Soccer shoot (not learned by mannequin: train it first)"
    assert actions["chosen"] == {"action_id": "model:arm_wave", "prompt": "a person is waving an arm."}
    assert actions["problems"] == []
    assert "Learned by mannequin: the base model animates its sentence" in actions["panel_labels"]
    assert actions["result"] == ["FINISHED"], actions["error"]
    take = actions["take"]
    assert take["settings"]["prompt"] == "a person is waving an arm." and take["preset"] is None
    assert take["model"]["source"] == "mannequin"


def test_disabling_ends_the_engine_and_leaves_nothing_registered(record):
    disabled = part(record, "disabled")
    assert disabled["pid_before"] is not None
    assert not disabled["pid_alive"]
    assert disabled["leftovers"] == []
    assert "error" not in record, record.get("error")


# ---------------------------------------------------------------------------------------
# Blender side (runs as a script with the bpy module)


def check_drawing(bpy, addon, prefs) -> list[str]:  # pragma: no cover - runs in Blender
    """Draw the panels and preferences in several states; returns what would fail in a real
    layout: unknown properties, operators, icons."""
    panels, progress = addon("panels"), addon("progress")
    status, problems = progress.STATUS, []

    def draw(function, owner):
        calls: list = []
        function(Drawer(Layout(calls), owner), bpy.context)
        problems.extend(layout_problems(bpy, calls, where=function.__qualname__))
        return calls

    def both_panels():
        for panel in panels.classes:
            draw(panel.draw, None)

    both_panels()
    status.last_error, status.warnings, status.last_message = "something failed (fix it)", ["a warning"], "done"
    running = type("Job", (), {"finished": False, "meta": type("Take", (), {"name": "S_C_a_001"})(),
                               "progress": progress.Progress("denoise", 3, 25, 10.0)})()
    status.job = running
    calls = [c for c in draw(panels.FLASH_PT_animate.draw, None) if c[0] == "progress"]
    if not calls or "Denoising 3/25" not in calls[0][2]["text"]:
        problems.append(f"no progress bar while a job runs: {calls}")
    status.job = None
    status.clear_messages()
    saved = prefs.engine_source, prefs.model_source
    for source, model in (("MANAGED", "DEFAULT"), ("CUSTOM", "FOLDER"), ("CUSTOM", "TINY")):
        prefs.engine_source, prefs.model_source = source, model
        draw(type(prefs).draw, prefs)
    setup = type("Run", (), {"finished": False, "factor": 0.5, "text": "[2/4] torch", "tail": lambda s, n: ["x"]})()
    status.setup = setup
    prefs.engine_source = "MANAGED"
    draw(type(prefs).draw, prefs)
    status.setup = None
    prefs.engine_source, prefs.model_source = saved
    return problems


def scenario(zip_path: str, work: str, out: str) -> None:  # pragma: no cover - runs in Blender
    import signal
    import threading
    import time

    import bpy
    import addon_utils  # importable once bpy is

    work_dir = Path(work)
    work_dir.mkdir(parents=True)

    scenario_record = ScenarioRecord(out)  # its timings: seconds since here
    record, save = scenario_record.record, scenario_record.save
    animate = functools.partial(call, bpy.ops.flash.animate_action)

    def inventory(scene) -> dict:
        folder = work_dir / "flash"
        return {
            "objects": sorted(o.name for o in bpy.data.objects),
            "images": sorted(i.name for i in bpy.data.images if i.name != "Render Result"),
            "materials": sorted(m.name for m in bpy.data.materials),
            "collections": sorted(c.name for c in bpy.data.collections),
            "strips": sorted(s.name for s in scene.sequence_editor.strips) if scene.sequence_editor else [],
            "files": sorted(os.listdir(folder)) if folder.is_dir() else [],
        }

    def render_state(scene) -> dict:
        r = scene.render
        return {"engine": r.engine, "x": r.resolution_x, "y": r.resolution_y, "percent": r.resolution_percentage,
                "pixel_aspect": [r.pixel_aspect_x, r.pixel_aspect_y], "filepath": r.filepath,
                "format": r.image_settings.file_format, "color_mode": r.image_settings.color_mode,
                "use_sequencer": r.use_sequencer, "camera": scene.camera.name if scene.camera else None}

    def expected_plane(scene, camera, distance):
        """The camera's frame at ``distance``, from Blender's own view_frame, in world space."""
        data = camera.data
        corners = data.view_frame(scene=scene)
        if data.type == 'ORTHO':
            local = [(c.x, c.y, -distance) for c in corners]
        else:
            scale = distance / -corners[0].z
            local = [tuple(c * scale) for c in corners]
        world = camera.matrix_world.normalized()
        return [list(world @ __import__("mathutils").Vector(c)) for c in local]

    def describe_take(scene, camera, name, take_number=None):
        obj = bpy.data.objects[name]
        world = [list(obj.matrix_world @ v.co) for v in obj.data.vertices]
        local = [v.co for v in obj.data.vertices]
        xs, ys = [v.x for v in local], [v.y for v in local]
        tree = obj.active_material.node_tree
        texture = next(n for n in tree.nodes if n.bl_idname == "ShaderNodeTexImage")
        emission = next(n for n in tree.nodes if n.bl_idname == "ShaderNodeEmission")
        folder = work_dir / "flash" / name
        info = {
            "camera": camera.name, "plane": obj.name, "plane_parent": obj.parent.name if obj.parent else None,
            "plane_world": world, "expected_world": expected_plane(scene, camera, obj["flash_distance"]),
            "plane_size": [max(xs) - min(xs), max(ys) - min(ys)],
            "material": {
                "image_source": texture.image.source, "frame_duration": texture.image_user.frame_duration,
                "frame_start": texture.image_user.frame_start, "auto_refresh": texture.image_user.use_auto_refresh,
                "image_path": texture.image.filepath,
                "emission_linked": emission.inputs["Color"].is_linked and any(
                    link.to_node.bl_idname == "ShaderNodeOutputMaterial" for link in emission.outputs[0].links),
            },
            "collection": obj.users_collection[0].name,
            "collection_objects": [o.name for o in obj.users_collection[0].objects],
            "take_files": sorted(os.listdir(folder)) if folder.is_dir() else None,
            "reference_exists": (work_dir / "flash" / (name + ".reference.png")).is_file(),
        }
        if folder.is_dir():
            from PIL import Image  # the test interpreter has Pillow; Blender's need not

            with Image.open(folder / "frame_0001.png") as image:
                info["frame_size"] = list(image.size)
        strip = scene.sequence_editor.strips.get(name) if scene.sequence_editor else None
        if strip is not None:
            info["strip"] = {"elements": len(strip.elements), "frame_start": strip.frame_start,
                             "channel": strip.channel, "directory": strip.directory,
                             "sequencer_scene": getattr(bpy.context.workspace.sequencer_scene, "name", None)}
        return info

    try:
        # 1. install + enable from the built zip
        result = install_extension(zip_path)
        extension_dir = bpy.utils.user_resource("EXTENSIONS", path="user_default/flash_previs")
        bundled, engine_module = addon("bundled"), addon("engine")
        record["install"] = {"result": result, "enabled": MODULE in bpy.context.preferences.addons,
                             "extension_dir": extension_dir}
        save("install")

        # 2. "Set up engine" plumbing, with a stand-in installer (the real one downloads gigabytes)
        installer = addon("installer")
        real_command, commands = installer.setup_command, []

        def fake(lines, code):
            def command(env_dir, python=sys.executable):
                commands.append(real_command(env_dir, python))
                script = "".join(f"print({line!r});" for line in lines) + f"raise SystemExit({code})"
                return [sys.executable, "-c", script]
            return command

        installer.setup_command = fake(["[1/2] creating", "[2/2] checking"], 0)
        ok = sorted(bpy.ops.flash.setup_engine())
        ok_lines = addon("progress").STATUS.setup.tail(2)
        installer.setup_command = fake(["[1/3] creating", "error: broken index", "  pass --index-url"], 1)
        _, failed = call(bpy.ops.flash.setup_engine)
        installer.setup_command = real_command
        record["setup"] = {"ok_result": ok, "ok_lines": ok_lines, "ok_command": commands[0], "failed_error": failed}
        save("setup")

        # 3. a 4:3 shot with lens shift, saved so takes go to //flash/
        prefs = use_local_engine('TINY')  # the engine runs in this test's own interpreter
        scene = bpy.context.scene
        scene.render.engine = 'CYCLES'
        scene.cycles.samples = 1
        scene.cycles.device = 'CPU'
        scene.render.resolution_x, scene.render.resolution_y = 640, 480
        scene.render.resolution_percentage = 50
        scene.render.filepath = "//renders/shot_"
        scene.render.image_settings.file_format = 'JPEG'
        camera = scene.camera
        camera.data.lens = 35
        camera.data.shift_x, camera.data.shift_y = 0.1, -0.05
        camera.scale = (2.0, 2.0, 2.0)  # a scaled camera rig must not scale the plane
        scene.frame_current = 7
        editor = scene.sequence_editor_create()
        blocker = work_dir / "blocker.png"
        bpy.data.images.new("blocker", 8, 8).save(filepath=str(blocker))
        editor.strips.new_image(name="existing", filepath=str(blocker), channel=1, frame_start=1)
        editor.strips["existing"].frame_final_duration = 20  # channel 1 is busy at frame 7

        # the panel and preferences draw (with a stand-in layout), the dropdown prefills the prompt
        status = addon("progress").STATUS
        problems = check_drawing(bpy, addon, prefs)
        settings = scene.flash
        settings.action = "push_up"
        prefilled = settings.prompt
        settings.prompt = "a person does a slow push-up."
        settings.action = "push_up"  # choosing the same action keeps the edit
        kept = settings.prompt
        settings.action = "soccer_shoot"
        record["ui"] = {"problems": problems, "prefilled": prefilled, "kept": kept,
                        "items": len(addon("properties")._action_items(settings, bpy.context)),
                        "soccer_prompt": settings.prompt}
        save("ui")

        # an unsaved file: frames go to the user directory, with a warning; no Long Side set:
        # the model's native size (tiny: 64) at the camera's 4:3
        result, error = animate(action="backflip", output='PLANE', frames=3, steps=2)
        plane = bpy.data.objects.get("Scene_Camera_backflip_001")
        texture = plane and next(n for n in plane.active_material.node_tree.nodes if n.type == 'TEX_IMAGE')
        takes_dir = bpy.utils.extension_path_user(MODULE, path="takes")
        first = Path(takes_dir) / "Scene_Camera_backflip_001" / "frame_0001.png"
        if first.is_file():
            from PIL import Image

            with Image.open(first) as image:
                native_size = list(image.size)
        else:
            native_size = None
        manifest = first.parent / "flash.json"
        sent_prompt = json.loads(manifest.read_text())["settings"]["prompt"] if manifest.is_file() else None
        record["unsaved"] = {"result": result, "error": error, "warnings": list(status.warnings),
                             "sent_prompt": sent_prompt, "scene_prompt": settings.prompt,
                             "image_path": texture.image.filepath if texture else None, "user_dir": takes_dir,
                             "native_size": native_size, "native_default": scene.flash.native_size}
        save("unsaved")
        bpy.ops.wm.save_as_mainfile(filepath=str(work_dir / "shot.blend"))

        # a render that fails: the settings come back, nothing is left
        reference = addon("reference")
        real = reference.bpy

        def failing_render(**_kwargs):
            raise RuntimeError("Error: simulated render failure")

        reference.bpy = type("FailingBpy", (), {"ops": type("Ops", (), {"render": type("R", (), {
            "render": staticmethod(failing_render)})}), "data": bpy.data})
        before_state, before_files = render_state(scene), inventory(scene)
        try:
            _, error = animate(action="soccer_shoot", **SMALL)
        finally:
            reference.bpy = real
        record["render_fails"] = {"error": error, "state_before": before_state, "state_after": render_state(scene),
                                  "before": before_files, "after": inventory(scene)}
        save("render_fails")

        before = render_state(scene)
        result, error = animate(action="soccer_shoot", **SMALL)
        client = engine_module.MANAGER.client
        record["install"].update(engine_file=sys.modules["flash_engine"].__file__,
                                 engine_path=client.engine_path if client else None)
        pids = [engine_module.MANAGER.pid]
        record["perspective"] = {"result": result, "error": error, "render_before": before,
                                 "render_after": render_state(scene),
                                 **describe_take(scene, camera, "Scene_Camera_soccer_shoot_001")}
        save("perspective")

        # 4. an orthographic camera with vertical fit and shift
        ortho = bpy.data.objects.new("Ortho", bpy.data.cameras.new("Ortho"))
        scene.collection.objects.link(ortho)
        ortho.location, ortho.rotation_euler = (0.0, -8.0, 1.0), (1.45, 0.0, 0.0)
        ortho.data.type, ortho.data.ortho_scale = 'ORTHO', 5.0
        ortho.data.sensor_fit, ortho.data.shift_x, ortho.data.shift_y = 'VERTICAL', 0.2, 0.1
        scene.camera = ortho
        scene.flash.plane_distance = 4.0
        result, error = animate(action="Push-up", output='PLANE', **SMALL)
        pids.append(engine_module.MANAGER.pid)
        record["orthographic"] = {"result": result, "error": error,
                                  **describe_take(scene, ortho, "Scene_Ortho_push_up_001")}
        scene.camera = camera
        save("orthographic")

        # 5. again with the first camera: take 002, take 001 untouched
        result, error = animate(action="soccer_shoot", **SMALL)
        strips = scene.sequence_editor.strips
        record["rerun"] = {
            "result": result, "error": error,
            "plane": "Scene_Camera_soccer_shoot_002" if "Scene_Camera_soccer_shoot_002" in bpy.data.objects else None,
            "old_plane_kept": "Scene_Camera_soccer_shoot_001" in bpy.data.objects,
            "old_files_kept": (work_dir / "flash" / "Scene_Camera_soccer_shoot_001" / "frame_0003.png").is_file(),
            "strip_channels": sorted(s.channel for s in strips),
            "pids": pids + [engine_module.MANAGER.pid],
        }
        save("rerun")

        # 6. no active camera: a clear error, nothing created
        scene.camera = None
        before = inventory(scene)
        _, error = animate(action="soccer_shoot", **SMALL)
        record["no_camera"] = {"error": error, "before": before, "after": inventory(scene)}
        scene.camera = camera
        save("no_camera")

        # 7. kill -9 the engine during a job; the next job restarts it
        killed: list = []

        def killer():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                job = status.job
                if job is not None and job.progress.phase == "denoise" and job.progress.step >= 1:
                    pid = engine_module.MANAGER.pid
                    killed.append(pid)
                    os.kill(pid, signal.SIGKILL)
                    return
                time.sleep(0.02)

        thread = threading.Thread(target=killer, daemon=True)
        before = inventory(scene)
        thread.start()
        _, error = animate(action="soccer_shoot", frames=3, steps=400, long_side=64)
        thread.join(5)
        after = inventory(scene)
        next_result, next_error = animate(action="soccer_shoot", **SMALL)
        record["killed"] = {"killed_pid": killed[0] if killed else None, "error": error, "before": before,
                            "after": after, "next_result": next_result, "next_error": next_error,
                            "next_pid": engine_module.MANAGER.pid}
        save("killed")

        # 7b. the built-in mannequin's own actions: the dropdown offers its card's, with its sentences
        properties, services = addon("properties"), addon("services")
        settings = scene.flash
        tiny_items = [i[0] for i in properties._action_items(settings, bpy.context)]  # the tiny engine runs
        prefs.model_source = 'DEFAULT'  # the built-in default model: mannequin (no weights downloaded)
        engine_module.MANAGER.start(services.engine_config(prefs))
        engine_module.MANAGER.wait_ready(120)
        items = {i[0]: i[1] for i in properties._action_items(settings, bpy.context)}
        settings.action = "model:arm_wave"
        chosen = {"action_id": settings.action_id, "prompt": settings.prompt}
        problems = check_drawing(bpy, addon, prefs)
        panel_calls: list = []
        addon("panels").FLASH_PT_animate.draw(Drawer(Layout(panel_calls), None), bpy.context)
        result, error = animate(action="model:arm_wave", frames=2, steps=1)
        take_json = work_dir / "flash" / "Scene_Camera_arm_wave_001" / "flash.json"
        record["model_actions"] = {
            "tiny_items": tiny_items, "items": items, "chosen": chosen, "problems": problems,
            "panel_labels": [c[2].get("text", "") for c in panel_calls if c[0] == "label"],
            "result": result, "error": error,
            "take": json.loads(take_json.read_text()) if take_json.is_file() else None}
        save("model_actions")

        # 8. disable: no engine process, no registered classes, properties, handlers, modules
        pid = engine_module.MANAGER.pid
        bpy.ops.preferences.addon_disable(module=MODULE)
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        leftovers = []
        if hasattr(bpy.types.Scene, "flash"):
            leftovers.append("Scene.flash")
        leftovers += [name for name in ("FLASH_OT_animate_action", "FLASH_PT_animate", "FLASH_OT_setup_engine")
                      if hasattr(bpy.types, name)]
        handler_lists = (bpy.app.handlers.load_pre, bpy.app.handlers.depsgraph_update_post,
                         bpy.app.handlers.render_pre)
        leftovers += [f"handler {h.__module__}" for handlers in handler_lists
                      for h in handlers if h.__module__.startswith(MODULE)]
        leftovers += [name for name in sys.modules if name == "flash_engine" or name.startswith("flash_engine.")]
        leftovers += [t.name for t in threading.enumerate() if t.name.startswith("flash-")]
        leftovers += [f"timer {t}" for t in addon("operators.modal").ACTIVE_TIMERS]
        record["disabled"] = {"pid_before": pid, "pid_alive": alive, "leftovers": leftovers,
                              "still_enabled": addon_utils.check(MODULE)[1]}
    except Exception:
        record["error"] = traceback.format_exc()
    save()


if __name__ == "__main__":
    scenario(*sys.argv[1:4])
