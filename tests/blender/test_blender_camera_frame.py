"""``camera_frame`` (pure Python) against Blender's own ``Camera.view_frame``.

One bpy process (this file run as a script) computes both for every combination of camera
type, sensor fit, aspect ratio, pixel aspect, lens, sensor and shift, and writes the
pairs; the test compares them.
"""

from __future__ import annotations

import itertools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bpy") is None,
                                reason="needs the bpy 5.0.1 wheel (the test extra)")

REPO = Path(__file__).resolve().parents[2]

TYPES = ("PERSP", "ORTHO")
FITS = ("AUTO", "HORIZONTAL", "VERTICAL")
RESOLUTIONS = ((1920, 1080, 1.0, 1.0), (1080, 1920, 1.0, 1.0), (800, 800, 1.0, 1.0), (640, 480, 2.0, 1.0),
               (720, 576, 1.0, 1.5))
LENSES = ((35.0, 36.0, 24.0, 6.0), (85.0, 23.76, 13.365, 2.5))  # lens, sensor w, sensor h, ortho scale
SHIFTS = ((0.0, 0.0), (0.3, -0.2))


def test_camera_frame_matches_blender_view_frame(tmp_path):
    out = tmp_path / "frames.json"
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "blender-user")}
    proc = subprocess.run([sys.executable, __file__, str(out)], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = json.loads(out.read_text())
    assert len(cases) == len(TYPES) * len(FITS) * len(RESOLUTIONS) * len(LENSES) * len(SHIFTS)
    bad = []
    for case in cases:
        for ours, blenders in zip(case["ours"], case["blender"]):
            if any(abs(a - b) > 1e-5 * max(1.0, abs(b)) for a, b in zip(ours, blenders)):
                bad.append(case)
                break
    assert not bad, f"{len(bad)} of {len(cases)} differ, e.g. {bad[0]}"


def compare(out: str) -> None:  # pragma: no cover - runs with the bpy module
    sys.path.insert(0, str(REPO))
    from flash_blender.camera_frame import CameraParams, frame_corners, view_frame_depth  # before bpy: no add-on

    import bpy

    scene = bpy.context.scene
    camera = scene.camera.data
    cases = []
    for kind, fit, (rx, ry, px, py), (lens, sw, sh, ortho), (shx, shy) in itertools.product(
            TYPES, FITS, RESOLUTIONS, LENSES, SHIFTS):
        camera.type, camera.sensor_fit, camera.lens = kind, fit, lens
        camera.sensor_width, camera.sensor_height, camera.ortho_scale = sw, sh, ortho
        camera.shift_x, camera.shift_y = shx, shy
        render = scene.render
        render.resolution_x, render.resolution_y, render.pixel_aspect_x, render.pixel_aspect_y = rx, ry, px, py
        render.resolution_percentage = 37  # must not matter
        params = CameraParams(type=kind, lens=lens, sensor_width=sw, sensor_height=sh, sensor_fit=fit,
                              shift_x=shx, shift_y=shy, ortho_scale=ortho, resolution_x=rx, resolution_y=ry,
                              pixel_aspect_x=px, pixel_aspect_y=py)
        cases.append({
            "case": [kind, fit, rx, ry, px, py, lens, sw, sh, ortho, shx, shy],
            "ours": [list(c) for c in frame_corners(params, view_frame_depth(params))],
            "blender": [list(c) for c in camera.view_frame(scene=scene)],
        })
    Path(out).write_text(json.dumps(cases))


if __name__ == "__main__":
    compare(sys.argv[1])
