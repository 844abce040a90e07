"""The bpy-free logic behind Custom actions and batch runs, with plain pytest (no Blender):
the clip pre-check and staging, training names/folders/progress/listing, and the batch's
arguments, shot choice, save target and summary lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flash_blender import batch, clipcheck, training
from flash_blender.engine import EngineConfig, EngineManager
from flash_blender.errors import PlanError
from flash_engine.client import EngineError
from tests.support.fake_client import FakeClient

from tests.conftest import REPO  # noqa: E402
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
MP4 = b"\x00\x00\x00\x20ftypisom" + b"\x00" * 24
MOV = b"\x00\x00\x00\x08wide" + b"\x00" * 24
WEBM = b"\x1a\x45\xdf\xa3" + b"\x00" * 24
GIF = b"GIF89a" + b"\x00" * 24
AVI = b"RIFF\x00\x00\x00\x00AVI LIST" + b"\x00" * 16


def test_the_new_modules_import_without_blender():
    code = ("import sys; import flash_blender.clipcheck, flash_blender.training, flash_blender.batch; "
            "bad = [m for m in ('bpy', 'torch', 'numpy', 'PIL', 'imageio') if m in sys.modules]; print(bad); "
            "sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------
# clip pre-check


def frames(folder: Path, count: int, data: bytes = PNG) -> Path:
    folder.mkdir(parents=True)
    for index in range(count):
        (folder / f"{index + 1}.png").write_bytes(data)
    return folder


@pytest.fixture
def clips(tmp_path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    for name, data in (("a.mp4", MP4), ("b.mov", MOV), ("c.webm", WEBM), ("d.gif", GIF), ("e.avi", AVI),
                       ("empty.mp4", b""), ("fake.mp4", b"hello, not a video at all")):
        (folder / name).write_bytes(data)
    frames(folder / "long", 7)
    frames(folder / "short", 3)
    (folder / "nothing").mkdir()
    frames(folder / "corrupt", 7)
    (folder / "corrupt" / "4.png").write_bytes(b"oops")
    (folder / "notes.txt").write_text("x")
    (folder / ".hidden.mp4").write_bytes(b"")
    return folder


def test_container_signatures():
    assert [clipcheck.video_kind(h[:16]) for h in (MP4, MOV, WEBM, GIF, AVI)] == ["mp4", "mp4", "webm", "gif", "avi"]
    assert clipcheck.video_kind(b"hello, not a vid") is None and clipcheck.video_kind(b"") is None
    assert clipcheck.image_kind(PNG) == "png" and clipcheck.image_kind(b"\xff\xd8\xff\xe0") == "jpeg"
    assert clipcheck.image_kind(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp" and clipcheck.image_kind(b"oops") is None


def test_a_clips_folder_is_checked_the_way_the_engine_scans_it(clips):
    check = clipcheck.check_folder(clips, frames=4, stride=2)  # needs 7 frames
    assert [p.name for p in check.usable] == ["a.mp4", "b.mov", "c.webm", "d.gif", "e.avi", "long"]
    assert check.videos == 5
    assert check.lines() == [
        "corrupt: frame 4.png is not a readable image",
        "empty.mp4: the file is empty (0 bytes)",
        "fake.mp4: not a readable video (its first bytes are not MP4/MOV, WebM/MKV, GIF or AVI)",
        "notes.txt: not a clip (use .avi, .gif, .m4v, .mkv, .mov, .mp4, .webm or a folder of frames)",
        "nothing: the folder has no frame images (png/jpg)",
        "short: has 3 frames, needs 7 (4 frames at stride 2): use a longer clip or a smaller stride",
    ]
    assert check.summary() == ("6 usable clips of 12 (6 will be skipped); video lengths are checked when training "
                               "starts")
    assert [p.name for p in clipcheck.check_folder(clips, frames=2, stride=1).usable] == [
        "a.mp4", "b.mov", "c.webm", "d.gif", "e.avi", "long", "short"]


def test_missing_folder_and_a_single_clips_frames_chosen_as_the_folder(tmp_path):
    assert clipcheck.check_folder(tmp_path / "gone", 4, 1).error.startswith("clips folder not found")
    assert clipcheck.check_folder("", 4, 1).error == "no clips chosen"
    single = frames(tmp_path / "one_clip", 10)
    check = clipcheck.check_folder(single, 4, 1)
    assert not check.usable and len(check.bad) == 10
    assert "it looks like one clip" in check.hint
    assert check.summary() == "0 usable clips of 10 (10 will be skipped)"


def test_chosen_files_images_of_one_folder_are_one_clip(clips):
    chosen = [clips / "a.mp4", *sorted((clips / "long").iterdir(), reverse=True), clips / "fake.mp4",
              clips / "notes.txt", clips / "gone.mp4", clips / "a.mp4"]
    groups = clipcheck.group_files(chosen)
    assert [(kind, [p.name for p in paths]) for kind, paths in groups] == [
        ("video", ["a.mp4"]), ("frames", [f"{i}.png" for i in range(1, 8)]), ("video", ["fake.mp4"]),
        ("other", ["notes.txt"]), ("video", ["gone.mp4"])]
    check = clipcheck.check_files(chosen, 4, 2)
    assert [p.name for p in check.usable] == ["a.mp4", "long"]
    assert [line.split(":")[0] for line in check.lines()] == ["fake.mp4", "notes.txt", "gone.mp4"]
    assert check.lines()[2] == "gone.mp4: file not found"
    assert clipcheck.check_files([], 4, 2).error == "no clips chosen"


def test_staging_links_never_moves_and_maps_back_to_the_users_paths(clips, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "a.mp4").write_bytes(MP4)  # the same name from another folder
    chosen = [clips / "a.mp4", other / "a.mp4", *sorted((clips / "long").iterdir())]
    dest = tmp_path / "actions" / ".x.clips"
    sources = clipcheck.stage_files(chosen, dest)
    assert sorted(os.listdir(dest)) == ["a-2.mp4", "a.mp4", "long"]
    assert sorted(os.listdir(dest / "long")) == sorted(os.listdir(clips / "long"))
    assert os.path.samefile(dest / "a.mp4", clips / "a.mp4")  # a hard link: no space, no copy
    assert all(Path(p).is_file() for p in chosen)  # the user's files stay
    assert sources == {str(dest / "a.mp4"): str(clips / "a.mp4"), str(dest / "a-2.mp4"): str(other / "a.mp4"),
                       str(dest / "long"): str(clips / "long")}
    line = f"{dest / 'a-2.mp4'}: not a readable video"
    assert clipcheck.user_paths(line, sources) == f"{other / 'a.mp4'}: not a readable video"
    # staging again replaces the folder
    assert clipcheck.stage_files([clips / "b.mov"], dest) and os.listdir(dest) == ["b.mov"]


def test_staging_copies_where_links_cannot_be_made(clips, tmp_path, monkeypatch):
    def no_links(*_args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(clipcheck.os, "link", no_links)
    dest = tmp_path / "staged"
    clipcheck.stage_files([clips / "a.mp4"], dest)
    assert (dest / "a.mp4").read_bytes() == MP4 and not os.path.samefile(dest / "a.mp4", clips / "a.mp4")
    assert (clips / "a.mp4").is_file()


def test_the_check_cache_follows_changes(clips):
    now = [0.0]
    cache = clipcheck.CheckCache(ttl=2.0, clock=lambda: now[0])
    first = cache.folder(str(clips), 4, 2)
    assert cache.folder(str(clips), 4, 2) is first
    assert cache.folder(str(clips), 2, 1) is not first  # other sampling: checked again
    time.sleep(0.01)
    (clips / "z.mp4").write_bytes(MP4)  # the folder changed
    again = cache.folder(str(clips), 2, 1)
    assert "z.mp4" in [p.name for p in again.usable]
    (clips / "long" / "8.png").write_bytes(PNG)  # inside a clip: seen after the ttl
    now[0] = 5.0
    assert cache.folder(str(clips), 2, 1) is not again


# ---------------------------------------------------------------------------------------
# training: names, request, progress, the job, the lists


def test_action_names_become_folder_names():
    assert training.action_folder_name("  Golf Swing! ") == "golf_swing"
    assert training.action_folder_name("Saut à la perche") == "saut_à_la_perche"
    with pytest.raises(PlanError, match="needs a name"):
        training.action_folder_name(" ?! ")
    paths = training.TrainPaths(Path("/a"), "golf_swing")
    assert (paths.out, paths.work_dir, paths.request_file, paths.staged_clips) == (
        Path("/a/golf_swing"), Path("/a/.golf_swing.training"), Path("/a/.golf_swing.request.json"),
        Path("/a/.golf_swing.clips"))


def test_train_request_always_names_model_device_and_precision():
    args = training.train_args(clips_folder=Path("/c"), name=" Golf ", prompt=" a person golfs. ", out=Path("/a/golf"),
                               model="tiny", steps=2, decoder_steps=0, resolution=64, frames=4, stride=1, device="cpu")
    assert args == {"clips": ["/c"], "action": "Golf", "prompt": ["a person golfs."], "out": "/a/golf",
                    "model": "tiny", "steps": 2, "decoder_steps": 0, "resolution": "64", "frames": 4, "stride": 1,
                    "device": "cpu", "precision": "auto"}
    common = dict(clips_folder=Path("/c"), name="g", out=Path("/o"), model="tiny", frames=4, stride=1)
    with pytest.raises(PlanError, match="prompt"):
        training.train_args(prompt=" ", steps=1, decoder_steps=1, resolution=64, **common)
    with pytest.raises(PlanError, match="nothing to train"):
        training.train_args(prompt="p", steps=0, decoder_steps=0, resolution=64, **common)
    with pytest.raises(PlanError, match="multiple of 8"):
        training.train_args(prompt="p", steps=1, decoder_steps=0, resolution=100, **common)
    # the engine's model steps by 4 (its hello's model_limits): 100 and 36 are sizes it takes
    limits_4x = {"width": 64, "height": 64, "size_multiple": 4}
    assert training.train_args(prompt="p", steps=1, decoder_steps=0, resolution=36, model_limits=limits_4x,
                               **common)["resolution"] == "36"
    with pytest.raises(PlanError, match=r"resolution 34 is not a multiple of 4.*use 32 or 36"):
        training.train_args(prompt="p", steps=1, decoder_steps=0, resolution=34, model_limits=limits_4x, **common)
    native = training.train_args(prompt="p", steps=1, decoder_steps=0, resolution=training.NATIVE_RESOLUTION, **common)
    assert "resolution" not in native  # the engine trains at the base model's own size


def test_training_progress_spans_both_phases():
    unet = training.TrainProgress("unet", 500, 20000, 3725, 0.1234, 20000, 10000)
    assert unet.text == "Training motion (UNet) 500/20000 · loss 0.1234 · ETA 1:02:05 + decoder"
    assert unet.factor == pytest.approx(500 / 30000)
    decoder = training.TrainProgress("decoder", 5000, 10000, 10.0, None, 20000, 10000)
    assert decoder.text == "Training details (decoder) 5000/10000 · ETA 10 s"
    assert decoder.factor == pytest.approx(25000 / 30000)
    assert training.TrainProgress("submitted", steps=1).text == "Reading clips"
    assert training.TrainProgress("start").factor == 0.0


@pytest.fixture
def manager():
    clients: list[FakeClient] = []
    manager = EngineManager(client_factory=lambda config: clients.append(FakeClient(config)) or clients[-1])
    manager.clients = clients
    yield manager
    manager.shutdown()


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_train_job_submits_train_follows_the_loss_and_names_skipped_clips(manager):
    staged, user = "/u/actions/.disc.clips", "/home/me/clips"
    meta = {"name": "Disc", "folder": "disc", "sources": {f"{staged}/b.mp4": f"{user}/b.mp4"}}
    job = training.TrainJob(manager, EngineConfig(python="/py"), {"clips": [staged], "steps": 4, "decoder_steps": 2},
                            meta)
    assert job.progress.text == "Starting engine"
    wait_until(lambda: not job.tick() and job.state == "running")
    client = manager.clients[0]
    assert client.submitted[0][0] == "train" and job.progress.text == "Reading clips"
    state = client.jobs[job.job_id]
    state.logs.append(f"skipped {staged}/b.mp4: not a readable video")
    state.phase, state.step, state.total, state.eta_s = "unet", 2, 4, 5.0
    client.events = [{"type": "progress", "job": job.job_id, "phase": "unet", "step": 2, "total": 4, "eta_s": 5.0,
                      "loss": 0.5}, {"type": "progress", "job": "other", "loss": 9.0}]
    assert not job.tick()
    assert job.progress.text == "Training motion (UNet) 2/4 · loss 0.5000 · ETA 5 s + decoder"
    assert job.progress.factor == pytest.approx(2 / 6)
    assert job.skipped() == [f"{user}/b.mp4: not a readable video"]  # from the logs while it runs
    state.result, state.state = {"clips_skipped": [f"{staged}/b.mp4: not a readable video (corrupt)"]}, "done"
    assert job.tick() and job.state == "done"
    assert job.skipped() == [f"{user}/b.mp4: not a readable video (corrupt)"]  # the result's, once there


def test_a_failed_train_job_is_one_line_with_the_fix(manager):
    job = training.TrainJob(manager, EngineConfig(python="/py"), {"steps": 1})
    wait_until(lambda: job.tick() or job.state == "running")
    state = manager.clients[0].jobs[job.job_id]
    state.state, state.error = "failed", EngineError("no usable clips in /c (2 skipped)", "add video files",
                                                     code="no_clips")
    assert job.tick() and job.error_line == "no usable clips in /c (2 skipped) (add video files)"


def test_interrupted_trainings_and_trained_details(tmp_path):
    actions = tmp_path / "actions"
    (actions / ".golf.training").mkdir(parents=True)
    (actions / ".golf.training" / "checkpoint.json").write_text(json.dumps(
        {"phase": "unet", "step": 500, "config": {"steps": 20000, "decoder_steps": 10000}}))
    training.write_json(actions / ".golf.request.json", {"name": "Golf", "args": {}})
    (actions / ".cli.training").mkdir()
    (actions / ".cli.training" / "checkpoint.json").write_text(json.dumps(
        {"phase": "decoder", "step": 3, "config": {"steps": 5, "decoder_steps": 4}}))
    (actions / ".empty.training").mkdir()  # no checkpoint yet: nothing to resume
    found = training.interrupted_trainings(actions)
    assert [(i.folder, i.name, i.resumable, i.text) for i in found] == [
        ("cli", "cli", False, "cli: stopped at decoder step 3/4"),
        ("golf", "Golf", True, "Golf: stopped at UNet step 500/20000")]
    assert training.interrupted_trainings(tmp_path / "none") == []

    folder = actions / "golf_swing"
    folder.mkdir()
    (folder / "action.toml").write_text(
        'name = "Golf swing"\nprompt = "a person swings."\nbase_model = "sd15-abc"\n'
        'created = "2026-03-01T10:00:00+00:00"\nsteps_done = 20000\ndecoder_steps_done = 10000\n'
        'clips = ["/s/.golf.clips/a.mp4", "/s/.golf.clips/b", "/s/c.mp4", "/s/d.mp4", "/s/e.mp4"]\n'
        'clips_skipped = []\n')
    details = training.trained_details(folder)
    assert details.clip_names == "5 clips: a.mp4, b, c.mp4, d.mp4, … (+1)"
    assert details.steps_text == "20000 UNet + 10000 decoder steps" and details.base_model == "sd15-abc"
    assert len(details.date) == len("2026-03-01 10:00")
    training.write_sources(folder, {"/s/.golf.clips/a.mp4": "/home/a.mp4"},
                           {"clips": ["/s/.golf.clips/a.mp4"]}, ["/home/x.mp4: empty"])
    details = training.trained_details(folder)  # the user's paths win over the staged ones
    assert details.clips == ["/home/a.mp4"] and details.clips_skipped == ["/home/x.mp4: empty"]
    (folder / "action.toml").write_text("name = ")
    assert "unreadable action.toml" in training.trained_details(folder).problem


# ---------------------------------------------------------------------------------------
# batch: arguments, shots, saving, summary


def test_batch_arguments():
    assert batch.script_argv(["blender", "-b", "x.blend", "-P", "s.py", "--", "--mp4"]) == ["--mp4"]
    assert batch.script_argv(["blender", "-b", "x.blend"]) == []
    options = batch.parse_args([])
    assert (options.mode, options.save, options.mp4, options.overrides) == ("active", False, False, {})
    options = batch.parse_args(["--cameras", "markers", "--action", "soccer_shoot", "--prompt", "a kick.",
                                "--seed", "7", "--frames", "8", "--output", "vse", "--out", "//takes", "--mp4",
                                "--save"])
    assert options.mode == "markers" and options.mp4 and options.save and options.save_path == ""
    assert options.overrides == {"action": "soccer_shoot", "prompt": "a kick.", "seed": 7, "frames": 8,
                                 "output": "VSE"}
    assert options.output_root == "//takes"
    named = batch.parse_args(["--camera", "Cam A", "--camera", "Side", "--save", "/out/x.blend"])
    assert named.mode == "named" and named.cameras == ["Cam A", "Side"] and named.save_path == "/out/x.blend"
    assert batch.parse_args(["--save-over-input"]).save
    for bad in (["--camera", "A", "--cameras", "all"], ["--cameras", "some"], ["--seed", "-1"], ["--frames", "x"]):
        with pytest.raises(SystemExit) as stop:
            batch.parse_args(bad)
        assert stop.value.code == 2
    assert batch.split_names(" A, B ,,C ") == ["A", "B", "C"]


def test_batch_shot_choice():
    cams = ["Side", "Main", "Top"]
    assert [s.camera for s in batch.select_shots("active", "S", active="Main", cameras=cams)] == ["Main"]
    [none] = batch.select_shots("active", "S", active=None, cameras=cams)
    assert none.camera is None and "has no active camera" in none.error
    assert [s.camera for s in batch.select_shots("all", "S", active="Main", cameras=cams)] == ["Main", "Side", "Top"]
    assert "has no cameras" in batch.select_shots("all", "S", active=None, cameras=[])[0].error
    markers = [(40, "F_40", "Top"), (1, "F_01", "Main"), (20, "note", None), (20, "F_20", "Main")]
    shots = batch.select_shots("markers", "S", active="Main", cameras=cams, markers=markers)
    assert [(s.camera, s.frame, s.marker) for s in shots] == [("Main", 1, "F_01"), ("Main", 20, "F_20"),
                                                             ("Top", 40, "F_40")]
    assert shots[1].label == "S/Main @20 (F_20)"
    assert "Bind Camera to Markers" in batch.select_shots("markers", "S", active="Main", cameras=cams,
                                                          markers=[(1, "m", None)])[0].error
    shots = batch.select_shots("named", "S", active="Main", cameras=cams, others=["Cube"],
                               names=["Top", "Cube", "Mian", "Nope"])
    assert [(s.camera, s.error) for s in shots] == [
        ("Top", ""), ("Cube", "'Cube' in scene 'S' is not a camera"),
        ("Mian", "no camera named 'Mian' in scene 'S' (did you mean Main?)"),
        ("Nope", "no camera named 'Nope' in scene 'S' (its cameras: Main, Side, Top)")]
    with pytest.raises(batch.BatchError):
        batch.select_shots("some", "S", active=None, cameras=[])


def test_batch_save_target(tmp_path):
    blend = tmp_path / "shots" / "shot.blend"
    assert batch.save_target(str(blend), "", False) == (tmp_path / "shots" / "shot_flash.blend").resolve()
    assert batch.save_target(str(blend), "//out/v2.blend", False) == (tmp_path / "shots" / "out" / "v2.blend").resolve()
    assert batch.save_target(str(blend), str(tmp_path / "x"), False) == (tmp_path / "x.blend").resolve()
    assert batch.save_target(str(blend), "", True) == blend.resolve()
    with pytest.raises(batch.BatchError, match="is the opened file"):
        batch.save_target(str(blend), str(blend), False)
    with pytest.raises(batch.BatchError, match="not saved"):
        batch.save_target("", "", False)
    assert batch.save_target("", str(tmp_path / "new.blend"), False) == (tmp_path / "new.blend").resolve()


def test_batch_summary_lines_and_exit_code():
    good = batch.ShotResult(batch.Shot("S", "Main"), True, take="S_Main_soccer_shoot_001",
                            folder="//flash/S_Main_soccer_shoot_001", frames=16, mp4="/p/flash.mp4")
    base = batch.ShotResult(batch.Shot("S", "Top", frame=40, marker="F_40"), True, take="S_Top_x_001",
                            folder="/abs/S_Top_x_001", frames=8, base_model_only=True)
    bad = batch.ShotResult(batch.Shot("S", "Nope", error="e"), False, reason="no camera named 'Nope' (fix)")
    assert batch.summary_line(good) == ("FLASH batch: ok S/Main: S_Main_soccer_shoot_001, 16 frames in "
                                        "//flash/S_Main_soccer_shoot_001, flash.mp4")
    assert batch.summary_line(base) == ("FLASH batch: ok S/Top @40 (F_40): S_Top_x_001, 8 frames in /abs/S_Top_x_001 "
                                        "(base model only)")
    assert batch.summary_line(bad) == "FLASH batch: FAILED S/Nope: no camera named 'Nope' (fix)"
    assert batch.final_lines([good, bad], saved="/p/shot_flash.blend") == [
        "FLASH batch: 2 shots: 1 ok, 1 failed", "FLASH batch: saved /p/shot_flash.blend"]
    assert batch.final_lines([good], save_error="/p/x.blend: disk full")[1] == "FLASH batch: NOT saved: /p/x.blend: " \
                                                                              "disk full"
    assert batch.exit_code([good, base]) == 0
    assert batch.exit_code([good, bad]) == 1 and batch.exit_code([]) == 1
    assert batch.exit_code([good], save_error="disk full") == 1


def test_the_precheck_agrees_with_the_engines_scan(clips, tmp_path):
    """The add-on repeats the engine's suffix lists (it never imports the torch side): they must
    match, and a clip the pre-check calls bad is one the engine skips too (the reverse may
    differ: only the engine decodes videos)."""
    from flash_engine.training.clips import IMAGE_SUFFIXES, VIDEO_SUFFIXES, scan_clips
    from tests.support.clipgen import make_clips

    assert set(clipcheck.VIDEO_SUFFIXES) == VIDEO_SUFFIXES and set(clipcheck.IMAGE_SUFFIXES) == IMAGE_SUFFIXES
    make_clips(clips, count=2, frames=8)  # real ones beside the fakes: clip0.mp4, clip1/
    check = clipcheck.check_folder(clips, frames=4, stride=2)
    scan = scan_clips([(clips, "p")], 4, 2, (64, 64))
    engine_good = {clip.path.name for clip in scan.good}
    engine_bad = {bad.path.name: bad.reason for bad in scan.bad}
    assert engine_good == {"clip0.mp4", "clip1"}  # (the fakes only have the right first bytes)
    assert engine_good <= {p.name for p in check.usable}
    assert {p.path.name for p in check.bad} <= set(engine_bad)
    for problem in check.bad:  # the same words where the engine can tell without decoding
        if problem.reason.startswith(("the file is empty", "not a clip", "the folder has no")):
            assert engine_bad[problem.path.name].startswith(problem.reason.split(":")[0].split(" (")[0])
