"""Custom actions and batch runs, for real: the built extension in Blender (the bpy 5.0.1
wheel, background mode, a throw-away user directory) with the tiny engine.

1. One Blender process (``scenario``) installs the zip, trains two actions through the
   preferences' operator from clips this test made (one from chosen files with a broken
   clip among them, one from a folder: cancelled, then resumed), animates with the first,
   deletes the second, draws the preferences, and saves a two-camera shot.
2. ``blender -b shot.blend -P flash_batch.py -- ...`` runs twice, the way Blender runs it
   (``emulate_blender`` below: the user's preferences, the file, the script's arguments and
   exit code): every camera with ``--save`` (exit 0), and a real camera plus a missing one
   (exit 1; the good shot is kept and saved), after a ``--python-expr`` animate call.
3. A last process opens the saved copy and the input to see what they hold.

Sizes are tiny (64 px, 3-4 frames, 1-4 steps) so the module takes about a minute.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
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
    Drawer, Layout, ScenarioRecord, addon, build_extension_zip, call, emulate_blender, install_extension, isolated_env,
    layout_problems, use_local_engine,
)

SMALL = {"frames": 3, "steps": 1, "long_side": 64}
TRAIN = {"steps": 2, "decoder_steps": 1, "resolution": 64, "frames": 4, "stride": 1}
BROKEN = b"this is not a video, whatever its name says\n" * 4


# ---------------------------------------------------------------------------------------
# pytest side


def _run(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, __file__, *map(str, args)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    from tests.support.clipgen import make_clips

    tmp = tmp_path_factory.mktemp("blender-train")
    zip_path = build_extension_zip(tmp / "dist")
    clips = make_clips(tmp / "clips", count=3, frames=8)  # clip0.mp4, clip1/ (frames), clip2.mp4
    (clips / "broken.mp4").write_bytes(BROKEN)
    (clips / "notes.txt").write_text("not a clip\n")
    env, work = isolated_env(tmp), tmp / "work"
    out = tmp / "record.json"
    proc = _run(["scenario", zip_path, work, out, clips], env, tmp)
    log = proc.stdout[-8000:] + proc.stderr[-6000:]
    assert out.is_file(), f"the Blender scenario wrote no record (exit {proc.returncode}):\n{log}"
    data = json.loads(out.read_text())
    data["_log"], data["_stdout"], data["_clips"], data["_work"] = log, proc.stdout, str(clips), str(work)
    if "shot" not in data:
        return data

    blend = work / "shot.blend"
    script = Path(data["install"]["extension_dir"]) / "flash_batch.py"
    data["input_mtime"] = blend.stat().st_mtime_ns
    good = _run(["blender", "-b", blend, "--python-exit-code", "1", "-P", script, "--", "--cameras", "all",
                 "--frames", 3, "--steps", 1, "--long-side", 64, "--mp4", "--save"], env, tmp)
    data["batch_ok"] = {"code": good.returncode, "stdout": good.stdout, "stderr": good.stderr[-4000:]}
    expr = "import bpy; bpy.ops.flash.animate_action(action='push_up', frames=3, steps=1, long_side=64, output='VSE')"
    bad = _run(["blender", "-b", blend, "--python-exit-code", "1", "--python-expr", expr, "-P", script, "--",
                "--camera", "Camera", "--camera", "Nope", "--frames", 3, "--steps", 1, "--long-side", 64,
                "--out", "//batch2", "--save", "//shot_bad.blend"], env, tmp)
    data["batch_bad"] = {"code": bad.returncode, "stdout": bad.stdout, "stderr": bad.stderr[-4000:]}
    inspected = tmp / "inspect.json"
    _run(["inspect", inspected, blend, work / "shot_flash.blend", work / "shot_bad.blend"], env, tmp)
    data["inspect"] = json.loads(inspected.read_text()) if inspected.is_file() else {}
    data["input_mtime_after"] = blend.stat().st_mtime_ns
    return data


def part(record: dict, name: str) -> dict:
    if name not in record:
        pytest.fail(f"the scenario did not reach '{name}': {record.get('error', '')}\n{record['_log']}")
    return record[name]


def test_training_from_chosen_files_lands_in_the_dropdown_and_animates_with_its_weights(world):
    trained = part(world, "trained")
    assert trained["result"] == ["FINISHED"], trained
    folder = Path(trained["actions_dir"]) / "disc_roll"
    assert trained["action_files"] == ["action.toml", "decoder.safetensors", "sources.json", "unet.safetensors"]
    assert "trained:disc_roll" in trained["items"]  # in the sidebar's dropdown, no refresh needed
    assert trained["label"] == "Disc Roll (trained)"
    # stored in the extension's user directory, never inside the add-on's own folder
    assert not trained["actions_dir"].startswith(world["install"]["extension_dir"])
    assert trained["actions_dir"].endswith("flash_previs/actions")
    animate = part(world, "animate_trained")
    assert animate["result"] == ["FINISHED"], animate
    assert animate["metadata"]["action"]["weights"] == str(folder.resolve())
    assert animate["metadata"]["action"]["base_model_only"] is False
    assert animate["plane"] == "Scene_Camera_disc_roll_001"


def test_chosen_files_are_staged_not_moved_and_the_action_names_the_users_clips(world):
    trained = part(world, "trained")
    clips = Path(world["_clips"])
    assert trained["users_files_kept"]
    assert trained["staging_left"] == []  # staged clips and the saved request are gone once it is trained
    sources = trained["sources"]
    assert sources["clips"] == [str(clips / "clip0.mp4"), str(clips / "clip1")]
    assert trained["details"]["clip_names"] == "2 clips: clip0.mp4, clip1"
    assert trained["details"]["steps_text"] == "2 UNet + 1 decoder steps"
    assert trained["details"]["base_model"].startswith("tiny-")


def test_a_bad_clip_is_reported_before_and_after_and_training_goes_on(world):
    trained = part(world, "trained")
    assert trained["precheck"] == {"summary": "2 usable clips of 3 (1 will be skipped); video lengths are checked "
                                              "when training starts",
                                   "bad": ["broken.mp4: not a readable video (its first bytes are not MP4/MOV, "
                                           "WebM/MKV, GIF or AVI)"]}
    broken = str(Path(world["_clips"]) / "broken.mp4")
    notes = trained["notes"]
    assert notes[0].startswith("skipped before training: broken.mp4: not a readable video")
    # the engine's own report, with the user's path (not the staged link)
    assert notes[1] == f"skipped by the engine: {broken}: not a readable video (corrupt, or not a video file)"
    assert trained["sources"]["clips_skipped"] == [f"{broken}: not a readable video (corrupt, or not a video file)"]
    assert f"FLASH train: skipped by the engine: {broken}" in world["_stdout"]
    assert "2 clips, 1 skipped" in trained["message"]


def test_an_interrupted_training_resumes_from_its_checkpoint(world):
    resume = part(world, "resume")
    # started from the preferences' button: the operator returns at once, a timer that survives
    # file loads follows the job, and Cancel stops it at a step
    assert resume["invoked"] == ["RUNNING"] and resume["persistent_timer"] is True and resume["ticks"] > 1
    assert resume["first_result"] == ["CANCELLED"] and resume["cancelled_at"] is not None
    assert "cancelled at UNet step" in resume["first_message"] and "Resume continues" in resume["first_message"]
    assert resume["interrupted"] == [{"folder": "slide", "name": "Slide", "resumable": True}]
    assert "an interrupted training of 'Slide' is waiting (Resume it, or Discard it" in resume["refused_start"]
    assert resume["result"] == ["FINISHED"], resume
    assert resume["steps_done"] == 16 and resume["decoder_steps_done"] == 1
    assert resume["work_left"] == []
    assert "trained:slide" in resume["items"]
    # the folder's broken clip and stray file were reported, and the rest trained
    assert sorted(resume["skipped"]) == ["broken.mp4", "notes.txt"]


def test_deleting_a_trained_action_removes_it_from_the_list(world):
    deleted = part(world, "deleted")
    assert deleted["result"] == ["FINISHED"]
    assert not deleted["exists"] and "trained:slide" not in deleted["items"]
    assert "not an action folder" in deleted["outside"]


def test_the_preferences_draw_in_every_state(world):
    ui = part(world, "ui")
    assert ui["problems"] == []
    assert any("Training 'Disc Roll'" in text for text in ui["running_labels"])
    assert ui["progress_text"].startswith("Training motion (UNet) 3/20")
    assert any(text.startswith("Clips: 2 usable clips of 3") for text in ui["idle_labels"])


def test_batch_over_every_camera_gives_a_take_each_and_a_saved_copy_with_both(world):
    batch = world.get("batch_ok") or pytest.fail(f"no batch run: {world.get('error')}\n{world['_log']}")
    assert batch["code"] == 0, batch["stdout"][-3000:] + batch["stderr"]
    lines = [line for line in batch["stdout"].splitlines() if line.startswith("FLASH batch:")]
    work = Path(world["_work"])
    assert "FLASH batch: ok Scene/Camera: Scene_Camera_soccer_shoot_001, 3 frames in " \
           "//flash/Scene_Camera_soccer_shoot_001 (base model only), flash.mp4" in lines
    assert "FLASH batch: ok Scene/Side: Scene_Side_soccer_shoot_001, 3 frames in " \
           "//flash/Scene_Side_soccer_shoot_001 (base model only), flash.mp4" in lines
    assert "FLASH batch: 2 shots: 2 ok, 0 failed" in lines
    assert f"FLASH batch: saved {work / 'shot_flash.blend'}" in lines
    for take in ("Scene_Camera_soccer_shoot_001", "Scene_Side_soccer_shoot_001"):
        assert sorted(os.listdir(work / "flash" / take)) == ["flash.json", "flash.mp4", "frame_0001.png",
                                                             "frame_0002.png", "frame_0003.png"]
    saved = world["inspect"]["shot_flash.blend"]
    assert {"Scene_Camera_soccer_shoot_001", "Scene_Side_soccer_shoot_001"} <= set(saved["objects"])
    assert set(saved["strips"]) == {"Scene_Camera_soccer_shoot_001", "Scene_Side_soccer_shoot_001"}
    assert saved["camera"] == "Camera"  # the file's own active camera, put back
    # the input file is never written
    assert world["input_mtime_after"] == world["input_mtime"]
    assert not any(name.startswith("Scene_") for name in world["inspect"]["shot.blend"]["objects"])


def test_a_batch_with_a_bad_shot_reports_it_exits_1_and_keeps_the_good_one(world):
    batch = world.get("batch_bad") or pytest.fail(f"no batch run: {world.get('error')}\n{world['_log']}")
    assert batch["code"] == 1, batch["stdout"][-3000:] + batch["stderr"]
    lines = [line for line in batch["stdout"].splitlines() if line.startswith("FLASH batch:")]
    work = Path(world["_work"])
    assert "FLASH batch: ok Scene/Camera: Scene_Camera_soccer_shoot_001, 3 frames in " \
           "//batch2/Scene_Camera_soccer_shoot_001 (base model only)" in lines
    assert "FLASH batch: FAILED Scene/Nope: no camera named 'Nope' in scene 'Scene' (its cameras: Camera, Side)" \
        in lines
    assert "FLASH batch: 2 shots: 1 ok, 1 failed" in lines
    assert (work / "batch2" / "Scene_Camera_soccer_shoot_001" / "frame_0003.png").is_file()
    saved = world["inspect"]["shot_bad.blend"]
    assert "Scene_Camera_soccer_shoot_001" in saved["objects"]
    # blender -b shot.blend --python-expr "bpy.ops.flash.animate_action(...)": overrides work headless
    assert (work / "flash" / "Scene_Camera_push_up_001" / "frame_0003.png").is_file()
    assert "Scene_Camera_push_up_001" in saved["strips"] and "Scene_Camera_push_up_001" not in saved["objects"]


# ---------------------------------------------------------------------------------------
# Blender side


def inspect(out: str, *blends: str) -> None:  # pragma: no cover - runs in Blender
    import bpy

    found = {}
    for blend in blends:
        if not Path(blend).is_file():
            found[Path(blend).name] = {"missing": True, "objects": [], "strips": []}
            continue
        bpy.ops.wm.open_mainfile(filepath=blend)
        scene = bpy.data.scenes["Scene"]
        found[Path(blend).name] = {
            "objects": sorted(o.name for o in bpy.data.objects),
            "strips": sorted(s.name for s in scene.sequence_editor.strips) if scene.sequence_editor else [],
            "camera": scene.camera.name if scene.camera else None,
        }
    Path(out).write_text(json.dumps(found, indent=1))


def scenario(zip_path: str, work: str, out: str, clips: str) -> None:  # pragma: no cover - runs in Blender
    import time

    import bpy

    work_dir, clips_dir = Path(work), Path(clips)
    work_dir.mkdir(parents=True)
    scenario_record = ScenarioRecord(out)  # its timings: seconds since here
    record, save = scenario_record.record, scenario_record.save

    try:
        result = install_extension(zip_path)
        extension_dir = bpy.utils.user_resource("EXTENSIONS", path="user_default/flash_previs")
        record["install"] = {"result": result, "extension_dir": extension_dir,
                             "script": (Path(extension_dir) / "flash_batch.py").is_file()}
        prefs = use_local_engine('TINY')  # the engine runs in this test's own interpreter
        bpy.ops.wm.save_userpref()  # the batch runs below start from these preferences
        status, catalog = addon("progress").STATUS, addon("services").get_catalog()
        actions_dir = addon("services").actions_dir()
        scene = bpy.context.scene
        scene.render.engine = 'CYCLES'
        scene.cycles.samples = 1
        scene.cycles.device = 'CPU'
        scene.render.resolution_x, scene.render.resolution_y = 640, 480
        save("install")

        # 1. train from chosen files: a video, one clip's frames (as images), a broken "video"
        files = [clips_dir / "clip0.mp4", *sorted((clips_dir / "clip1").iterdir()), clips_dir / "broken.mp4"]
        prefs.train_source = 'FILES'
        for path in files:
            prefs.train_files.add().path = str(path)
        prefs.train_name, prefs.train_prompt = "Disc Roll", "a disc is rolling."
        for key, value in TRAIN.items():
            setattr(prefs, "train_" + key, value)
        check = addon("services").clip_check(prefs)
        precheck = {"summary": check.summary(), "bad": check.lines()}
        result, error = call(bpy.ops.flash.train_action)
        folder = actions_dir / "disc_roll"
        settings = scene.flash
        items = [item[0] for item in addon("properties")._action_items(settings, bpy.context)]
        details = addon("training").trained_details(folder)
        record["trained"] = {
            "result": result, "error": error, "precheck": precheck, "actions_dir": str(actions_dir),
            "action_files": sorted(os.listdir(folder)) if folder.is_dir() else None, "items": items,
            "label": next((a.label for a in catalog.refresh() if a.id == "trained:disc_roll"), None),
            "notes": list(status.train_notes), "message": status.train_message or status.train_error,
            "sources": json.loads((folder / "sources.json").read_text()) if (folder / "sources.json").is_file()
            else None,
            "users_files_kept": all(p.is_file() for p in files),
            "staging_left": sorted(p.name for p in actions_dir.iterdir() if p.name.startswith(".")),
            "details": {"clip_names": details.clip_names, "steps_text": details.steps_text,
                        "base_model": details.base_model, "date": details.date},
        }
        save("trained")

        # ... and animate with it: the action's weights are used
        bpy.ops.wm.save_as_mainfile(filepath=str(work_dir / "trained.blend"))
        result, error = call(bpy.ops.flash.animate_action, action="trained:disc_roll", output='PLANE', **SMALL)
        take = work_dir / "flash" / "Scene_Camera_disc_roll_001"
        record["animate_trained"] = {
            "result": result, "error": error,
            "metadata": json.loads((take / "flash.json").read_text()) if (take / "flash.json").is_file() else None,
            "plane": "Scene_Camera_disc_roll_001" if "Scene_Camera_disc_roll_001" in bpy.data.objects else None}
        save("animate_trained")

        # 2. train from a folder (through the preferences' fields) the way the UI's button does
        #    (Blender calls invoke only with a window event, so its two lines are done here):
        #    the job starts, an application timer follows it (called here as Blender would);
        #    Cancel once it has stepped; then Resume.
        prefs.train_source, prefs.train_folder = 'FOLDER', str(clips_dir)
        # 16 steps: enough that a cancel sent after step 1 lands mid-run even on a fast machine
        prefs.train_name, prefs.train_prompt, prefs.train_steps = "Slide", "a disc is sliding.", 16
        ops_training, registered = addon("operators.training"), []
        real_bpy = ops_training.bpy

        class Timers:  # records what the operator hands to bpy.app.timers
            def register(self, function, first_interval=0.0, persistent=False):
                registered.append((function, persistent))

            def is_registered(self, function):
                return any(f is function for f, _ in registered)

            def unregister(self, function):
                registered[:] = [(f, p) for f, p in registered if f is not function]

        class App:
            background, timers = False, Timers()

            def __getattr__(self, name):
                return getattr(real_bpy.app, name)

        class UIBpy:  # bpy as the UI sees it: not background, timers recorded
            app = App()

            def __getattr__(self, name):
                return getattr(real_bpy, name)

        ops_modal = addon("operators.modal")  # the job loop's timers (the operator's own follow the UI's bpy too)
        ops_training.bpy = ops_modal.bpy = UIBpy()
        cancelled_at, ticks = [], 0
        try:
            status.clear_train_messages()
            ops_training.follow_in_ui(ops_training.begin_training(bpy.context, {}))
            invoked = ["RUNNING" if status.training_busy else status.train_error]
            timer, persistent = registered[0] if registered else (None, None)
            deadline = time.monotonic() + 120
            while timer is not None and time.monotonic() < deadline:
                job = status.training
                if not cancelled_at and job.progress.phase == "unet" and job.progress.step >= 1:
                    cancelled_at.append(job.progress.step)
                    bpy.ops.flash.train_cancel()
                delay = timer()
                ticks += 1
                if delay is None:
                    break
                time.sleep(delay)
        finally:
            ops_training.bpy = ops_modal.bpy = real_bpy
        first_result = ["CANCELLED"] if status.training is not None and status.training.state == "cancelled" else \
            [getattr(status.training, "state", None)]
        first_message = status.train_message or status.train_error
        interrupted = [{"folder": i.folder, "name": i.name, "resumable": i.resumable}
                       for i in addon("training").interrupted_trainings(actions_dir)]
        _, refused = call(bpy.ops.flash.train_action)
        result, error = call(bpy.ops.flash.train_action, resume=True, action_name="Slide")
        slide = addon("training").trained_details(actions_dir / "slide")
        record["resume"] = {
            "invoked": invoked, "persistent_timer": persistent, "ticks": ticks, "first_result": first_result,
            "cancelled_at": cancelled_at[0] if cancelled_at else None,
            "first_message": first_message, "interrupted": interrupted, "refused_start": refused,
            "result": result, "error": error, "steps_done": slide.steps, "decoder_steps_done": slide.decoder_steps,
            "skipped": sorted(Path(line.split(": ")[0]).name for line in slide.clips_skipped),
            "work_left": sorted(p.name for p in actions_dir.iterdir() if p.name.startswith(".")),
            "items": [item[0] for item in addon("properties")._action_items(settings, bpy.context)],
            "message": status.train_message or status.train_error}
        save("resume")

        # 3. the preferences draw: idle (files chosen), while training, with both lists
        prefs.train_source = 'FILES'
        calls: list = []
        type(prefs).draw(Drawer(Layout(calls), prefs), bpy.context)
        idle_labels = [kw.get("text", "") for name, _, kw in calls if name == "label"]
        problems = layout_problems(bpy, calls)
        fake = addon("training").TrainJob.__new__(addon("training").TrainJob)
        fake.state, fake.meta = "running", {"name": "Disc Roll", "folder": "x"}
        fake.progress = addon("training").TrainProgress("unet", 3, 20, 42.0, 0.125, 20, 10)
        status.training = fake
        work_fake = actions_dir / ".ghost.training"  # an interrupted training started elsewhere
        work_fake.mkdir()
        (work_fake / "checkpoint.json").write_text(json.dumps({"phase": "decoder", "step": 2,
                                                               "config": {"steps": 5, "decoder_steps": 3}}))
        calls = []
        type(prefs).draw(Drawer(Layout(calls), prefs), bpy.context)
        problems += layout_problems(bpy, calls)
        panel_calls: list = []
        addon("panels").FLASH_PT_animate.draw(Drawer(Layout(panel_calls), None), bpy.context)
        problems += layout_problems(bpy, panel_calls)
        status.training = None
        work_fake.joinpath("checkpoint.json").unlink()
        work_fake.rmdir()
        record["ui"] = {"problems": problems, "idle_labels": idle_labels,
                        "running_labels": [kw.get("text", "") for name, _, kw in calls if name == "label"],
                        "progress_text": next((kw["text"] for name, _, kw in calls if name == "progress"), "")}
        save("ui")

        # 4. delete one (background mode: the confirmation is skipped); nothing outside the folder
        result, _ = call(bpy.ops.flash.delete_action, folder="slide")
        _, outside = call(bpy.ops.flash.delete_action, folder="..")
        record["deleted"] = {"result": result, "exists": (actions_dir / "slide").exists(), "outside": outside,
                             "items": [item[0] for item in addon("properties")._action_items(settings, bpy.context)]}
        save("deleted")

        # 5. the batch's shot: a second camera, saved (the engine here stops: the batch starts its own)
        bpy.ops.wm.read_homefile(use_empty=False)
        scene = bpy.context.scene
        scene.render.engine = 'CYCLES'
        scene.cycles.samples = 1
        scene.cycles.device = 'CPU'
        scene.render.resolution_x, scene.render.resolution_y = 640, 480
        camera = scene.camera
        side = bpy.data.objects.new("Side", camera.data.copy())
        scene.collection.objects.link(side)
        side.location, side.rotation_euler = (8.0, 0.0, 1.0), (1.45, 0.0, 1.57)
        bpy.ops.wm.save_as_mainfile(filepath=str(work_dir / "shot.blend"))
        record["shot"] = {"cameras": sorted(o.name for o in scene.objects if o.type == 'CAMERA')}
        addon("engine").MANAGER.shutdown()
        save("shot")
    except Exception:
        record["error"] = traceback.format_exc()
    save()


if __name__ == "__main__":
    if sys.argv[1] == "scenario":
        scenario(*sys.argv[2:6])
    elif sys.argv[1] == "blender":
        emulate_blender(sys.argv[2:])
    elif sys.argv[1] == "inspect":
        inspect(*sys.argv[2:])
