"""What a fresh user is told (issue 15), the bpy-free half: plain pytest on the logic behind
the messages. ``test_blender_fresh_user.py`` checks the same things through Blender."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flash_blender import batch, take_planning
from flash_blender.catalog import Catalog
from flash_blender.engine import EngineConfig, EngineGone, EngineManager
from flash_blender.progress import AnimateJob
from flash_engine.client import EngineDeath, EngineError
from flash_engine.presets import PRESETS_DIR, load_preset
from flash_engine.setup import env_status
from tests.support.fake_client import FakeClient

CONFIG = EngineConfig(python="/env/bin/python", serve_args=("--model", "tiny"))


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# -- never set up ----------------------------------------------------------------------


def test_no_folder_and_an_empty_folder_are_both_not_set_up(tmp_path):
    assert env_status(tmp_path / "engine-env")["reason"] == "not set up"
    (tmp_path / "engine-env").mkdir()  # what older add-ons left by just looking
    assert env_status(tmp_path / "engine-env")["reason"] == "not set up"
    (tmp_path / "engine-env" / "bin").mkdir()  # a setup that stopped half-way
    assert "set up incompletely" in env_status(tmp_path / "engine-env")["reason"]


# -- an engine that cannot start -------------------------------------------------------


class NoTorchClient(FakeClient):
    """Like EngineClient when the Python lacks torch: hello fails, the client kills its engine."""

    def start(self, timeout=None):
        self.death = EngineDeath(-9, "SIGKILL", ("flash serve: ready",), expected=True)
        raise EngineError("the engine's Python cannot load the engine: No module named 'torch'",
                          "run the engine setup again", code="environment")


def test_a_failed_start_is_described_by_its_error_not_by_the_clients_own_kill():
    manager = EngineManager(client_factory=NoTorchClient)
    job = AnimateJob(manager, CONFIG, {})
    wait_until(job.tick)
    assert "No module named 'torch'" in job.error_line
    described = manager.describe()
    assert "SIGKILL" not in described
    assert described.startswith("could not start: the engine's Python cannot load the engine: No module named")
    with pytest.raises(EngineGone) as gone:  # asking again (a redraw, a second job) says the same
        manager.ready()
    assert "SIGKILL" not in str(gone.value) and "torch" in str(gone.value)
    manager._factory = FakeClient  # fixed: the next start clears the old reason
    manager.start(CONFIG)
    manager.wait_ready(5)
    assert manager.describe().startswith("running")
    manager.shutdown()


def test_a_real_kill_is_still_reported_as_one():
    manager = EngineManager(client_factory=FakeClient)
    manager.start(CONFIG)
    manager.wait_ready(5).die()
    assert manager.describe() == "the engine killed by signal SIGKILL"


# -- an unwritable output folder -------------------------------------------------------


def test_an_output_folder_that_cannot_be_written_is_one_line_with_the_fix(tmp_path):
    take_planning.check_writable(tmp_path / "new" / "flash")  # creatable: fine, and made
    assert (tmp_path / "new" / "flash").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(take_planning.PlanError) as err:
        take_planning.check_writable(tmp_path / "file" / "flash")
    assert str(err.value) == (f"cannot write takes to {tmp_path / 'file' / 'flash'}: Not a directory "
                              f"({take_planning.OUTPUT_FIX})")
    with pytest.raises(take_planning.PlanError, match="is a file, not a folder"):
        take_planning.check_writable(tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "new"]
    assert list((tmp_path / "new" / "flash").iterdir()) == []  # the probe leaves nothing


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a read-only system folder")
def test_a_system_folder_is_refused_even_for_root():
    with pytest.raises(take_planning.PlanError, match=r"cannot write takes to /sys/flash-takes: Operation not permitted"):
        take_planning.check_writable(Path("/sys/flash-takes"))


# -- a deleted trained action ----------------------------------------------------------


def test_a_missing_chosen_action_stays_listed_as_missing(tmp_path):
    actions = tmp_path / "actions"
    (actions / "slide").mkdir(parents=True)
    (actions / "slide" / "action.toml").write_text('name = "Slide"\nprompt = "a person slides."\n')
    catalog = Catalog(presets_dir=PRESETS_DIR, actions_dir=actions, load_preset=load_preset)
    items = catalog.enum_items("trained:slide")
    assert items[-1][:2] == ("trained:slide", "Slide (base model only)")
    assert catalog.index("trained:slide") == len(items) - 1
    (actions / "slide" / "action.toml").unlink()
    (actions / "slide").rmdir()
    items = catalog.enum_items("trained:slide")
    assert items[-1][:2] == ("trained:slide", "slide (missing)")
    assert catalog.index("trained:slide") == items[-1][3] == len(catalog.refresh())
    assert [i[3] for i in items] == list(range(len(items)))  # numbers stay unique
    assert all(i[0] != "trained:slide" for i in catalog.enum_items("soccer_shoot"))


# -- --save never replaces a file ------------------------------------------------------


def test_the_default_save_name_is_numbered_past_existing_files(tmp_path):
    blend = tmp_path / "shot.blend"
    blend.write_bytes(b"input")
    assert batch.save_target(str(blend), "", False) == tmp_path / "shot_flash.blend"
    (tmp_path / "shot_flash.blend").write_bytes(b"an earlier copy")
    assert batch.save_target(str(blend), "", False) == tmp_path / "shot_flash_2.blend"
    (tmp_path / "shot_flash_2.blend").write_bytes(b"another")
    assert batch.save_target(str(blend), "", False) == tmp_path / "shot_flash_3.blend"
    assert batch.save_target(str(blend), "", False, overwrite=True) == tmp_path / "shot_flash.blend"


def test_a_named_save_path_that_exists_needs_overwrite(tmp_path):
    blend = tmp_path / "shot.blend"
    (tmp_path / "v2.blend").write_bytes(b"mine")
    with pytest.raises(batch.BatchError, match=r"v2.blend exists \(pass --overwrite to replace it"):
        batch.save_target(str(blend), "//v2.blend", False)
    assert batch.save_target(str(blend), "//v2.blend", False, overwrite=True) == tmp_path / "v2.blend"
    options = batch.parse_args(["--save", "//v2.blend", "--overwrite"])
    assert options.overwrite and options.save_path == "//v2.blend"
    assert not batch.parse_args(["--save"]).overwrite


# -- the base weights download ---------------------------------------------------------


def _fake_downloader(script: str) -> list[str]:
    import sys

    return [sys.executable, "-c", script]


def test_download_run_shows_size_and_progress_then_done():
    from flash_blender.downloads import DownloadRun

    script = ("import json,time\n"
              "for done in (0, 2_500_000, 5_000_000):\n"
              "    print(json.dumps({'event': 'progress', 'done': done, 'total': 5_000_000, 'file': 'unet/x'}))\n"
              "print('a warning that is not an event')\n"
              "print(json.dumps({'event': 'done', 'done': 5_000_000, 'total': 5_000_000}))\n")
    run = DownloadRun(_fake_downloader(script))
    wait_until(lambda: run.finished)
    assert run.ok and run.factor == 1.0 and run.text == "Base weights downloaded"
    assert (run.done, run.total) == (5_000_000, 5_000_000)


def test_download_run_text_while_running_and_after_cancel():
    from flash_blender.downloads import DownloadRun

    script = ("import json,time\n"
              "print(json.dumps({'event': 'progress', 'done': 1_200_000, 'total': 4_000_000_000}), flush=True)\n"
              "time.sleep(60)\n")
    run = DownloadRun(_fake_downloader(script))
    wait_until(lambda: run.total is not None)
    assert run.text.startswith("1.2 MB of 4.0 GB") and 0 < run.factor < 0.01
    started = time.monotonic()
    run.cancel()
    assert time.monotonic() - started < 0.5  # the UI does not wait for the downloader to exit
    wait_until(lambda: run.finished)
    assert run.cancelled and not run.ok
    assert run.text == "Download cancelled at 1.2 MB of 4.0 GB (Resume continues)"


def test_download_run_reports_the_downloaders_error_with_its_fix():
    from flash_blender.downloads import DownloadRun

    script = ("import json,sys\n"
              "print(json.dumps({'event': 'error', 'message': 'could not download the weights: refused', "
              "'hint': 'check the network'}))\nsys.exit(1)\n")
    run = DownloadRun(_fake_downloader(script))
    wait_until(lambda: run.finished)
    assert run.text == "Download failed: could not download the weights: refused (check the network)"
    crashed = DownloadRun(_fake_downloader("raise SystemExit('boom')"))
    wait_until(lambda: crashed.finished)
    assert crashed.text == "Download failed: the download stopped with code 1: boom"


def test_weights_state_lines():
    from flash_blender.downloads import state_text

    assert state_text({"state": "none", "done": 0, "total": None}).startswith("Base weights: not downloaded")
    assert state_text({"state": "partial", "done": 1_500_000_000, "total": 5_600_000_000}) == \
        "Base weights: 1.5 GB of 5.6 GB downloaded (Resume continues)"
    assert state_text({"state": "complete", "done": 5_600_000_000, "total": 5_600_000_000}) == \
        "Base weights: downloaded (5.6 GB)"
