"""The add-on's bpy-free logic, with plain pytest (no Blender): plane geometry, take
folders and names, sizes, timeline slots, the action list, job progress, the engine
manager, the installer runner, finding the bundled engine."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flash_blender import camera_frame as cf
from flash_blender import take_planning
from flash_blender.bundled import engine_root
from flash_blender.catalog import Catalog, read_trained_action
from flash_blender.engine import EngineConfig, EngineGone, EngineManager, serve_args
from flash_blender.installer import SetupRun, child_environment, setup_command
from flash_blender.progress import AnimateJob, Progress, format_eta, one_line
from flash_engine.client import EngineError
from tests.support.fake_client import FakeClient
from flash_engine.presets import PRESETS_DIR, load_preset

from tests.conftest import REPO  # noqa: E402
ADDON = REPO / "flash_blender"
# Modules that must import without Blender (the rest of the add-on is bpy-facing).
PURE = ("__init__", "batch", "bundled", "camera_frame", "catalog", "clipcheck", "display", "downloads", "engine",
        "installer", "take_planning", "errors", "progress", "timing", "training", "takes", "job_loop",
        "request_limits", "process_run", "rig_pose", "camera_project", "pose_file", "pose_maps", "png_files",
        "motion", "shot_queue")


def approx_corners(got, want, tol=1e-9):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=tol), (got, want)


# ---------------------------------------------------------------------------------------
# The add-on's import rules


def test_the_pure_modules_import_without_blender():
    code = ("import sys; import " + ", ".join(f"flash_blender.{m}" for m in PURE if m != "__init__")
            + "; import flash_blender; bad = [m for m in ('bpy', 'torch', 'diffusers') if m in sys.modules]; "
              "print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_addon_never_imports_the_heavy_engine_side():
    for path in ADDON.rglob("*.py"):
        heavy = _imports(path) & {"torch", "diffusers", "transformers", "numpy", "PIL", "flash_engine"}
        assert not heavy, f"{path.relative_to(REPO)} imports {heavy} (use bundled.engine_module for the client)"
    for name in PURE:
        assert "bpy" not in _imports(ADDON / f"{name}.py"), f"{name}.py must stay bpy-free"


# ---------------------------------------------------------------------------------------
# camera_frame


def test_perspective_frame_follows_lens_sensor_and_aspect():
    params = cf.CameraParams(lens=50, sensor_width=36, resolution_x=1920, resolution_y=1080)
    # 36 mm across at 50 mm: 0.72 wide at distance 1, 10 m away 7.2 m; height by the 16:9 aspect
    assert cf.frame_size(params, 10) == pytest.approx((7.2, 7.2 * 1080 / 1920))
    approx_corners(cf.frame_corners(params, 10), [(3.6, 2.025, -10), (3.6, -2.025, -10), (-3.6, -2.025, -10),
                                                  (-3.6, 2.025, -10)])


def test_auto_fit_spans_the_long_side_of_a_portrait_frame():
    params = cf.CameraParams(lens=50, sensor_width=36, sensor_height=24, resolution_x=1080, resolution_y=1920)
    assert params.fit == "VERTICAL" and params.sensor_size == 36  # AUTO always uses the width's sensor
    assert cf.frame_size(params, 50) == pytest.approx((36 * 1080 / 1920, 36))


def test_explicit_fits_use_their_own_sensor_dimension():
    horizontal = cf.CameraParams(sensor_fit="HORIZONTAL", resolution_x=1000, resolution_y=2000)
    vertical = cf.CameraParams(sensor_fit="VERTICAL", sensor_height=24, resolution_x=2000, resolution_y=1000)
    assert cf.frame_size(horizontal, 50) == pytest.approx((36, 72))
    assert cf.frame_size(vertical, 50) == pytest.approx((48, 24))


def test_pixel_aspect_changes_the_frame_shape():
    params = cf.CameraParams(resolution_x=640, resolution_y=480, pixel_aspect_x=2.0)
    width, height = cf.frame_size(params, 50)
    assert width / height == pytest.approx(1280 / 480)


def test_shift_moves_the_frame_by_the_fitted_extent():
    params = cf.CameraParams(lens=50, sensor_width=36, resolution_x=1920, resolution_y=1080, shift_x=0.5,
                             shift_y=-0.25)
    corners = cf.frame_corners(params, 50)  # fitted extent 36 at distance 50
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    assert (max(xs) + min(xs)) / 2 == pytest.approx(18.0)
    assert (max(ys) + min(ys)) / 2 == pytest.approx(-9.0)


def test_orthographic_frame_is_the_ortho_scale_at_any_distance():
    params = cf.CameraParams(type="ORTHO", ortho_scale=8, resolution_x=800, resolution_y=400, shift_x=0.25)
    for distance in (0.5, 3, 100):
        approx_corners(cf.frame_corners(params, distance), [(6, 2, -distance), (6, -2, -distance),
                                                            (-2, -2, -distance), (-2, 2, -distance)])
    assert cf.view_frame_depth(params) == 1.0


def test_frames_that_cannot_be_planes_are_refused():
    with pytest.raises(ValueError, match="no flat frame"):
        cf.CameraParams(type="PANO")
    with pytest.raises(ValueError, match="in front"):
        cf.frame_corners(cf.CameraParams(), 0)


def test_plane_distance_stays_inside_the_clipping_range():
    assert cf.clamp_distance(10, 0.1, 100) == 10
    assert 0.1 < cf.clamp_distance(0.01, 0.1, 100) < 0.11
    assert 99.8 < cf.clamp_distance(500, 0.1, 100) < 100


# ---------------------------------------------------------------------------------------
# take_planning: names, take numbers, folders, sizes, channels


def test_names_are_file_safe():
    assert take_planning.safe_name("Shot 010/cam A") == "Shot_010_cam_A"
    assert take_planning.safe_name("Kamera Ü.1") == "Kamera_Ü.1"
    assert take_planning.safe_name("../..") == "untitled"
    assert take_planning.take_prefix("Scene", "Camera", "soccer_shoot") == "Scene_Camera_soccer_shoot"


def test_take_numbers_never_reuse_anything_on_disk(tmp_path):
    plan = take_planning.plan_take(tmp_path / "flash", "Scene", "Camera", "soccer_shoot")
    assert plan.name == "Scene_Camera_soccer_shoot_001" and plan.number == 1
    assert plan.folder == tmp_path / "flash" / plan.name
    assert plan.reference == tmp_path / "flash" / "Scene_Camera_soccer_shoot_001.reference.png"
    root = tmp_path / "flash"
    (root / "Scene_Camera_soccer_shoot_001").mkdir(parents=True)
    (root / "Scene_Camera_soccer_shoot_003").mkdir()  # gaps are not filled
    assert take_planning.plan_take(root, "Scene", "Camera", "soccer_shoot").number == 4
    (root / ".Scene_Camera_soccer_shoot_004.partial-x1y2").mkdir()  # the engine at work
    assert take_planning.plan_take(root, "Scene", "Camera", "soccer_shoot").number == 5
    (root / "Scene_Camera_soccer_shoot_005.reference.png").write_bytes(b"")  # a job being prepared
    assert take_planning.plan_take(root, "Scene", "Camera", "soccer_shoot").number == 6
    (root / "Scene_Camera_push_up_009").mkdir()  # other actions and cameras count apart
    (root / "Scene_Camera_soccer_shoot_extra").mkdir()
    assert take_planning.plan_take(root, "Scene", "Camera", "soccer_shoot").number == 6
    assert take_planning.plan_take(root, "Scene", "Camera", "push_up").number == 10


def test_reserving_claims_the_reference_name_once(tmp_path):
    plan = take_planning.plan_take(tmp_path / "new" / "flash", "S", "C", "a")
    take_planning.reserve_reference(plan)
    assert plan.reference.is_file()
    assert take_planning.plan_take(plan.root, "S", "C", "a").number == 2
    with pytest.raises(take_planning.PlanError, match="appeared"):
        take_planning.reserve_reference(plan)


def test_after_an_engine_death_only_dead_engines_staging_goes(tmp_path):
    import json
    import socket

    plan = take_planning.plan_take(tmp_path, "S", "C", "a")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folders = {}
    for name, pid in (("dead", dead.pid), ("live", os.getpid())):
        folder = folders[name] = tmp_path / f".{plan.name}.partial-{name}"
        folder.mkdir()
        (folder / ".flash-owner.json").write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                                               "start": None}))
        (folder / "frame_0001.png").write_bytes(b"x")
    assert take_planning.remove_dead_staging(plan) == [folders["dead"]]
    assert not folders["dead"].exists() and (folders["live"] / "frame_0001.png").exists()  # another engine's


def test_output_root_rules(tmp_path):
    user = tmp_path / "user"
    saved = str(tmp_path / "shots" / "shot.blend")
    assert take_planning.output_root(saved, "", user) == take_planning.OutputRoot(tmp_path / "shots" / "flash", in_project=True)
    assert take_planning.output_root(saved, "//clips/ai", user).folder == tmp_path / "shots" / "clips" / "ai"
    assert take_planning.output_root(saved, str(tmp_path / "elsewhere"), user) == take_planning.OutputRoot(
        tmp_path / "elsewhere", in_project=False)
    unsaved = take_planning.output_root("", "", user)
    assert unsaved.folder == user / "takes" and not unsaved.in_project
    assert "outside the project" in unsaved.warning and "save the .blend" in unsaved.warning
    assert take_planning.output_root("", "//flash", user).warning


def test_blend_relative_paths(tmp_path):
    blend = str(tmp_path / "shot.blend")
    assert take_planning.blend_relative(tmp_path / "flash" / "t_001", blend) == "//flash/t_001"
    assert take_planning.blend_relative(Path("/elsewhere/t_001"), blend) == "/elsewhere/t_001"
    assert take_planning.blend_relative(tmp_path / "x", "") == str(tmp_path / "x")


@pytest.mark.parametrize("resolution, long_side, expected", [
    ((1920, 1080, 1, 1), 512, (512, 288)),
    ((1080, 1920, 1, 1), 512, (288, 512)),
    ((640, 480, 1, 1), 64, (64, 48)),
    ((640, 480, 2, 1), 512, (512, 192)),  # pixel aspect widens the frame
    ((2048, 858, 1, 1), 500, (504, 208)),  # long side rounded to a multiple of 8
    ((4000, 100, 1, 1), 64, (64, 8)),  # never below 8
])
def test_model_size_follows_the_camera_aspect(resolution, long_side, expected):
    x, y, px, py = resolution
    assert take_planning.model_size(x, y, long_side, px, py) == expected


@pytest.mark.parametrize("multiple, expected", [(8, (504, 208)), (4, (500, 208)), (16, (496, 208))])
def test_model_size_rounds_to_the_models_own_multiple(multiple, expected):
    assert take_planning.model_size(2048, 858, 500, multiple=multiple) == expected


def test_model_size_refuses_an_empty_frame():
    with pytest.raises(take_planning.PlanError, match="resolution"):
        take_planning.model_size(0, 1080, 512)


def test_first_free_channel_at_the_current_frame():
    strips = [(1, 1, 100), (2, 50, 60), (3, 1, 5)]
    assert take_planning.first_free_channel(strips, 10, 16) == 2  # 2 is free until 50
    assert take_planning.first_free_channel(strips, 45, 16) == 3  # 45..61 meets 2's strip; 3 ended at 5
    assert take_planning.first_free_channel([], 1, 16) == 1
    assert take_planning.first_free_channel([(1, 0, 10)], 10, 5) == 1  # end is exclusive
    with pytest.raises(take_planning.PlanError):
        take_planning.first_free_channel([(c, 0, 100) for c in range(1, 129)], 5, 5)


# ---------------------------------------------------------------------------------------
# catalog: presets + trained actions


def trained(folder: Path, name="Golf swing", prompt="a person swings a golf club.", weights=True) -> Path:
    folder.mkdir(parents=True)
    (folder / "action.toml").write_text(f'format = 1\nname = "{name}"\nprompt = "{prompt}"\nbase_model = "tiny"\n')
    if weights:
        (folder / "unet.safetensors").write_bytes(b"x")
    return folder


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    actions = tmp_path / "actions"
    trained(actions / "golf_swing")
    trained(actions / "cartwheel", name="Cartwheel", prompt="a person does a cartwheel.", weights=False)
    (actions / "broken").mkdir()
    (actions / "broken" / "action.toml").write_text("name = \n")
    (actions / "in_training").mkdir()  # no action.toml yet: not listed, not a problem
    return Catalog(presets_dir=PRESETS_DIR, actions_dir=actions, load_preset=load_preset)


def test_catalog_lists_presets_then_trained_actions(catalog):
    actions = catalog.refresh()
    ids = [a.id for a in actions]
    presets = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
    assert ids == presets + ["trained:cartwheel", "trained:golf_swing"]
    assert len(catalog.problems) == 1 and "broken" in catalog.problems[0] and "re-run the training" in \
        catalog.problems[0]


def test_actions_without_weights_are_marked_base_model_only(catalog):
    soccer = catalog.get("soccer_shoot")
    assert soccer.base_model_only and soccer.label == "Soccer shoot (base model only)"
    assert soccer.prompt == "a person is shooting a soccer ball." and soccer.frames == 16
    assert soccer.request_args() == {"action": str(PRESETS_DIR / "soccer_shoot.toml")}
    golf = catalog.get("trained:golf_swing")
    assert not golf.base_model_only and golf.label == "Golf swing (trained)"
    assert golf.request_args() == {"weights": golf.weights} and golf.slug == "golf_swing"
    cartwheel = catalog.get("trained:cartwheel")
    assert cartwheel.base_model_only and cartwheel.request_args() == {}


def test_catalog_finds_by_id_name_or_folder(catalog):
    assert catalog.find("soccer_shoot").id == "soccer_shoot"
    assert catalog.find("Soccer shoot").id == "soccer_shoot"
    assert catalog.find("push-up").id == "push_up"
    assert catalog.find("golf_swing").id == "trained:golf_swing"
    assert catalog.find("Golf Swing").id == "trained:golf_swing"
    with pytest.raises(KeyError, match="did you mean soccer_shoot"):
        catalog.find("soccer")


def test_catalog_enum_items_and_refresh_on_change(catalog, tmp_path):
    items = catalog.enum_items()
    assert items[0][3] == 0 and [i[3] for i in items] == list(range(len(items)))
    assert catalog.index("trained:golf_swing") == len(items) - 1
    assert catalog.index("gone") == len(items)  # the "missing" item enum_items("gone") adds
    before = len(catalog.refresh())
    time.sleep(0.01)
    trained(tmp_path / "actions" / "archery", name="Archery")
    assert len(catalog.refresh()) == before + 1


# What an engine running a model with a card reports (``hello``'s model_actions): push's
# sentence is the push_up preset's own, so that preset is one the model learned.
TOY_REPORT = {"model": "toy",
              "learned": [{"id": "wave", "prompt": "a person waves."},
                          {"id": "push", "prompt": "a person is doing push-ups."}],
              "held_out": [{"id": "kick", "prompt": "a person kicks."}]}
NOT_LEARNED = "not learned by toy: train it first"


def test_with_a_model_card_the_list_offers_its_actions_with_their_sentences_first(catalog):
    presets = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
    catalog.use_model(TOY_REPORT)
    assert [a.id for a in catalog.refresh()] == (["model:wave", "model:push", "model:kick"] + presets
                                                 + ["trained:cartwheel", "trained:golf_swing"])
    wave = catalog.get("model:wave")
    assert wave.prompt == "a person waves." and wave.label == "Wave (learned by toy)" and wave.learned
    assert wave.request_args() == {"action": "wave"}  # the engine's card knows it (and records it)
    assert wave.slug == "wave" and catalog.find("wave") is wave and catalog.find("Wave") is wave
    assert wave.note == "Learned by toy: the base model animates its sentence"
    kick = catalog.get("model:kick")
    assert kick.label == f"Kick ({NOT_LEARNED})" and kick.prompt == "a person kicks." and kick.learned is False
    assert "held out" in kick.description and kick.note.startswith("Not learned by toy")
    soccer = catalog.get("soccer_shoot")  # a preset whose sentence the model never learned
    assert soccer.label == f"Soccer shoot ({NOT_LEARNED})" and soccer.learned is False
    assert soccer.request_args() == {"action": str(PRESETS_DIR / "soccer_shoot.toml")}
    assert catalog.get("push_up").label == "Push-up (learned by toy)"
    assert catalog.get("trained:golf_swing").label == "Golf swing (trained)"  # its own weights
    items = catalog.enum_items()
    assert items[0] == ("model:wave", "Wave (learned by toy)", wave.description, 0)
    assert [i[3] for i in items] == list(range(len(items)))
    assert catalog.index("model:kick") == 2

    catalog.use_model(None)  # an engine whose model has no card (tiny, SD 1.5): the list as without one
    assert [a.id for a in catalog.refresh()] == presets + ["trained:cartwheel", "trained:golf_swing"]
    assert catalog.get("soccer_shoot").label == "Soccer shoot (base model only)"
    assert catalog.get("soccer_shoot").learned is None


def test_a_scenes_card_action_waits_for_the_engine_to_report_its_card(catalog):
    # a new session: no engine has run yet, the scene (saved earlier) asks for a card action
    waiting = catalog.find("model:wave")
    # the engine resolves it by its card: a script's animate_action(action="model:wave") has no
    # scene prompt to carry the sentence (it used to reach the engine as "no action and no prompt")
    assert waiting.id == "model:wave" and waiting.request_args() == {"action": "wave"}
    assert catalog.get("model:wave") == waiting
    item = catalog.enum_items("model:wave")[-1]
    assert item[0] == "model:wave" and "once the engine runs" in item[2]
    catalog.use_model(TOY_REPORT)
    assert catalog.find("model:wave").prompt == "a person waves."
    catalog.use_model(None)  # the engine now runs a model without it
    with pytest.raises(KeyError, match="unknown action 'model:wave'"):
        catalog.find("model:wave")
    assert catalog.enum_items("model:wave")[-1][1] == "wave (missing)"


def test_the_manager_passes_on_what_the_engine_said_of_its_models_actions():
    manager = EngineManager(client_factory=lambda config: FakeClient(config, model_actions=TOY_REPORT))
    assert manager.hello() is None  # nothing runs yet
    manager.start(CONFIG)
    manager.wait_ready(5)
    assert manager.hello()["model_actions"] == TOY_REPORT
    assert manager.hello(EngineConfig(python="/other/python")) is None  # another engine would start
    manager.shutdown()
    assert manager.hello() is None


def test_a_bad_preset_does_not_hide_the_others(tmp_path):
    presets = tmp_path / "presets"
    presets.mkdir()
    shutil.copy(PRESETS_DIR / "push_up.toml", presets)
    (presets / "bad.toml").write_text('name = "x"\n')
    catalog = Catalog(presets_dir=presets, actions_dir=None, load_preset=load_preset)
    assert [a.id for a in catalog.refresh()] == ["push_up"]
    assert "missing required key prompt" in catalog.problems[0]


def test_read_trained_action_needs_name_and_prompt(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "action.toml").write_text('prompt = "p"\n')
    with pytest.raises(ValueError, match="needs a name and a prompt"):
        read_trained_action(folder)


# ---------------------------------------------------------------------------------------
# progress + AnimateJob, against a stand-in engine


def test_progress_text_and_overall_factor():
    assert Progress("denoise", 5, 25, 12.4).text == "Denoising 5/25 · ETA 12 s"
    assert Progress("start").text == "Starting engine"
    assert Progress("load", 0, 1).factor == pytest.approx(0.1)
    assert Progress("denoise", 25, 25).factor == pytest.approx(0.9)
    assert Progress("decode", 16, 16).factor == 1.0
    assert Progress("mystery", 1, 2).text == "Mystery 1/2"
    assert format_eta(None) == "" and format_eta(75) == "1:15" and format_eta(3725) == "1:02:05"
    assert one_line(EngineError("out of memory", "try fewer frames")) == "out of memory (try fewer frames)"


@pytest.fixture
def manager():
    clients: list[FakeClient] = []

    def factory(config):
        clients.append(FakeClient(config))
        return clients[-1]

    manager = EngineManager(client_factory=factory)
    manager.clients = clients
    yield manager
    manager.shutdown()


CONFIG = EngineConfig(python="/env/bin/python", serve_args=("--model", "tiny"))


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_job_goes_from_engine_start_to_result(manager):
    job = AnimateJob(manager, CONFIG, {"image": "/r.png", "out": "/o", "frames": 3}, meta={"take": "t_001"})
    wait_until(lambda: not job.tick() and job.state == "running")
    client = manager.clients[0]
    assert client.submitted == [("animate", {"image": "/r.png", "out": "/o", "frames": 3})]
    state = client.jobs[job.job_id]
    state.phase, state.step, state.total, state.eta_s = "denoise", 3, 10, 4.0
    assert not job.tick() and job.progress.text == "Denoising 3/10 · ETA 4 s"
    state.result, state.state = {"frames": ["/o/frame_0001.png"]}, "done"
    assert job.tick() and job.state == "done" and job.result["frames"] == ["/o/frame_0001.png"]
    assert job.meta == {"take": "t_001"}


def test_engine_errors_become_one_line_with_the_fix(manager):
    job = AnimateJob(manager, CONFIG, {})
    wait_until(lambda: job.tick() or job.state == "running")
    state = manager.clients[0].jobs[job.job_id]
    state.state, state.error = "failed", EngineError("output folder already exists: /o", "choose another --out",
                                                     code="output_exists")
    assert job.tick() and job.state == "failed"
    assert job.error_line == "output folder already exists: /o (choose another --out)"
    assert job.error_code == "output_exists"


def test_cancel_before_and_after_submission(manager):
    manager.start(CONFIG)
    wait_until(lambda: manager.ready() is not None)
    job = AnimateJob(manager, CONFIG, {})
    job.tick()
    job.cancel()
    assert manager.clients[0].cancelled == [job.job_id]
    assert job.tick() and job.state == "cancelled"
    early = AnimateJob(EngineManager(client_factory=lambda c: FakeClient(c)), CONFIG, {})
    early.cancel()  # while the engine starts: cancelled at once, nothing submitted
    assert early.finished and early.state == "cancelled"


def test_a_dead_engine_fails_the_job_and_the_next_job_restarts_it(manager):
    job = AnimateJob(manager, CONFIG, {})
    wait_until(lambda: job.tick() or job.state == "running")
    first = manager.clients[0]
    first.die()
    assert job.tick() and job.state == "failed" and job.error_code == "engine_died"
    assert "SIGKILL" in job.error_line
    again = AnimateJob(manager, CONFIG, {})
    wait_until(lambda: again.tick() or again.state == "running")
    assert len(manager.clients) == 2 and manager.clients[1].alive and manager.starts == 2


def test_manager_reuses_a_live_engine_and_replaces_one_with_other_settings(manager):
    manager.start(CONFIG)
    first = manager.wait_ready(5)
    manager.start(CONFIG)
    assert manager.wait_ready(5) is first and manager.starts == 1
    manager.start(EngineConfig(python="/other/python"))
    second = manager.wait_ready(5)
    assert second is not first and first.closed == 1 and manager.starts == 2
    assert "running (pid 4242, cpu)" == manager.describe()
    manager.shutdown()
    assert second.closed == 1 and manager.client is None and manager.describe() == "not started"


def test_new_settings_during_a_start_wait_for_it_then_replace_it(manager):
    def slow(config):
        client = FakeClient(config)
        client.start_delay = 0.2
        manager.clients.append(client)
        return client

    manager._factory = slow
    manager.start(CONFIG)
    other = EngineConfig(python="/other/python")
    manager.start(other)
    client = manager.wait_ready(5)
    assert client.config == other and len(manager.clients) == 2 and manager.clients[0].closed == 1


def test_a_failed_start_is_reported_once_then_retried():
    def broken(config):
        client = FakeClient(config)
        client.start_error = EngineError("no torch", "set up the engine")
        return client

    manager = EngineManager(client_factory=broken)
    job = AnimateJob(manager, CONFIG, {})
    wait_until(lambda: job.tick())
    assert job.state == "failed" and job.error_line == "no torch (set up the engine)"
    manager._factory = FakeClient
    retry = AnimateJob(manager, CONFIG, {})
    wait_until(lambda: retry.tick() or retry.state == "running")
    assert retry.state == "running" and manager.starts == 2
    manager.shutdown()


def test_an_engine_that_dies_after_hello_is_an_error_not_a_hang(manager):
    manager.start(CONFIG)
    client = manager.wait_ready(5)
    client.die()
    with pytest.raises(EngineGone, match="SIGKILL"):
        manager.ready()


def test_shutdown_during_a_slow_start_stops_it(manager):
    def slow(config):
        client = FakeClient(config)
        client.start_delay = 0.3
        manager.clients.append(client)
        return client

    manager._factory = slow
    manager.start(CONFIG)
    wait_until(lambda: manager.clients)
    manager.shutdown()
    assert not manager.starting and manager.client is None
    assert not any(t.name == "flash-engine-start" for t in threading.enumerate())


def test_run_blocking_reports_each_new_line(manager):
    from flash_blender.job_loop import JobLoop, Outcome, changed_lines, run_blocking

    job = AnimateJob(manager, CONFIG, {})
    lines: list[str] = []
    loop = JobLoop(advance=job.tick, finish=lambda: Outcome(job.state == "done"),
                   lines=changed_lines(lambda: job.progress.text), interval=0.005)

    def finish():
        wait_until(lambda: job.state == "running")
        state = manager.clients[0].jobs[job.job_id]
        state.phase, state.step, state.total = "denoise", 1, 2
        time.sleep(0.05)
        state.result, state.state = {"frames": []}, "done"

    threading.Thread(target=finish).start()
    assert run_blocking(loop, report=lines.append).ok
    assert "FLASH: Denoising 1/2" in lines
    assert all(a != b for a, b in zip(lines, lines[1:]))  # a line per change, not per tick


def test_serve_args_from_preferences():
    assert serve_args("tiny", "cpu", "fp32", True) == ("--model", "tiny", "--device", "cpu", "--precision", "fp32",
                                                       "--offload")
    assert serve_args("", "", "") == ("--model", "default", "--device", "auto", "--precision", "auto")


# ---------------------------------------------------------------------------------------
# installer runner


def test_setup_run_follows_steps_and_finishes():
    script = "print('[1/2] creating'); print('    pip noise'); print('[2/2] checking'); print('ready')"
    run = SetupRun([sys.executable, "-c", script])
    wait_until(lambda: run.finished)
    assert run.ok and run.step == (2, 2, "checking") and run.text == "Engine ready" and run.factor == 1.0
    lines, seen = run.new_lines(0)
    assert lines == ["[1/2] creating", "    pip noise", "[2/2] checking", "ready"] and seen == 4
    assert run.new_lines(seen) == ([], 4)


def test_setup_run_reports_the_installers_error_and_fix():
    script = "print('[1/3] creating'); print('error: engine setup failed'); print('  run it again'); exit(1)"
    run = SetupRun([sys.executable, "-c", script])
    wait_until(lambda: run.finished)
    assert not run.ok and run.text == "Setup failed: engine setup failed (run it again)"


def test_setup_run_without_an_interpreter():
    run = SetupRun(["/no/such/python", "-c", "pass"])
    assert run.finished and run.returncode == 127 and "cannot run" in run.text


def test_setup_command_and_environment(tmp_path, monkeypatch):
    assert setup_command(tmp_path / "env", "/blender/python") == [
        "/blender/python", "-m", "flash_engine.setup", "--env", str(tmp_path / "env")]
    monkeypatch.setenv("PYTHONHOME", "/blender/python/home")
    env = child_environment(tmp_path)
    assert "PYTHONHOME" not in env and env["PYTHONPATH"] == str(tmp_path)


def test_the_installer_never_writes_into_the_extension_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)  # Blender's environment does not set it
    extension = tmp_path / "flash_previs"
    shutil.copytree(REPO / "flash_engine", extension / "flash_engine",
                    ignore=shutil.ignore_patterns("__pycache__", "mannequin"))
    command = [*setup_command(tmp_path / "env", sys.executable)[:3], "--help"]  # imports the installer only
    proc = subprocess.run(command, env=child_environment(extension), cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "--env" in proc.stdout, proc.stderr
    assert [p.name for p in extension.rglob("__pycache__")] == []


# ---------------------------------------------------------------------------------------
# the bundled engine


def test_engine_root_in_a_checkout_and_in_an_extension(tmp_path):
    assert engine_root() == REPO
    extension = tmp_path / "flash_previs"
    (extension / "flash_engine").mkdir(parents=True)
    (extension / "flash_engine" / "__init__.py").write_text("")
    assert engine_root(extension) == extension
    with pytest.raises(FileNotFoundError, match="reinstall"):
        engine_root(tmp_path / "empty")


def test_load_engine_imports_the_bundled_copy_and_unload_forgets_it(tmp_path):
    extension = tmp_path / "flash_previs"
    shutil.copytree(REPO / "flash_engine", extension / "flash_engine",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = f"""
import sys
from pathlib import Path
from flash_blender import bundled
root = Path({str(extension)!r})
package = bundled.load_engine(root)
client = bundled.engine_module("client")
presets = bundled.engine_module("presets")
assert Path(client.__file__).parent == root / "flash_engine", client.__file__
assert client.EngineError.__mro__[1] is sys.modules["flash_engine.errors"].FlashError
assert sys.path.count(str(root)) == 0
assert "torch" not in sys.modules
names = bundled.unload_engine()
assert "flash_engine.client" in names and not any(n.startswith("flash_engine") for n in sys.modules)
assert bundled.unload_engine() == []
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
