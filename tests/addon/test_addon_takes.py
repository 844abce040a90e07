"""The add-on's animate use case without Blender: the take planner (``takes.py``), the
schema's limits on the add-on's settings (``request_limits.py``), the shared job loop
(``job_loop.py``) and the model's limits the engine reports."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flash_blender import takes
from flash_blender.catalog import ActionInfo
from flash_blender.engine import EngineConfig, EngineManager
from flash_blender.errors import PlanError
from flash_blender.job_loop import JobLoop, Outcome, changed_lines, run_blocking
from flash_blender.progress import AnimateJob
from flash_blender.take_planning import OutputRoot, blend_relative, plan_take
from flash_engine import requests
from tests.support.fake_client import FakeClient

from tests.conftest import REPO  # noqa: E402
MANNEQUIN_LIMITS = {"width": 64, "height": 64, "max_frames": 32, "latent_channels": 4, "fps": 8}
PRESET = ActionInfo(id="soccer_shoot", name="Soccer Shoot", prompt="a person is shooting a soccer ball.",
                    source="preset", weights=None, path="/presets/soccer_shoot.toml")
SHOT = takes.Shot(scene="Scene", camera="Camera", frame=7, resolution_x=1920, resolution_y=1080)


def choice(**changes) -> takes.TakeChoice:
    base = takes.TakeChoice(action=PRESET, prompt="", seed=42, frames=16, steps=25, guidance=7.5, long_side=None)
    return dataclasses.replace(base, **changes)


def planned(tmp_path, model_limits=None, **changes):
    plan = plan_take(tmp_path / "flash", "Scene", "Camera", PRESET.slug)
    root = OutputRoot(tmp_path / "flash", in_project=True)
    return takes.plan_animate(choice(**changes), SHOT, plan, root, model_limits)


# ---------------------------------------------------------------------------------------
# The planner


def test_native_size_leaves_the_size_to_the_engine_and_renders_the_reference_at_the_models(tmp_path):
    take, args = planned(tmp_path, MANNEQUIN_LIMITS)
    assert not {"width", "height", "long_side"} & set(args)  # the engine uses the model's own size
    assert take.native_size and take.reference_size == (64, 40)  # 16:9 at the mannequin's 64
    # the request is one the engine's schema takes, and says what the user chose
    request = requests.parse("animate", args)
    assert (request.frames, request.steps, request.guidance, request.seed) == (16, 25, 7.5, 42)
    assert request.prompt == PRESET.prompt and request.action == PRESET.path
    assert args["out"] == str((tmp_path / "flash" / "Scene_Camera_soccer_shoot_001").resolve())
    assert args["image"] == str(take.reference.resolve())


def test_before_the_engine_says_its_size_the_reference_is_rendered_at_the_fallback(tmp_path):
    take, args = planned(tmp_path, None)
    assert "width" not in args and take.reference_size == (takes.REFERENCE_LONG_SIDE, 288)


def test_a_long_side_the_user_set_gives_both_sides_at_the_camera_aspect(tmp_path):
    take, args = planned(tmp_path, MANNEQUIN_LIMITS, long_side=256, prompt="  a person waves. ", mp4=True)
    assert (args["width"], args["height"]) == take.reference_size == (256, 144)
    assert not take.native_size and args["prompt"] == take.prompt == "a person waves."
    assert args["mp4"] is True


def test_the_clip_size_steps_by_the_models_own_multiple_and_by_8_before_it_is_known(tmp_path):
    limits_4x = {**MANNEQUIN_LIMITS, "size_multiple": 4}  # a 4x VAE: sizes in steps of 4
    take, _ = planned(tmp_path, limits_4x)
    assert take.reference_size == (64, 36)  # 16:9 at 64: 36, a multiple of 4 (8 would give 40)
    take, args = planned(tmp_path, limits_4x, long_side=100)
    assert (args["width"], args["height"]) == take.reference_size == (100, 56)
    assert requests.parse("animate", args).width == 100  # the schema leaves the step to the model
    take, args = planned(tmp_path, None, long_side=100)  # not known yet: Stable Diffusion's 8
    assert (args["width"], args["height"]) == (104, 56)
    assert takes.size_text(SHOT, None, limits_4x) == "Clip: 64 × 36 px (the model's native size, camera aspect)"


def test_a_size_the_engines_model_cannot_take_is_refused_in_one_line_once_it_says_hello():
    takes.check_model_limits({"width": 104, "height": 56}, {"size_multiple": 8})
    with pytest.raises(PlanError) as err:  # planned in steps of 8, the engine's model steps by 16
        takes.check_model_limits({"width": 104, "height": 64}, {"size_multiple": 16})
    assert str(err.value) == ("a width of 104 is not a multiple of 16, this model's size step (animate again: "
                              "the engine runs now, so the size is planned in steps of 16)")


def test_the_take_record_is_frozen_and_copies_the_plan(tmp_path):
    take, _ = planned(tmp_path, None, output="PLANE", plane_distance=4.0, outside="HIDE")
    assert (take.name, take.folder, take.reference) == (take.plan.name, take.plan.folder, take.plan.reference)
    assert (take.scene, take.camera, take.frame_start, take.output, take.distance, take.outside) == (
        "Scene", "Camera", 7, "PLANE", 4.0, "HIDE")
    assert take.base_model_only and take.action == "soccer_shoot"
    with pytest.raises(dataclasses.FrozenInstanceError):
        take.seed = 1
    assert take.tags("//flash/x") == {"take": take.name, "action": "soccer_shoot", "camera": "Camera", "seed": 42,
                                      "prompt": PRESET.prompt, "folder": "//flash/x"}


def test_more_frames_than_the_model_takes_are_refused_in_one_line_before_the_job(tmp_path):
    with pytest.raises(PlanError) as err:
        planned(tmp_path, MANNEQUIN_LIMITS, frames=40)
    assert str(err.value) == "40 frames is more than this model's motion takes (32) (set Frames to 32 or fewer)"
    assert not (tmp_path / "flash").exists()  # planning creates nothing
    planned(tmp_path, MANNEQUIN_LIMITS, frames=32)  # the model's most is fine
    planned(tmp_path, None, frames=40)  # not known yet: the job checks it when the engine has said hello


def test_what_the_schema_refuses_is_refused_before_the_job(tmp_path):
    with pytest.raises(PlanError, match=r"'frames' must be between 2 and 64 \(got 100\)"):
        planned(tmp_path, None, frames=100)  # a batch's --frames is not clamped by a Blender property
    with pytest.raises(PlanError, match="'guidance' must be between 0 and 30"):
        planned(tmp_path, None, guidance=31.0)
    with pytest.raises(PlanError, match="unknown output"):
        planned(tmp_path, None, output="MOVIE")


def test_the_import_reads_the_result_the_engine_returned(tmp_path):
    out = tmp_path / "resolved" / "take_001"
    result = {"out": str(out), "frames": [str(out / "frame_0001.png"), str(out / "frame_0002.png")],
              "mp4": None, "metadata": {"fps": 12.0}}
    got = takes.take_result(result)
    assert got.folder == out and got.frames == (out / "frame_0001.png", out / "frame_0002.png")
    assert got.fps == 12.0
    assert takes.take_result({**result, "metadata": {}}).fps == 8.0  # the engine's default speed
    with pytest.raises(PlanError, match="no frames"):
        takes.take_result({"out": str(out), "frames": []})


def test_the_resolved_folder_the_engine_reports_is_still_stored_blend_relative(tmp_path):
    real = tmp_path / "real"
    (real / "flash" / "t_001").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    blend = str(link / "shot.blend")  # Blender names the .blend through the symlink
    assert blend_relative(real / "flash" / "t_001", blend) == "//flash/t_001"
    assert blend_relative(link / "flash" / "t_001", blend) == "//flash/t_001"
    assert blend_relative(tmp_path / "elsewhere", blend) == str(tmp_path / "elsewhere")


def test_the_panel_says_the_clip_size_and_a_frame_count_the_model_cannot_take():
    assert takes.size_text(SHOT, None, MANNEQUIN_LIMITS) == "Clip: 64 × 40 px (the model's native size, camera aspect)"
    assert "shown once the engine runs" in takes.size_text(SHOT, None, None)
    assert takes.size_text(SHOT, 512, MANNEQUIN_LIMITS) == "Clip: 512 × 288 px (camera aspect)"
    assert takes.frames_problem(16, MANNEQUIN_LIMITS) == ""
    assert "set Frames to 32 or fewer" in takes.frames_problem(33, MANNEQUIN_LIMITS)
    assert takes.native_long_side({"width": 64, "height": 96}) == 96
    assert takes.native_long_side({}) is None and takes.native_long_side(None) is None


# ---------------------------------------------------------------------------------------
# The model's limits, from the engine's hello


def test_a_card_action_sends_the_sentence_the_model_was_trained_on(tmp_path):
    from flash_blender.catalog import Catalog

    catalog = Catalog(presets_dir=None, actions_dir=None, load_preset=None)
    catalog.use_model({"model": "mannequin", "learned": [{"id": "arm_wave", "prompt": "a person is waving an arm."}],
                       "held_out": []})
    take, args = planned(tmp_path, action=catalog.get("model:arm_wave"))
    assert args["prompt"] == take.prompt == "a person is waving an arm."
    # the card's id, not a preset file (the preset's sentence is not the one learned); the engine's
    # card wins over a preset of the same name
    assert args["action"] == "arm_wave" and "weights" not in args
    assert requests.parse("animate", args).prompt == "a person is waving an arm."
    assert take.action == "model:arm_wave" and take.base_model_only


CONFIG = EngineConfig(python="/env/bin/python", serve_args=("--model", "mannequin"))


@pytest.fixture
def manager():
    clients: list[FakeClient] = []

    def factory(config):
        clients.append(FakeClient(config, model_limits=MANNEQUIN_LIMITS))
        return clients[-1]

    manager = EngineManager(client_factory=factory)
    manager.clients = clients
    yield manager
    manager.shutdown()


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_the_manager_reports_the_running_models_limits(manager):
    assert manager.model_limits() is None  # nothing runs yet
    manager.start(CONFIG)
    wait_until(lambda: manager.ready() is not None)
    assert manager.model_limits() == MANNEQUIN_LIMITS == manager.model_limits(CONFIG)
    assert manager.model_limits(EngineConfig(python="/other/python")) is None  # another engine would start


def test_a_job_with_more_frames_than_the_started_model_takes_is_never_submitted(manager):
    job = AnimateJob(manager, CONFIG, {"image": "/r.png", "out": "/o", "frames": 40})
    wait_until(job.tick)
    assert job.state == "failed" and manager.clients[0].submitted == []
    assert job.error_line == "40 frames is more than this model's motion takes (32) (set Frames to 32 or fewer)"
    fits = AnimateJob(manager, CONFIG, {"image": "/r.png", "out": "/o", "frames": 32})
    wait_until(lambda: fits.tick() or fits.state == "running")
    assert manager.clients[0].submitted == [("animate", {"image": "/r.png", "out": "/o", "frames": 32})]


# ---------------------------------------------------------------------------------------
# The job loop every long job runs on


def test_run_blocking_prints_each_new_line_and_returns_the_outcome():
    states, printed, slept = iter([False, False, False, True]), [], []
    texts = iter(["Loading", "Loading", "Denoising 1/2", "Denoising 2/2"])
    finished = []
    loop = JobLoop(advance=lambda: next(states), finish=lambda: finished.append(1) or Outcome(True, "done"),
                   lines=changed_lines(lambda: next(texts)), interval=0.25)
    outcome = run_blocking(loop, report=printed.append, sleep=slept.append)
    assert outcome == Outcome(True, "done") and outcome.report_level == "INFO" and finished == [1]
    assert printed == ["FLASH: Loading", "FLASH: Denoising 1/2", "FLASH: Denoising 2/2"]
    assert slept == [0.25] * 3  # between advances, not after the last
    assert Outcome(False, "x").report_level == "ERROR" and Outcome(False, "x", "WARNING").report_level == "WARNING"


def test_ctrl_c_stops_the_job_waits_for_it_and_finishes_it_before_raising_again():
    events, clock = [], [0.0]

    def advance():
        if "stop" not in events:
            raise KeyboardInterrupt
        events.append("advance")
        return events.count("advance") == 3  # the job takes three more ticks to stop

    def sleep(seconds):
        clock[0] += seconds

    loop = JobLoop(advance=advance, finish=lambda: events.append("finish") or Outcome(False),
                   stop=lambda: events.append("stop"), interval=1.0, stop_wait=30.0)
    with pytest.raises(KeyboardInterrupt):
        run_blocking(loop, sleep=sleep, clock=lambda: clock[0])
    assert events == ["stop", "advance", "advance", "advance", "finish"]


def test_changed_lines_throttles_within_a_phase_but_shows_every_new_phase():
    now, state = [0.0], {"text": "UNet 1/9", "phase": "unet"}
    lines = changed_lines(lambda: state["text"], prefix="FLASH train: ", every_s=2.0,
                          phase=lambda: state["phase"], clock=lambda: now[0])
    assert lines() == ["FLASH train: UNet 1/9"]
    state["text"], now[0] = "UNet 2/9", 1.0
    assert lines() == []  # too soon
    now[0] = 2.5
    assert lines() == ["FLASH train: UNet 2/9"]
    state.update(text="Decoder 1/5", phase="decoder")
    assert lines() == ["FLASH train: Decoder 1/5"]  # a new phase shows at once
    assert lines() == []  # nothing new


# ---------------------------------------------------------------------------------------
# The add-on's settings take their limits and defaults from the request schema


PROPERTY_RECORD = """
import json, sys
import bpy
import flash_blender.registration as registration

