"""A Flamenco job of FLASH Previs, run for real without a Manager: the job type compiled by
Node (tests/support/flamenco_harness.js) from settings the Flamenco add-on's ``eval``
expressions give in Blender, then each task's ``blender-render`` command run as a worker
runs it (``{blender} {blenderArgs} FILE ARGS``, emulated with the bpy 5.0.1 wheel and the
installed extension, the tiny engine).

- two shots (a camera named with a space, one with a non-ASCII letter) give a take each and
  a record each; the first shot's task run again (re-queued) makes a new take and leaves
  the first one as it was; the save-copy task imports the takes the records name, from
  disk, without starting an engine;
- a worker without the shared folder, without an engine, or without the extension fails
  its task with exit 2 and one line, before anything is made.

Sizes are tiny (64 px, 2 frames, 1 step).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # this file also runs as a script inside Blender's process
from tests.support.blender_harness import (  # noqa: E402
    MODULE, build_extension_zip, emulate_blender, install_extension, isolated_env, use_local_engine,
)
from tests.support.flamenco import NODE, compile_job, hidden_evals  # noqa: E402

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy 5.0.1 wheel"),
              pytest.mark.skipif(NODE is None, reason="needs Node.js"), pytest.mark.slow]

CAMERAS = ("Cam A", "Kamera Ü")
BLENDER_ARGS = ["-b", "-y"]  # Flamenco's default {blenderArgs}


def _run(args: list, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, __file__, *map(str, args)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def worker_command(task: dict, script: Path) -> list[str]:
    """The worker's command line for a blender-render command (internal/worker/command_blender.go),
    with the Manager's variables as this test's worker has them."""
    [command] = task["commands"]
    params = command["parameters"]
    assert (params["exe"], params["exeArgs"]) == ("{blender}", "{blenderArgs}")
    args = [str(script) if arg == "{flash_batch}" else arg for arg in params["args"]]
    return ["blender", *BLENDER_ARGS, *params["argsBefore"], params["blendfile"], *args]


def flash_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("FLASH batch:")]


@pytest.fixture(scope="module")
def farm(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("blender-farm")
    zip_path = build_extension_zip(tmp / "dist")
    env, work = isolated_env(tmp), tmp / "work"
    out = tmp / "setup.json"
    proc = _run(["setup", zip_path, work, out, json.dumps(hidden_evals())], env, tmp)
    assert out.is_file(), f"the Blender setup wrote no record (exit {proc.returncode}):\n{proc.stderr[-6000:]}"
    setup = json.loads(out.read_text())
    assert "error" not in setup, setup["error"]
    root = tmp / "previs"
    root.mkdir()
    job = compile_job({**setup["submitted"], "blendfile": str(work / "shot.blend"), "output_root": str(root),
                       "shots": "All cameras", "seed": 5}, "sh010 v1", "2026-01-02T03:04:05")
    assert job["ok"], job
    script = Path(setup["extension_dir"]) / "flash_batch.py"
    runs = {}
    for task in job["tasks"][:-1]:
        runs[task["name"]] = _run(worker_command(task, script), env, tmp)
    first = job["tasks"][0]
    before = {p.name: p.stat().st_mtime_ns for p in (root / "Scene_Cam_A_soccer_shoot_001").iterdir()} \
        if (root / "Scene_Cam_A_soccer_shoot_001").is_dir() else {}
    runs["requeued"] = _run(worker_command(first, script), env, tmp)
    runs["save-copy"] = _run(worker_command(job["tasks"][-1], script), env, tmp)
    copy = Path(job["settings"]["job_folder"]) / "shot_flash.blend"
    inspected = tmp / "inspect.json"
    _run(["inspect", inspected, copy], env, tmp)

    # the bad workers: no shared folder, no engine, no extension
    command = worker_command(first, script)
    missing = tmp / "not-mounted"
    no_share = [str(missing) if arg == str(root) else arg for arg in command]
    broken_engine = ("import bpy; bpy.context.preferences.addons[" + repr(MODULE) + "].preferences.python_path = "
                     + repr(str(tmp / "no-such-env" / "bin" / "python")))
    no_engine = command[:command.index("-P")] + ["--python-expr", broken_engine] + command[command.index("-P"):]
    bare = tmp / "bare"
    bare.mkdir()
    no_extension = [str(REPO / "flash_blender" / "flash_batch.py") if arg == str(script) else arg for arg in command]
    runs["no-share"] = _run(no_share, env, tmp)
    runs["no-engine"] = _run(no_engine, env, tmp)
    runs["no-extension"] = _run(no_extension, isolated_env(bare), tmp)
    return {"job": job, "runs": runs, "root": root, "copy": copy, "before": before, "missing": missing,
            "inspect": json.loads(inspected.read_text()) if inspected.is_file() else {}}


def _ok(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout[-4000:] + proc.stderr[-4000:]


def test_each_shot_task_makes_its_take_and_its_record(farm):
    root, runs = farm["root"], farm["runs"]
    for index, camera in enumerate(CAMERAS, start=1):
        proc = runs[f"shot-0{index} {camera}"]
        assert proc.returncode == 0, _ok(proc)
        safe = camera.replace(" ", "_")
        assert flash_lines(proc)[1] == f"FLASH batch: ok Scene/{camera}: Scene_{safe}_soccer_shoot_001, 2 frames " \
               f"in {root / f'Scene_{safe}_soccer_shoot_001'} (base model only)", _ok(proc)
        assert (root / f"Scene_{safe}_soccer_shoot_001" / "frame_0002.png").is_file()
    records = sorted(Path(farm["job"]["settings"]["job_folder"]).glob("shot-*.json"))
    assert [r.name for r in records] == ["shot-01.json", "shot-02.json"]
    assert json.loads(records[1].read_text(encoding="utf-8"))["takes"][0]["camera"] == "Kamera Ü"


def test_a_requeued_shot_makes_a_new_take_and_leaves_the_first_alone(farm):
    root, proc = farm["root"], farm["runs"]["requeued"]
    assert proc.returncode == 0, _ok(proc)
    assert flash_lines(proc)[1] == "FLASH batch: ok Scene/Cam A: Scene_Cam_A_soccer_shoot_002, 2 frames in " \
           f"{root / 'Scene_Cam_A_soccer_shoot_002'} (base model only)", _ok(proc)
    first = root / "Scene_Cam_A_soccer_shoot_001"
    assert farm["before"] and {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == farm["before"]
    record = Path(farm["job"]["settings"]["job_folder"]) / "shot-01.json"
    assert [t["plan"]["name"] for t in json.loads(record.read_text())["takes"]] == ["Scene_Cam_A_soccer_shoot_002"]


def test_the_save_task_imports_every_recorded_take_from_disk_without_an_engine(farm):
    proc = farm["runs"]["save-copy"]
    assert proc.returncode == 0, _ok(proc)
    lines = flash_lines(proc)
    assert lines[0] == "FLASH batch: importing the takes of 2 records"
    assert any(line.startswith("FLASH batch: ok Scene/Cam A @1: Scene_Cam_A_soccer_shoot_002, 2 frames")
               for line in lines), lines
    assert any(line.startswith("FLASH batch: ok Scene/Kamera Ü @1: Scene_Kamera_Ü_soccer_shoot_001, 2 frames")
               for line in lines), lines
    assert f"FLASH batch: saved {farm['copy']}" in lines
    takes = farm["inspect"].get("takes")
    assert takes == {"Scene_Cam_A_soccer_shoot_002": "Cam A", "Scene_Kamera_Ü_soccer_shoot_001": "Kamera Ü"}, \
        farm["inspect"]


@pytest.mark.parametrize("run, line", [
    ("no-share", "FLASH batch: error: the output root {missing} does not exist on this machine "
                 "(mount the shared folder here (or create it), or pass another --out)"),
    ("no-engine", "FLASH batch: error: engine Python not found: "),
    ("no-extension", "FLASH batch: error: the FLASH Previs extension is not installed or enabled "),
])
def test_a_worker_without_what_it_needs_fails_its_task_in_one_line(farm, run, line):
    proc = farm["runs"][run]
    assert proc.returncode == 2, _ok(proc)
    [only] = flash_lines(proc)
    assert only.startswith(line.format(missing=farm["missing"])), _ok(proc)
    assert not farm["missing"].exists()
    assert "Traceback" not in proc.stdout + proc.stderr, _ok(proc)


# ---------------------------------------------------------------------------------------
# Blender side


def setup(zip_path: str, work: str, out: str, evals: str) -> None:  # pragma: no cover - runs in Blender
    import bpy

    record: dict = {}
    try:
        install_extension(zip_path)
        record["extension_dir"] = bpy.utils.user_resource("EXTENSIONS", path="user_default/flash_previs")
        use_local_engine('TINY')
        bpy.ops.wm.save_userpref()
        scene = bpy.context.scene
        scene.render.engine = 'CYCLES'
        scene.cycles.samples, scene.cycles.device = 1, 'CPU'
        scene.render.resolution_x, scene.render.resolution_y = 64, 48
        settings = scene.flash
        settings.frames, settings.steps, settings.native_size, settings.long_side = 2, 1, False, 64
        settings.output = 'PLANE'
        camera = scene.camera
        camera.name = CAMERAS[0]
        other = bpy.data.objects.new(CAMERAS[1], camera.data.copy())
        scene.collection.objects.link(other)
        other.location, other.rotation_euler = (8.0, 0.0, 1.0), (1.45, 0.0, 1.57)
        Path(work).mkdir(parents=True)
        bpy.ops.wm.save_as_mainfile(filepath=str(Path(work) / "shot.blend"))
        # what the Flamenco add-on sends: the job type's expressions, evaluated as it does
        locals_ = {"bpy": bpy, "C": bpy.context, "jobname": "job", "settings": None}
        record["submitted"] = {key: eval(expr, {}, locals_) for key, expr in json.loads(evals).items()}  # noqa: S307
    except Exception:
        record["error"] = traceback.format_exc()
    Path(out).write_text(json.dumps(record))


def inspect(out: str, blend: str) -> None:  # pragma: no cover - runs in Blender
    import bpy

    found: dict = {}
    if Path(blend).is_file():
        bpy.ops.wm.open_mainfile(filepath=blend)
        found["takes"] = {o["flash_take"]: o.get("flash_camera") for o in bpy.data.objects if "flash_take" in o}
    Path(out).write_text(json.dumps(found))


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        setup(*sys.argv[2:6])
    elif sys.argv[1] == "blender":
        emulate_blender(sys.argv[2:])
    elif sys.argv[1] == "inspect":
        inspect(*sys.argv[2:4])
