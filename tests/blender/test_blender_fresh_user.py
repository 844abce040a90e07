"""What a fresh user is told (issue 15), for real: the built extension in Blender (the bpy
5.0.1 wheel, background mode, a throw-away user directory).

One Blender process (``scenario``) clicks Animate before any setup, with an engine Python
that lacks torch, and with a folder no one can write; deletes the trained action its scene
uses; runs the batch script's entry with ``--save`` over an existing copy; and downloads base
weights from the Preferences button against a stand-in of the model hub on 127.0.0.1 (this
test's ``hub`` fixture, see tests/support/hub_standin.py): cancelled half-way, resumed, whole.
The engine never needs to load a model, so the module takes seconds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
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
    MODULE, Drawer, Layout, ScenarioRecord, addon, call, install_extension, isolated_env, layout_problems,
    run_scenario, scenario_part,
)

UNWRITABLE = "/sys/flash-takes"  # mkdir there fails with EPERM, even for root
UNET = "unet/diffusion_pytorch_model.safetensors"
ADAPTER = "motion_adapter/diffusion_pytorch_model.safetensors"


# ---------------------------------------------------------------------------------------
# pytest side


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> dict:
    from tests.support.hub_standin import ADAPTER_REPO, SD15_REPO, Hub, tiny_repos

    tmp = tmp_path_factory.mktemp("blender-fresh")
    repos = tiny_repos(tmp / "repos")
    hub = Hub(repos).start()
    unet_size = (repos[SD15_REPO] / UNET).stat().st_size
    adapter_size = (repos[ADAPTER_REPO] / "diffusion_pytorch_model.safetensors").stat().st_size
    hub.stall_after[f"{SD15_REPO}/{UNET}"] = unet_size // 3  # the first try hangs there: the user cancels
    hub.drop_after[f"{ADAPTER_REPO}/diffusion_pytorch_model.safetensors"] = adapter_size // 2
    no_torch = tmp / "python-without-torch"  # this interpreter without its site-packages: no torch
    no_torch.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    no_torch.chmod(0o755)
    env = {**isolated_env(tmp), "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp / "hf-home"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    try:
        data = run_scenario(__file__, tmp, no_torch, unet_size // 3, env=env)
    finally:
        hub.stop()
    data["_hub"] = {"requests": hub.requests, "unet_size": unet_size, "adapter_size": adapter_size,
                    "served": {UNET: str(repos[SD15_REPO] / UNET),
                               ADAPTER: str(repos[ADAPTER_REPO] / "diffusion_pytorch_model.safetensors"),
                               "vae/config.json": str(repos[SD15_REPO] / "vae" / "config.json")}}
    return data


part = scenario_part


def test_a_fresh_user_is_told_to_set_up_and_nothing_is_created(record):
    fresh = part(record, "fresh")
    assert fresh["error"] == ("Error: the engine is not set up (Preferences > Add-ons > FLASH Previs: press Set up "
                              "engine, or choose an existing Python)\n"), fresh["error"]
    assert not fresh["env_exists"], "only the setup may create the engine environment"
    assert "Environment: not set up" in fresh["labels"]
    assert ["flash.setup_engine", "Set up engine"] in fresh["operators"]
    assert fresh["starts"] == 0 and fresh["problems"] == []
    assert fresh["download_error"].startswith("Error: FLASH: the engine is not set up"), fresh["download_error"]


def test_an_engine_without_torch_says_so_everywhere(record):
    no_torch = part(record, "no_torch")
    assert "No module named 'torch'" in no_torch["error"], no_torch
    assert "No module named 'torch'" in no_torch["last_error"]
    assert no_torch["engine"].startswith("could not start: the engine's Python cannot load the engine"), no_torch
    shown = no_torch["panel_labels"] + no_torch["prefs_labels"]
    assert not any("SIGKILL" in text for text in shown), shown
    assert f"Engine: {no_torch['engine']}" in no_torch["panel_labels"]
    assert f"Engine process: {no_torch['engine']}" in no_torch["prefs_labels"]


def test_an_unwritable_output_folder_is_refused_before_the_engine_starts(record):
    unwritable = part(record, "unwritable")
    fix = "choose a writable Output Folder in Preferences > Add-ons > FLASH Previs, or make this one writable"
    assert unwritable["error"] == f"Error: cannot write takes to {UNWRITABLE}: Operation not permitted ({fix})\n"
    assert unwritable["starts_after"] == unwritable["starts_before"]  # no engine was started for it
    batch = unwritable["batch"]
    assert batch["code"] == 2, batch
    assert batch["lines"] == [
        "FLASH batch: error: cannot write takes to /sys/flash-takes: Operation not permitted (pass --out DIR with "
        "a writable folder, or fix the Output Folder in Preferences > Add-ons > FLASH Previs)"], batch
    assert batch["starts_after"] == batch["starts_before"]
    assert "Traceback" not in batch["output"] and "Errno" not in batch["output"]


def test_a_deleted_trained_action_shows_as_missing_in_the_dropdown_and_the_panel(record):
    deleted = part(record, "deleted_action")
    assert deleted["before"] == "trained:slide" and deleted["deleted"] == ["FINISHED"]
    assert deleted["after"] == "trained:slide", "the dropdown must not jump to another action"
    assert deleted["item_label"] == "slide (missing)"
    assert "Action 'trained:slide' not found: pick another" in deleted["labels"]
    assert "unknown action 'trained:slide'" in deleted["animate_error"]
    assert deleted["problems"] == []


def test_save_never_replaces_an_existing_copy(record):
    saving = part(record, "save")
    assert saving["default"]["code"] == 1  # the one shot failed (no such camera); the copy is still saved
    assert saving["existing_bytes"] == "an earlier copy, not to be replaced"
    assert f"FLASH batch: saved {saving['numbered']}" in saving["default"]["lines"]
    assert saving["numbered"].endswith("shot_flash_2.blend") and saving["numbered_is_blend"]
    named = saving["named"]
    assert named["code"] == 2 and named["lines"] == [
        f"FLASH batch: error: --save {saving['existing']} exists (pass --overwrite to replace it, "
        "--save-numbered to number the name, or save elsewhere)"], named
    assert saving["overwrite"]["code"] == 1 and saving["overwritten_is_blend"]


def test_the_preferences_download_base_weights_with_size_progress_cancel_and_resume(record):
    download = part(record, "download")
    hub = record["_hub"]
    before = download["before"]
    assert before["state"] == "none" and ["flash.download_weights", "Download base weights"] in before["operators"]
    assert any(text.startswith("Base weights: not downloaded") for text in before["labels"])
    # while it runs: the size, a progress bar and Cancel
    running = download["running"]
    assert running["progress"] and 0 < running["progress"][0]["factor"] < 1, running
    assert " of " in running["progress"][0]["text"] and ["flash.cancel_download", "Cancel"] in running["operators"]
    assert running["problems"] == []
    # cancelled: partial, never complete; the button resumes
    cancelled = download["cancelled"]
    assert cancelled["result"] == ["CANCELLED"] and cancelled["state"]["state"] == "partial", cancelled
    assert 0 < cancelled["state"]["done"] < cancelled["state"]["total"]
    assert ["flash.download_weights", "Resume download"] in cancelled["operators"]
    assert any(text.startswith("Download cancelled at") for text in cancelled["labels"])
    assert not cancelled["unet_in_place"]  # nothing half-written where the engine looks
    assert cancelled["model"] == "default"  # the engine is not pointed at an unfinished folder
    # resumed: the unet continues from where the cancel left it; the dropped adapter resumes by itself
    resumed = download["resumed"]
    assert resumed["result"] == ["FINISHED"] and resumed["state"]["state"] == "complete", resumed
    unet_gets = [r for m, p, r in hub["requests"] if m == "GET" and p.endswith("/" + UNET)]
    assert unet_gets == [None, f"bytes={hub['unet_size'] // 3}-"], unet_gets
    adapter_file = re.compile(r"/guoyww/animatediff-motion-adapter-v1-5-2/resolve/[^/]+/"
                              r"diffusion_pytorch_model\.safetensors")
    adapter_gets = [r for m, p, r in hub["requests"] if m == "GET" and adapter_file.fullmatch(p)]
    assert adapter_gets == [None, f"bytes={hub['adapter_size'] // 2}-"], adapter_gets
    dest = Path(resumed["folder"])
    for path, source in hub["served"].items():
        assert (dest / path).read_bytes() == Path(source).read_bytes(), path
    assert resumed["model"] == str(dest) and str(dest).startswith(record["fresh"]["user_dir"])
    assert any(text.startswith("Base weights: downloaded") for text in resumed["labels"])
    assert not any(op == "flash.download_weights" for op, _ in resumed["operators"])


# ---------------------------------------------------------------------------------------
# Blender side (runs as a script with the bpy module)


def scenario(zip_path: str, work: str, out: str, no_torch: str, stall: str) -> None:  # pragma: no cover
    import threading
    import time

    import bpy

    scenario_record = ScenarioRecord(out)
    record, save = scenario_record.record, scenario_record.save
    work_dir = Path(work)
    work_dir.mkdir(parents=True)

    def animate(**kwargs) -> str:
        """The error Animate shows ("" when it runs)."""
        return call(bpy.ops.flash.animate_action, **kwargs)[1]

    def draw(function, owner) -> tuple[list[str], list[tuple], list[str]]:
        """Labels, (operator, text) pairs and layout problems of one draw."""
        calls: list = []
        function(Drawer(Layout(calls), owner), bpy.context)
        labels = [c[2].get("text", "") for c in calls if c[0] == "label"]
        operators = [(c[1][0], c[2].get("text")) for c in calls if c[0] == "operator"]
        return labels, operators, layout_problems(bpy, calls, where=function.__qualname__)

    def batch_main(*args: str) -> dict:
        manager = addon("engine").MANAGER
        before = manager.starts
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            code = addon("operators.batch").main(["blender", "-b", bpy.data.filepath, "--", *args])
        text = output.getvalue()
        return {"code": code, "output": text, "starts_before": before, "starts_after": manager.starts,
                "lines": [line for line in text.splitlines() if line.startswith("FLASH batch:")]}

    def is_blend(path: Path) -> bool:
        head = path.read_bytes()[:7] if path.is_file() else b""
        return head == b"BLENDER" or head[:4] == b"\x28\xb5\x2f\xfd"  # plain, or zstd-compressed

    try:
        install_extension(zip_path)
        prefs = bpy.context.preferences.addons[MODULE].preferences
        status, manager = addon("progress").STATUS, addon("engine").MANAGER
        panel = addon("panels").FLASH_PT_animate
        env_dir = Path(bpy.utils.extension_path_user(MODULE, path="engine-env", create=False))
        scene = bpy.context.scene  # no picture is checked here: Cycles at one sample, not EEVEE's
        scene.render.engine = 'CYCLES'  # first render (~18 s compiling shaders on this CPU)
        scene.cycles.samples, scene.cycles.device = 1, 'CPU'

        # 1. never set up: Animate says so, the preferences offer the button, nothing is made
        error = animate(frames=3, steps=1, long_side=64)
        labels, operators, problems = draw(type(prefs).draw, prefs)
        _, download_error = call(bpy.ops.flash.download_weights)
        record["fresh"] = {"error": error, "env_exists": env_dir.exists(), "labels": labels,
                           "operators": operators, "starts": manager.starts, "problems": problems,
                           "download_error": download_error, "user_dir": bpy.utils.extension_path_user(MODULE)}
        save()

        # 2. an engine Python without torch
        prefs.engine_source, prefs.python_path = 'CUSTOM', no_torch
        prefs.model_source, prefs.device = 'TINY', 'cpu'
        error = animate(frames=3, steps=1, long_side=64)
        panel_labels, _, p1 = draw(panel.draw, None)
        prefs_labels, _, p2 = draw(type(prefs).draw, prefs)
        record["no_torch"] = {"error": error, "last_error": status.last_error, "engine": manager.describe(),
                              "panel_labels": panel_labels, "prefs_labels": prefs_labels, "problems": p1 + p2}
        save()

        # 3. an output folder that cannot be written: refused before any engine starts
        prefs.python_path = sys.executable  # a working engine from here on
        bpy.ops.wm.save_as_mainfile(filepath=str(work_dir / "shot.blend"))
        prefs.output_root = UNWRITABLE
        before = manager.starts
        error = animate(frames=3, steps=1, long_side=64)
        record["unwritable"] = {"error": error, "starts_before": before, "starts_after": manager.starts}
        prefs.output_root = ""
        record["unwritable"]["batch"] = batch_main("--out", UNWRITABLE, "--frames", "3", "--steps", "1")
        save()

        # 4. the scene's trained action is deleted
        actions = Path(addon("services").actions_dir())
        (actions / "slide").mkdir()
        (actions / "slide" / "action.toml").write_text('name = "Slide"\nprompt = "a person slides."\n')
        addon("services").get_catalog().refresh(force=True)
        settings = bpy.context.scene.flash
        settings.action = "trained:slide"
        before = settings.action
        deleted = sorted(bpy.ops.flash.delete_action(folder="slide"))
        after = settings.action
        items = addon("properties")._action_items(settings, bpy.context)
        labels, _, problems = draw(panel.draw, None)
        record["deleted_action"] = {
            "before": before, "deleted": deleted, "after": after,
            "item_label": next((i[1] for i in items if i[0] == after), None), "labels": labels,
            "animate_error": animate(frames=3, steps=1, long_side=64), "problems": problems}
        save()

        # 5. --save next to a copy from an earlier run: numbered, never replaced
        existing = work_dir / "shot_flash.blend"
        existing.write_text("an earlier copy, not to be replaced")
        default = batch_main("--camera", "Nope", "--save")
        numbered = work_dir / "shot_flash_2.blend"
        named = batch_main("--camera", "Nope", "--save", "//shot_flash.blend")
        record["save"] = {
            "default": default, "named": named, "existing": str(existing.resolve()),
            "existing_bytes": existing.read_bytes().decode(errors="replace"), "numbered": str(numbered.resolve()),
            "numbered_is_blend": is_blend(numbered)}
        numbered.write_text("replaced below, as --overwrite allows")
        overwrite = batch_main("--camera", "Nope", "--save", "//shot_flash_2.blend", "--overwrite")
        record["save"].update(overwrite=overwrite, overwritten_is_blend=is_blend(numbered))
        save()

        # 6. base weights from the preferences, against the stand-in hub: cancelled, then resumed
        services = addon("services")
        prefs.model_source = 'DEFAULT'
        labels, operators, problems = draw(type(prefs).draw, prefs)
        download = record["download"] = {"before": {"state": services.weights_state()["state"], "labels": labels,
                                                    "operators": operators, "problems": problems}}
        partial = services.weights_dir() / ".flash-download"
        running: dict = {"progress": []}

        def cancel_when_stalled():  # the user watches the bar, then presses Cancel
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                run = status.download
                part_file = next(partial.glob(UNET + ".*.part"), None)  # named by the file's id too
                if run is not None and part_file is not None and part_file.stat().st_size >= int(stall) \
                        and run.file == UNET:
                    calls: list = []
                    type(prefs).draw(Drawer(Layout(calls), prefs), bpy.context)
                    running["progress"] = [c[2] for c in calls if c[0] == "progress"]
                    running["operators"] = [(c[1][0], c[2].get("text")) for c in calls if c[0] == "operator"]
                    running["problems"] = layout_problems(bpy, calls, where="running")
                    run.cancel()  # what the Cancel button does
                    return
                time.sleep(0.02)

        thread = threading.Thread(target=cancel_when_stalled, daemon=True)
        thread.start()
        result = sorted(bpy.ops.flash.download_weights())
        thread.join(10)
        download["running"] = running
        labels, operators, problems = draw(type(prefs).draw, prefs)
        download["cancelled"] = {"result": result, "state": services.weights_state(), "labels": labels,
                                 "operators": operators, "problems": problems,
                                 "unet_in_place": (services.weights_dir() / UNET).exists(),
                                 "model": services.model_argument(prefs)}
        save()
        result = sorted(bpy.ops.flash.download_weights())  # the same button: resumes
        labels, operators, problems = draw(type(prefs).draw, prefs)
        download["resumed"] = {"result": result, "state": services.weights_state(), "labels": labels,
                               "operators": operators, "problems": problems,
                               "folder": str(services.weights_dir()), "model": services.model_argument(prefs)}
        save()
    except Exception:
        record["error"] = traceback.format_exc()
    save()


if __name__ == "__main__":
    scenario(*sys.argv[1:6])