registration.register()
def props(rna):
    return {p.identifier: {"min": getattr(p, "hard_min", None), "max": getattr(p, "hard_max", None),
                           "default": getattr(p, "default", None)}
            for p in rna.properties if p.type in ("INT", "FLOAT")}
record = {"scene": props(registration.properties.FlashSceneSettings.bl_rna),
          "animate": props(bpy.ops.flash.animate_action.get_rna_type()),
          "batch": props(bpy.ops.flash.batch_animate.get_rna_type()),
          "train": props(bpy.ops.flash.train_action.get_rna_type()),
          "prefs": props(registration.preferences.FLASH_AddonPreferences.bl_rna)}
registration.unregister()
print("RECORD" + json.dumps(record))
"""


@pytest.fixture(scope="module")
def blender_properties() -> dict:
    if importlib.util.find_spec("bpy") is None:
        pytest.skip("needs the bpy 5.0.1 wheel (the test extra)")
    proc = subprocess.run([sys.executable, "-c", PROPERTY_RECORD], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    line = next((line for line in proc.stdout.splitlines() if line.startswith("RECORD")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(line[len("RECORD"):])


BLENDER_INT_MAX = 2**31 - 1  # IntProperty is 32-bit: a limit above it (seed's 2^64-1) is clamped to it


def schema_limits(request_class, name) -> tuple:
    spec = requests.specs(request_class)[name]
    return spec.minimum, min(spec.maximum, BLENDER_INT_MAX) if spec.kind is int else spec.maximum


@pytest.mark.parametrize("where", ["scene", "animate", "batch"])
def test_the_take_settings_have_the_schemas_limits_and_defaults(blender_properties, where):
    props = blender_properties[where]
    for name in ("frames", "steps", "guidance", "seed", "long_side"):
        got = props[name]
        assert (got["min"], got["max"]) == pytest.approx(schema_limits(requests.AnimateRequest, name)), (where, name)
    defaults = {"frames": requests.DEFAULT_FRAMES, "steps": requests.DEFAULT_STEPS,
                "guidance": requests.DEFAULT_GUIDANCE}
    for name, value in defaults.items():
        assert props[name]["default"] == pytest.approx(value), (where, name)
    assert props["seed"]["max"] == BLENDER_INT_MAX  # the schema's 2^64-1, as far as Blender goes
    # the corrected limits: frames 2-64, steps 1-1000, guidance 0-30 everywhere
    assert (props["frames"]["min"], props["frames"]["max"]) == (2, 64)
    assert (props["steps"]["min"], props["steps"]["max"]) == (1, 1000)
    assert (props["guidance"]["min"], props["guidance"]["max"]) == (0.0, 30.0)


def test_the_training_settings_have_the_schemas_limits(blender_properties):
    fields = {"steps": "steps", "decoder_steps": "decoder_steps", "frames": "frames", "stride": "stride"}
    for where, prefix in (("train", ""), ("prefs", "train_")):
        for prop, name in fields.items():
            got = blender_properties[where][prefix + prop]
            assert (got["min"], got["max"]) == schema_limits(requests.TrainRequest, name), (where, prop)
