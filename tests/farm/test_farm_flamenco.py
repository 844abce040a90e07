"""The Flamenco job type (farm/flamenco/flash_previs.js) compiled by Node against a stand-in
of Flamenco 3's job-compiler API (tests/support/flamenco_harness.js): the tasks, their
commands and arguments, dependencies and names; the settings the Flamenco add-on evaluates
in Blender at submission (evaluated here against a stand-in of ``bpy.context``); bad
settings refused at submission with one line. The shot tasks' arguments are read back with
flash_batch's own parser, so the job type and the script cannot drift apart."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from flash_blender import batch

from tests.support.flamenco import NODE, compile_job as _compile, eval_like_the_addon, hidden_evals

pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node.js")

BLEND = "/farm/shots/sq010/sh020.blend"
ROOT = "/farm/previs"
CREATED = "2026-03-04T05:06:07"


def compile_job(settings: dict, name: str = "sh020 previs") -> dict:
    return _compile({"blendfile": BLEND, "output_root": ROOT, **settings}, name, CREATED)


def submitted_lists(cameras: list[str], markers: list[tuple[int, str, str | None]], scene="Scene") -> dict:
    """The hidden settings as the Flamenco add-on fills them: the job type's own ``eval``
    expressions, run as the add-on runs them (``eval(expr, {}, locals)``) on a stand-in context."""
    objects = [SimpleNamespace(name=n, type="CAMERA") for n in cameras] + [SimpleNamespace(name="Cube", type="MESH")]
    by_name = {o.name: o for o in objects}
    timeline = [SimpleNamespace(frame=f, name=n, camera=by_name.get(c) if c else None) for f, n, c in markers]
    context = SimpleNamespace(scene=SimpleNamespace(name=scene, objects=objects, timeline_markers=timeline))
    return eval_like_the_addon(hidden_evals(), context)


def blender_args(task: dict) -> list[str]:
    [command] = task["commands"]
    assert command["name"] == "blender-render"
    params = command["parameters"]
    assert params["exe"] == "{blender}" and params["exeArgs"] == "{blenderArgs}" and params["argsBefore"] == []
    assert params["blendfile"] == BLEND
    args = params["args"]
    assert args[:5] == ["--python-exit-code", "1", "-P", "{flash_batch}", "--"]
    return args[5:]


THREE_CAMERAS = ["Camera", "Side", "Top"]
TWO_MARKERS = [(1, "F_01", "Side"), (40, "F_40", "Top"), (60, "loose", None)]


def test_every_camera_gets_a_task_and_the_copy_waits_for_all_of_them():
    lists = submitted_lists(THREE_CAMERAS, TWO_MARKERS)
    result = compile_job({**lists, "scene": "Scene", "shots": "All cameras", "seed": 7, "clip_frames": 16,
                          "mp4": True, "action": "soccer_shoot"})
    assert result["ok"], result
    assert result["jobType"] == "flash-previs"
    tasks = result["tasks"]
    assert [t["name"] for t in tasks] == ["shot-01 Camera", "shot-02 Side", "shot-03 Top", "save-copy"]
    assert {t["type"] for t in tasks} == {"blender"}
    job_folder = f"{ROOT}/flash-jobs/sh020 previs_2026-03-04_050607"
    assert result["settings"]["job_folder"] == job_folder
    records = [f"{job_folder}/shot-0{i}.json" for i in (1, 2, 3)]
    for task, camera, record in zip(tasks, THREE_CAMERAS, records):
        assert blender_args(task) == ["--scene", "Scene", "--camera", camera, "--action", "soccer_shoot",
                                      "--seed", "7", "--frames", "16", "--mp4", "--out", ROOT, "--out-must-exist",
                                      "--record", record]
        assert task["dependencies"] == []  # shots run side by side
    save = tasks[-1]
    assert save["dependencies"] == ["shot-01 Camera", "shot-02 Side", "shot-03 Top"]
    assert blender_args(save) == ["--scene", "Scene", "--import-takes", *records,
                                  "--save", f"{job_folder}/sh020_flash.blend", "--save-numbered"]

    # flash_batch reads them as meant: one camera per task, its record; the copy imports them all
    for task, camera, record in zip(tasks, THREE_CAMERAS, records):
        options = batch.parse_args(blender_args(task))
        assert (options.mode, options.cameras, options.record, options.output_root) == ("named", [camera], record, ROOT)
        assert options.out_must_exist and options.mp4 and not options.save
        assert options.overrides == {"action": "soccer_shoot", "seed": 7, "frames": 16}
    options = batch.parse_args(blender_args(save))
    assert options.import_records == records and options.save and options.save_numbered
    assert options.save_path == f"{job_folder}/sh020_flash.blend"


def test_marker_cameras_get_a_task_per_marker_and_unbound_markers_none():
    lists = submitted_lists(THREE_CAMERAS, TWO_MARKERS)
    result = compile_job({**lists, "scene": "Scene", "shots": "Marker cameras", "save_copy": False,
                          "motion": "rig:Hero", "depth": "On"})
    assert result["ok"], result
    tasks = result["tasks"]
    assert [t["name"] for t in tasks] == ["shot-01 F_01 (Side)", "shot-02 F_40 (Top)"]  # no save-copy task
    args = blender_args(tasks[0])
    assert args[:4] == ["--scene", "Scene", "--marker", "F_01"]
    assert args[4:7] == ["--motion", "rig:Hero", "--depth"]
    options = batch.parse_args(args)
    assert options.mode == "markers" and options.markers == ["F_01"]
    assert options.overrides == {"motion": "RIG", "rig": "Hero", "depth": True}
    # flash_batch picks exactly the marker's shot
    shots = batch.select_shots(options.mode, "Scene", active="Camera", cameras=THREE_CAMERAS, markers=TWO_MARKERS,
                               marker_names=options.markers)
    assert [(s.camera, s.frame, s.marker) for s in shots] == [("Side", 1, "F_01")]


def test_names_with_spaces_and_other_scripts_stay_one_argument_each():
    cameras = ["Cam A", "Kamera Über", "カメラ 2", "Side, left"]
    lists = submitted_lists(cameras, [(5, "Début", "Kamera Über")], scene="Séquence 1")
    assert json.loads(lists["scene_cameras"]) == sorted(cameras)
    result = compile_job({**lists, "scene": "Séquence 1", "shots": "Named cameras",
                          "camera_names": " Kamera Über ,カメラ 2,Cam A"}, name="Plan séquence/2")
    assert result["ok"], result
    tasks = result["tasks"]
    assert [t["name"] for t in tasks] == ["shot-01 Kamera Über", "shot-02 カメラ 2", "shot-03 Cam A", "save-copy"]
    for task, name in zip(tasks, ["Kamera Über", "カメラ 2", "Cam A"]):
        args = blender_args(task)
        assert args[:4] == ["--scene", "Séquence 1", "--camera", name]
        assert batch.parse_args(args).cameras == [name]
    assert "/flash-jobs/Plan séquence_2_2026-03-04_050607/" in blender_args(tasks[-1])[-2]  # "/" cannot nest folders

    markers = compile_job({**lists, "scene": "Séquence 1", "shots": "Marker cameras"})
    assert markers["ok"], markers
    assert blender_args(markers["tasks"][0])[2:4] == ["--marker", "Début"]


def test_an_unknown_camera_fails_at_submission_naming_the_cameras():
    lists = submitted_lists(THREE_CAMERAS, [])
    result = compile_job({**lists, "scene": "Scene", "shots": "Named cameras", "camera_names": "Camera, Sied"})
    assert not result["ok"] and result["tasks"] == []
    assert result["error"] == ("FLASH Previs: no camera named 'Sied' in scene 'Scene' "
                               "(its cameras: Camera, Side, Top)")


@pytest.mark.parametrize("settings, error", [
    ({"scene_cameras": "[]"}, "scene 'Scene' has no cameras"),
    ({"shots": "Marker cameras", "scene_markers": '[[3, "F_03", null]]'}, "no timeline marker of scene 'Scene' has a camera bound"),
    ({"shots": "Named cameras", "camera_names": " , "}, "no camera names"),
    ({"output_root": "//flash"}, "is relative to the .blend"),
    ({"output_root": "takes/here"}, "is not an absolute path"),
    ({"output_root": "  "}, "no output root"),
    ({"motion": "video:x.mp4"}, "is not action, rig:ARMATURE or clip:PATH"),
    ({"seed": -3}, "seed must be a whole number of at least -1"),
    ({"scene_cameras": "Camera"}, "no scene_cameras list: submit it from Blender"),
])
def test_bad_settings_fail_at_submission_in_one_line(settings, error):
    base = {"scene": "Scene", "scene_cameras": json.dumps(THREE_CAMERAS), "scene_markers": "[]"}
    result = compile_job({**base, **settings})
    assert not result["ok"] and result["tasks"] == [], result
    assert error in result["error"] and "\n" not in result["error"]


def test_a_flamenco_variable_or_windows_path_is_an_absolute_output_root():
    base = {"scene": "Scene", "scene_cameras": '["Camera"]', "scene_markers": "[]"}
    for root in ("{previs}/takes", "P:\\previs", "\\\\server\\previs"):
        result = compile_job({**base, "output_root": root})
        assert result["ok"], (root, result)
        assert blender_args(result["tasks"][0])[-4:-2] == [root, "--out-must-exist"]
