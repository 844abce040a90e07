"""Several engines on one machine, for real: ``blender -b shot.blend -P flash_batch.py --
--devices cpu,cpu`` (emulated with the bpy 5.0.1 wheel and the installed extension, the tiny
engine) animates three cameras on two engines at once and makes the same takes — names,
frames byte for byte, record — as the same batch on one engine; ``--devices cuda:0`` on this
CPU-only machine fails in one line before any engine starts.

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
    build_extension_zip, emulate_blender, install_extension, isolated_env, use_local_engine,
)

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy 5.0.1 wheel"),
              pytest.mark.slow]

CAMERAS = ("Cam A", "Cam B", "Cam C")
RUNS = {"one": [], "two": ["--devices", "cpu,cpu"]}


def _run(args: list, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, __file__, *map(str, args)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def _log(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout[-5000:] + proc.stderr[-3000:]


def batch_lines(proc: subprocess.CompletedProcess, root: Path) -> list[str]:
    """The run's ``FLASH batch:`` lines, its output root written ROOT."""
    return [line.replace(str(root), "ROOT") for line in proc.stdout.splitlines() if line.startswith("FLASH batch:")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("blender-devices")
    zip_path = build_extension_zip(tmp / "dist")
    env, work = isolated_env(tmp), tmp / "work"
    out = tmp / "setup.json"
    proc = _run(["setup", zip_path, work, out], env, tmp)
    assert out.is_file(), f"the Blender setup wrote no record (exit {proc.returncode}):\n{_log(proc)}"
    setup = json.loads(out.read_text())
    assert "error" not in setup, setup["error"]
    script = Path(setup["extension_dir"]) / "flash_batch.py"
    done = {}
    for name, extra in {**RUNS, "cuda": ["--devices", "cuda:0"]}.items():
        root = tmp / f"takes-{name}"
        command = ["blender", "-b", work / "shot.blend", "--python-exit-code", "1", "-P", script, "--",
                   "--cameras", "all", "--seed", "3", "--out", root, "--record", root / "record.json", *extra]
        done[name] = (_run(command, env, tmp), root)
    return done


def test_two_engines_on_the_cpu_make_the_same_takes_as_one(runs):
    (one, one_root), (two, two_root) = runs["one"], runs["two"]
    assert one.returncode == 0, _log(one)
    assert two.returncode == 0, _log(two)
    one_lines, two_lines = batch_lines(one, one_root), batch_lines(two, two_root)
    assert two_lines[0] == "FLASH batch: 3 shots of shot.blend on 2 engines (cpu, cpu)", _log(two)
    assert two_lines[1:] == one_lines[1:], _log(two)  # the same takes, in the same order
    assert one_lines[1:] == [f"FLASH batch: ok Scene/{camera}: Scene_{camera.replace(' ', '_')}_soccer_shoot_001, "
                             f"2 frames in ROOT/Scene_{camera.replace(' ', '_')}_soccer_shoot_001 (base model only)"
                             for camera in CAMERAS] + ["FLASH batch: recorded ROOT/record.json",
                                                       "FLASH batch: 3 shots: 3 ok, 0 failed"], _log(one)
    folders = sorted(p.name for p in one_root.iterdir() if p.is_dir())
    assert folders == sorted(p.name for p in two_root.iterdir() if p.is_dir())
    assert len(folders) == 3
    for folder in folders:
        frames = sorted(p.name for p in (one_root / folder).glob("frame_*.png"))
        assert frames == ["frame_0001.png", "frame_0002.png"]
        assert frames == sorted(p.name for p in (two_root / folder).glob("frame_*.png"))
        for frame in frames:
            assert (one_root / folder / frame).read_bytes() == (two_root / folder / frame).read_bytes(), \
                f"{folder}/{frame} differs between one engine and two"
    records = [json.loads((root / "record.json").read_text(encoding="utf-8"))["takes"]
               for root in (one_root, two_root)]
    assert [(t["plan"]["name"], t["camera"], t["seed"]) for t in records[0]] == \
           [(t["plan"]["name"], t["camera"], t["seed"]) for t in records[1]]


def test_both_engines_took_shots(runs):
    two, _ = runs["two"]
    lines = two.stdout.splitlines()
    for number in (1, 2):  # each engine's progress lines name it
        assert any(line.startswith(f"FLASH engine {number} (cpu): ") for line in lines), _log(two)
    one, _ = runs["one"]
    assert not any(line.startswith("FLASH engine") for line in one.stdout.splitlines())  # one engine: as before


def test_a_cuda_device_on_a_machine_without_one_fails_in_one_line(runs):
    proc, root = runs["cuda"]
    assert proc.returncode == 2, _log(proc)
    assert batch_lines(proc, root) == [
        "FLASH batch: error: --devices names cuda:0 but the engine sees no CUDA GPU (pass --devices cpu, or "
        "install the CUDA build of torch in the engine's environment)"], _log(proc)
    assert not root.exists()
    assert "Traceback" not in proc.stdout + proc.stderr, _log(proc)


# ---------------------------------------------------------------------------------------
# Blender side


def setup(zip_path: str, work: str, out: str) -> None:  # pragma: no cover - runs in Blender
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
        for index, name in enumerate(CAMERAS[1:], start=1):  # each camera its own view of the cube
            other = bpy.data.objects.new(name, camera.data.copy())
            scene.collection.objects.link(other)
            other.location, other.rotation_euler = (8.0 - 3 * index, -4.0 * index, 2.0), (1.3, 0.0, 0.6 * index)
        Path(work).mkdir(parents=True)
        bpy.ops.wm.save_as_mainfile(filepath=str(Path(work) / "shot.blend"))
    except Exception:
        record["error"] = traceback.format_exc()
    Path(out).write_text(json.dumps(record))


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        setup(*sys.argv[2:5])
    elif sys.argv[1] == "blender":
        emulate_blender(sys.argv[2:])
