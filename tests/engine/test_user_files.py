"""Nothing a user made is ever deleted or overwritten, and every bad input is one line, early.

The engine's output rules (flash_engine/output.py): ``--overwrite`` replaces only a take the
engine wrote (its flash.json lists every file in the folder), hidden staging folders of killed
jobs are cleaned by the next job only when their owner is gone, and filesystem failures,
sizes and numbers that cannot work are refused before the model loads.
"""

import contextlib
import errno
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from flash_engine import devices, warm
from flash_engine.cli import main
from flash_engine.output import OWNER_FILE, remove_stale_partials
from tests.conftest import REPO, run_engine

FAST = ["--model", "tiny", "--frames", "3", "--steps", "2", "--seed", "3", "--width", "32", "--height", "32"]


def animate_args(reference, out, *extra):
    return ["animate", "--image", str(reference), "--prompt", "a person is waving.", *FAST, "--out", str(out), *extra]


def expect_error(capsys, args, *words):
    code = main(args)
    output = capsys.readouterr().err.strip()
    assert code == 2, output
    err = output.splitlines()[-1]  # after the progress lines of a job that ran
    assert err.startswith("error: ") and "Traceback" not in output, output
    for word in words:
        assert word in err, err
    return err


def hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if anything loads a model: the checks must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(warm.PipelineCache, "get", refuse)


def user_folder(path):
    path.mkdir(parents=True)
    (path / "shot.png").write_bytes(b"the user's own image")
    (path / "scene.blend").write_bytes(b"the user's own scene")
    return {p.name: p.read_bytes() for p in path.iterdir()}


# ---------------------------------------------------------------------------------------
# --overwrite replaces only what the engine wrote


def test_overwrite_refuses_a_folder_the_engine_did_not_write(tmp_path, capsys, reference_png, no_model_load):
    out = tmp_path / "shot"
    before = user_folder(out)
    expect_error(capsys, animate_args(reference_png, out, "--overwrite"), "not written by the engine")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert hidden(tmp_path) == []


def test_overwrite_replaces_a_take_and_refuses_once_a_user_file_is_in_it(tmp_path, capsys, reference_png):
    out = tmp_path / "take"
    assert main(animate_args(reference_png, out, "--mp4")) == 0
    meta = json.loads((out / "flash.json").read_text())
    assert sorted(meta["files"]) == ["flash.mp4", "frame_0001.png", "frame_0002.png", "frame_0003.png"]
    assert main(animate_args(reference_png, out, "--overwrite", "--seed", "4")) == 0
    assert json.loads((out / "flash.json").read_text())["settings"]["seed"] == 4
    assert not (out / "flash.mp4").exists()  # the old take's files went with it
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    expect_error(capsys, animate_args(reference_png, out, "--overwrite"), "did not write", "notes.txt")
    assert (out / "notes.txt").read_text() == "mine"
    assert hidden(tmp_path) == []


def test_a_user_file_that_arrives_during_the_job_is_kept(tmp_path, capsys, reference_png, monkeypatch):
    from flash_engine import animate

    out = tmp_path / "take"
    assert main(animate_args(reference_png, out)) == 0
    real_save = animate.save_frames

    def save_and_meanwhile_the_user_adds_a_file(frames, folder):
        (out / "added_meanwhile.txt").write_text("mine")
        return real_save(frames, folder)

    monkeypatch.setattr(animate, "save_frames", save_and_meanwhile_the_user_adds_a_file)
    expect_error(capsys, animate_args(reference_png, out, "--overwrite"), "added_meanwhile.txt")
    assert (out / "added_meanwhile.txt").read_text() == "mine" and (out / "frame_0001.png").exists()
    assert hidden(tmp_path) == []


def test_trailing_dot_paths_are_the_folder_itself(tmp_path, capsys, reference_png, no_model_load):
    out = tmp_path / "x"
    before = user_folder(out)
    expect_error(capsys, animate_args(reference_png, f"{out}/.", "--overwrite"), "not written by the engine")
    expect_error(capsys, animate_args(reference_png, f"{out}/sub/..", "--overwrite"), "not written by the engine")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert hidden(tmp_path) == [] and hidden(out) == []


def test_out_dot_in_a_user_folder_is_refused_without_leftovers(tmp_path, reference_png):
    work = tmp_path / "work"
    before = user_folder(work)
    proc = run_engine(*animate_args(reference_png, ".", "--overwrite")[0:], cwd=work, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in work.iterdir()} == before
    assert hidden(tmp_path) == []


def test_out_dot_inside_a_take_replaces_it(tmp_path, reference_png):
    take = tmp_path / "take"
    assert main(animate_args(reference_png, take)) == 0
    proc = run_engine(*animate_args(reference_png, ".", "--overwrite", "--seed", "5"), cwd=take, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((take / "flash.json").read_text())["settings"]["seed"] == 5
    assert hidden(tmp_path) == []


def test_demo_never_deletes_what_it_did_not_write(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLASH_WEIGHTS_DIR", str(tmp_path / "data" / "weights"))
    documents = tmp_path / "Documents"
    before = user_folder(documents)
    code = main(["demo", "--model", "tiny", "--out", str(documents)])
    err = capsys.readouterr().err
    assert code == 2 and "not written by the engine" in err, err
    assert {p.name: p.read_bytes() for p in documents.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Documents", "data"]  # nothing beside --out


def test_train_force_replaces_only_an_action_folder(tmp_path, capsys, no_model_load):
    clips = tmp_path / "clips"
    clips.mkdir()
    out = tmp_path / "my_action"
    before = user_folder(out)
    code = main(["train", "--clips", str(clips), "--action", "wave", "--prompt", "a person is waving.",
                 "--model", "tiny", "--out", str(out), "--force"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not written by the engine" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ---------------------------------------------------------------------------------------
# Leftovers of killed jobs


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def leftover(parent, name, owner, files=("frame_0001.png",)):
    folder = parent / name
    folder.mkdir()
    if owner is not None:
        (folder / OWNER_FILE).write_text(json.dumps(owner))
    for file in files:
        (folder / file).write_bytes(b"x")
    return folder


def test_stale_partials_of_dead_jobs_go_and_nothing_else(tmp_path):
    import socket

    host = socket.gethostname()
    dead = leftover(tmp_path, ".take.partial-aaaa1111", {"pid": dead_pid(), "host": host, "start": None})
    alive = leftover(tmp_path, ".take.partial-bbbb2222", {"pid": os.getpid(), "host": host, "start": None})
    elsewhere = leftover(tmp_path, ".take.partial-cccc3333", {"pid": dead_pid(), "host": "another-box", "start": None})
    with_user_file = leftover(tmp_path, ".take.partial-dddd4444", {"pid": dead_pid(), "host": host, "start": None},
                              files=("frame_0001.png", "notes.txt"))
    empty_legacy = leftover(tmp_path, ".take.partial-eeee5555", None, files=())
    unowned = leftover(tmp_path, ".take.partial-ffff6666", None)
    user_hidden = tmp_path / ".config"
    user_hidden.mkdir()
    removed = remove_stale_partials(tmp_path)
    assert sorted(removed) == sorted([dead, empty_legacy])
    assert alive.is_dir() and elsewhere.is_dir() and unowned.is_dir() and user_hidden.is_dir()
    assert sorted(p.name for p in with_user_file.iterdir()) == ["notes.txt"]  # only the engine's file went


def test_a_reused_pid_is_not_taken_for_the_owner(tmp_path):
    import socket

    folder = leftover(tmp_path, ".take.partial-aaaa1111", {"pid": os.getpid(), "host": socket.gethostname(),
                                                          "start": "1"})  # our pid, another start time
    assert remove_stale_partials(tmp_path) == [folder]


def wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def slow_job(reference, out):
    """A tiny-model job that runs long enough to be killed while it writes into its staging folder."""
    args = ["animate", "--image", str(reference), "--prompt", "a person is waving.", "--model", "tiny",
            "--frames", "8", "--steps", "400", "--width", "64", "--height", "64", "--out", str(out)]
    return subprocess.Popen([sys.executable, "-m", "flash_engine", *args], cwd=REPO, stderr=subprocess.PIPE,
                            text=True)


def test_kill_9_leftovers_are_removed_by_the_next_job(tmp_path, reference_png):
    out = tmp_path / "take"
    proc = slow_job(reference_png, out)
    try:
        assert wait_for(lambda: hidden(tmp_path)), "the job never made its staging folder"
        proc.kill()
        proc.wait(30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert hidden(tmp_path) and not out.exists()
    assert main(animate_args(reference_png, tmp_path / "next")) == 0
    assert hidden(tmp_path) == []


def test_sigterm_cleans_up_like_ctrl_c(tmp_path, reference_png):
    out = tmp_path / "take"
    proc = slow_job(reference_png, out)
    assert wait_for(lambda: hidden(tmp_path)), "the job never made its staging folder"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "error: interrupted (nothing was written)"
    assert hidden(tmp_path) == [] and not out.exists()


# ---------------------------------------------------------------------------------------
# Filesystems that cannot take the take


@contextlib.contextmanager
def tmpfs(path, options):
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_read_only_filesystem_is_refused_before_the_model_loads(tmp_path, capsys, reference_png, no_model_load):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        expect_error(capsys, animate_args(reference_png, mount / "take"), "read-only filesystem")


def test_too_little_space_is_refused_before_the_model_loads(tmp_path, capsys, reference_png, no_model_load):
    with tmpfs(tmp_path / "small", "size=16k") as mount:
        args = animate_args(reference_png, mount / "take") + ["--frames", "8", "--width", "64", "--height", "64"]
        expect_error(capsys, args, "not enough disk space")
        assert list(mount.iterdir()) == []


def test_disk_full_while_writing_is_one_line_and_leaves_nothing(tmp_path, capsys, reference_png, monkeypatch):
    from flash_engine import animate

    def full(frames, folder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "frame_0002.png"))

    monkeypatch.setattr(animate, "save_frames", full)
    expect_error(capsys, animate_args(reference_png, tmp_path / "take"), "disk is full", "another disk")
    assert list(tmp_path.iterdir()) == [reference_png]


def test_parent_that_is_a_file(tmp_path, capsys, reference_png, no_model_load):
    (tmp_path / "notes.txt").write_text("mine")
    expect_error(capsys, animate_args(reference_png, tmp_path / "notes.txt" / "take"), "is a file")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_255_byte_name_works_and_256_is_refused(tmp_path, capsys, reference_png):
    longest = tmp_path / ("t" * 255)
    assert main(animate_args(reference_png, longest)) == 0  # the staging name is shortened, not the take's
    assert (longest / "flash.json").is_file() and hidden(tmp_path) == []
    expect_error(capsys, animate_args(reference_png, tmp_path / ("t" * 256)), "255", "shorter")


def test_a_5000_character_path_is_refused(tmp_path, capsys, reference_png, no_model_load):
    expect_error(capsys, animate_args(reference_png, tmp_path / "/".join(["d" * 99] * 50)), "path", "shorter")
    assert list(tmp_path.iterdir()) == [reference_png]


# ---------------------------------------------------------------------------------------
# Images, numbers and sizes


def png_header_only(path, width, height):
    """A PNG that claims width×height (no pixel data: opening it is enough to be refused)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_one_line(tmp_path, capsys, no_model_load):
    image = png_header_only(tmp_path / "huge.png", 14000, 14000)
    expect_error(capsys, animate_args(image, tmp_path / "take"), "megapixels", "4096")


def test_sixteen_bit_grayscale_keeps_its_tones(tmp_path):
    from flash_engine.images import load_reference

    values = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    path = tmp_path / "depthlike.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really a 16-bit file
    rgb = np.asarray(load_reference(path))
    assert rgb.shape == (4, 4, 3)
    assert np.abs(rgb[0, :, 0].astype(int) - [0, 64, 128, 255]).max() <= 1


@pytest.mark.parametrize("flag,value,words", [
    ("--seed", str(2**64), ("seed", "2^64")),
    ("--seed", "-1", ("seed",)),
    ("--frames", "33", ("frames", "32")),
    ("--frames", "1", ("frames",)),
    ("--steps", "0", ("steps", "between 1 and 1000")),
    ("--guidance", "-1", ("guidance",)),
    ("--guidance", "inf", ("guidance", "finite")),
    ("--guidance", "nan", ("guidance", "finite")),
    ("--fps", "0", ("fps", "between 1 and 240")),
    ("--fps", "-8", ("fps",)),
])
def test_numbers_that_cannot_work_are_refused_before_the_model_loads(tmp_path, capsys, reference_png,
                                                                     no_model_load, flag, value, words):
    expect_error(capsys, animate_args(reference_png, tmp_path / "take", "--mp4", flag, value), *words)
    assert not (tmp_path / "take").exists() and hidden(tmp_path) == []


def test_a_clip_too_large_for_the_device_is_refused_with_a_size_that_fits(tmp_path, capsys, reference_png,
                                                                         no_model_load, monkeypatch):
    monkeypatch.setattr(devices, "device_memory_bytes", lambda device: 2 * 2**30)
    err = expect_error(capsys, animate_args(reference_png, tmp_path / "take", "--frames", "16", "--width", "1024",
                                            "--height", "576"), "GiB", "use at most")
    import re

    fit_w, fit_h = (int(n) for n in re.search(r"--width (\d+) --height (\d+)", err).groups())
    assert fit_w < 1024 and fit_h < 576 and fit_w % 8 == 0 and fit_h % 8 == 0
    assert abs(fit_w / fit_h - 1024 / 576) < 0.1  # the shot's aspect
    import torch

    devices.check_clip_fits(torch.device("cpu"), torch.float32, 16, fit_w, fit_h, guided=True,
                            size_multiple=8)  # it does fit


def test_a_4096_clip_on_this_machine_is_refused_up_front(tmp_path, capsys, reference_png, no_model_load):
    expect_error(capsys, animate_args(reference_png, tmp_path / "take", "--frames", "16", "--width", "4096",
                                      "--height", "4096"), "GiB", "use at most")


def test_a_frame_edited_after_the_take_is_never_replaced(tmp_path, capsys, reference_png, monkeypatch):
    out = tmp_path / "take"
    assert main(animate_args(reference_png, out)) == 0
    monkeypatch.setattr(warm.PipelineCache, "get", lambda *a, **k: pytest.fail("a model was loaded first"))
    painted = out / "frame_0002.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(painted)  # an artist's paint-over, under the same name
    expect_error(capsys, animate_args(reference_png, out, "--overwrite"), "frame_0002.png", "changed")
    with Image.open(painted) as image:
        assert image.getpixel((0, 0)) == (255, 0, 0)


def test_a_symlinked_out_is_refused_and_left_as_it_is(tmp_path, capsys, reference_png):
    real = tmp_path / "fast-storage" / "take"
    assert main(animate_args(reference_png, real)) == 0
    link = tmp_path / "shot"
    link.symlink_to(real, target_is_directory=True)
    expect_error(capsys, animate_args(reference_png, link, "--overwrite"), "symbolic link", str(real))
    assert link.is_symlink() and os.readlink(link) == str(real) and (real / "flash.json").is_file()
    assert hidden(tmp_path) == []


def test_a_take_in_place_has_no_owner_file_and_an_interrupted_swap_keeps_the_old_take(tmp_path, capsys,
                                                                                      reference_png, monkeypatch):
    from flash_engine import output

    out = tmp_path / "take"
    assert main(animate_args(reference_png, out)) == 0
    assert not (out / OWNER_FILE).exists()
    old_meta = (out / "flash.json").read_text()
    real_replace, calls = os.replace, []

    def interrupted_second_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new take onto the name: stopped right there
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(output.os, "replace", interrupted_second_rename)
    assert main(animate_args(reference_png, out, "--overwrite", "--seed", "9")) == 130
    assert (out / "flash.json").read_text() == old_meta  # the old take, whole, under its name
    assert hidden(tmp_path) == []


def test_a_blank_prompt_with_an_action_is_the_actions_prompt_and_an_odd_learned_fps_is_not_used(tmp_path,
                                                                                                reference_png):
    from types import SimpleNamespace

    from flash_engine.animate import clip_fps, resolve
    from flash_engine.requests import DEFAULT_FPS, parse

    job = resolve(parse("animate", {"image": str(reference_png), "out": str(tmp_path / "t"), "action": "soccer_shoot",
                                    "prompt": "   ", "model": "tiny"}))
    assert job.prompt == "a person is shooting a soccer ball."  # not an empty prompt found after loading
    request = parse("animate", {"image": "a.png", "out": "o"})
    for learned, used in ((12.0, 12.0), (math.inf, DEFAULT_FPS), (0.001, DEFAULT_FPS), ("12", DEFAULT_FPS)):
        assert clip_fps(request, SimpleNamespace(meta={"fps": learned})) == used, learned


def test_an_action_for_another_base_is_refused_before_the_model_loads(tmp_path, capsys, reference_png,
                                                                      no_model_load):
    import torch

    from flash_engine.actions import write_action

    action = write_action(tmp_path / "wave", name="wave", prompt="a person is waving.", base_model="tiny-0123456789",
                          unet_state={"down_blocks.0.motion_modules.0.weight": torch.zeros(2)})
    expect_error(capsys, ["animate", "--image", str(reference_png), "--weights", str(action), "--model", "mannequin",
                          "--frames", "2", "--steps", "1", "--out", str(tmp_path / "take")],
                 "trained on base model tiny-0123456789", "mannequin")


def test_a_take_moved_aside_by_a_job_killed_mid_swap_is_put_back_not_deleted(tmp_path, reference_png):
    import socket

    take = tmp_path / "take"
    assert main(animate_args(reference_png, take)) == 0
    frames = sorted(p.name for p in take.iterdir())
    trash = tmp_path / ".take.old-abcd1234"  # what a kill -9 between the two renames leaves
    trash.mkdir()
    take.rename(trash / "take")
    (trash / OWNER_FILE).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "start": None,
                                                "dest": "take"}))
    assert remove_stale_partials(tmp_path) == []  # nothing removed:
    assert sorted(p.name for p in take.iterdir()) == frames and not trash.exists()  # the take is back


def test_an_interruption_while_the_staging_folder_is_made_leaves_nothing(tmp_path, monkeypatch):
    """SIGTERM / Ctrl-C raise where they land; landing between mkdtemp and the job once left
    the hidden folder behind (seen under load in test_sigterm_cleans_up_like_ctrl_c)."""
    from flash_engine import output

    def interrupted(folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(output, "_usual_permissions", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with output.staged_folder(tmp_path / "take"):
            pytest.fail("the job must not start")
    assert list(tmp_path.iterdir()) == []
