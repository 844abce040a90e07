#!/usr/bin/env python3
"""The docs' picture of the three motion sources, made through the add-on in Blender.

    python tools/motion_pictures.py [--out docs/motion-sources.png] [--action march]

Needs the test extra (the bpy 5.0.1 wheel) and the engine's requirements in this Python; takes
a few minutes on a CPU. It builds the extension zip, installs it into a throw-away Blender user
directory and, in a Blender process (background mode), opens the mannequin world as an
artist's shot (``mannequin.rig_scene``: a test-split clip's figure on a keyed armature, its
camera), then, with the built-in ``mannequin`` model:

1. *Preview Motion* with Rig and Depth from Scene: the pose maps over the depth (no model);
2. a take with *Action* only (the prompt);
3. a take with *Rig* (the armature, read through the shot's camera);
4. a take with *Reference Clip*: another test-split clip of the same action (another person,
   camera and place), written as an 8 fps MP4 and read by the engine's driving path.

The picture has one row each (the reference clip's own frames above its take), every other
frame of 16, enlarged ×2, with the row's name on the left.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODULE = "bl_ext.user_default.flash_previs"
FRAMES, STEPS, SIZE = 16, 25, 64
SHOWN = range(0, FRAMES, 2)
SCALE = 2
LABEL_WIDTH = 190
DRIVING_SIZE = 256  # the reference clip as footage is shot: larger than the model's frames


def _inside(zip_path: str, work: str, action: str, record_path: str) -> None:  # runs in Blender's process
    import bpy

    from flash_engine.images import write_mp4
    from mannequin.generate import clip_spec
    from mannequin.render import render_clip
    from mannequin.rig_scene import NOSE_BONE, build_rigged_shot

    work_dir = Path(work)
    record: dict = {}
    bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.engine_source, prefs.python_path, prefs.model_source, prefs.device = 'CUSTOM', sys.executable, 'DEFAULT', 'cpu'

    # The reference clip: another person doing the action, filmed from elsewhere.
    driving = render_clip(clip_spec(action, 1, "test", 0, DRIVING_SIZE, FRAMES))
    video = write_mp4(driving, work_dir / f"{action}_reference.mp4", fps=8)
    record["driving"] = str(video)

    shot = build_rigged_shot(clip_spec(action, 0, "test", 0, SIZE, FRAMES))
    scene = shot.scene
    bpy.ops.wm.save_as_mainfile(filepath=str(work_dir / "shot.blend"))
    flash = scene.flash
    flash.rig = shot.armature
    bpy.ops.flash.edit_bones()  # the metarig preset has no nose bone: the table points it at ours
    next(row for row in flash.bone_points if row.point == "nose").bone = NOSE_BONE
    take = {"action": f"model:{action}", "frames": FRAMES, "steps": STEPS, "long_side": SIZE, "output": 'PLANE'}

    flash.motion, flash.use_depth, flash.frames = 'RIG', True, FRAMES
    bpy.ops.flash.preview_motion()
    plane = next(o for o in scene.objects if o.get("flash_preview"))
    record["preview"] = str(Path(bpy.path.abspath(plane["flash_folder"])))
    flash.use_depth = False  # the mannequin model has a pose ControlNet only

    def animate(motion: str, **extra) -> str:
        flash.motion = motion
        bpy.ops.flash.animate_action(**take, **extra)
        name = sys.modules[f"{MODULE}.progress"].STATUS.job.meta.name
        return str(work_dir / "flash" / name)

    record["action"] = animate('ACTION')
    record["rig"] = animate('RIG')
    flash.clip_path, flash.clip_start = str(video), 0
    record["clip"] = animate('CLIP')
    Path(record_path).write_text(json.dumps(record))


def _frames(folder: Path, pattern: str = "frame_*.png") -> list:
    import numpy as np
    from PIL import Image

    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob(pattern))]
    if len(frames) != FRAMES:
        raise SystemExit(f"error: {folder} has {len(frames)} frames, not {FRAMES}")
    return frames


def compose(rows: list[tuple[str, list]], out: Path) -> None:
    """Rows of (label, frames) → one PNG: the shown frames at SIZE·SCALE, labels on the left."""
    import numpy as np
    from PIL import Image, ImageDraw

    cell = SIZE * SCALE
    picture = Image.new("RGB", (LABEL_WIDTH + cell * len(SHOWN), cell * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    for row, (label, frames) in enumerate(rows):
        for column, index in enumerate(SHOWN):
            image = Image.fromarray(np.asarray(frames[index])).resize((cell, cell), Image.Resampling.NEAREST)
            picture.paste(image, (LABEL_WIDTH + column * cell, row * cell))
        for line, text in enumerate(label.split("\n")):
            draw.text((8, row * cell + cell // 2 - 14 + 14 * line), text, fill=(0, 0, 0))
    picture.save(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/motion_pictures.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "motion-sources.png")
    parser.add_argument("--action", default="march", help="a mannequin action (its test clips 0 and 1 are used)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "tools"))
    from build_extension import build

    with tempfile.TemporaryDirectory(prefix="flash-motion-pictures-") as tmp:
        tmp_dir = Path(tmp)
        zip_path = build(tmp_dir / "dist")
        env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_dir / "blender-user"), FLASH_MODEL="mannequin")
        record_path = tmp_dir / "record.json"
        (tmp_dir / "work").mkdir()
        proc = subprocess.run([sys.executable, __file__, "--inside", str(zip_path), str(tmp_dir / "work"), args.action,
                               str(record_path)], env=env, cwd=REPO)
        if proc.returncode or not record_path.is_file():
            print(f"error: the Blender process failed (exit {proc.returncode}); its output is above", file=sys.stderr)
            return 1
        record = json.loads(record_path.read_text())
        from mannequin.actions import PROMPTS

        prompt = PROMPTS[args.action]
        from PIL import Image
        import numpy as np

        from flash_engine.training.clips import read_video

        driving = [np.asarray(Image.fromarray(f).resize((SIZE, SIZE), Image.Resampling.BOX))
                   for f in read_video(Path(record["driving"]))]
        if len(driving) != FRAMES:
            raise SystemExit(f"error: {record['driving']} has {len(driving)} frames, not {FRAMES}")
        rows = [("Preview Motion\n(Rig + Depth from Scene,\nno model)", _frames(Path(record["preview"]))),
                (f"Action only\n\"{prompt}\"", _frames(Path(record["action"]))),
                ("Rig: the armature\nthrough the shot's camera", _frames(Path(record["rig"]))),
                ("Reference Clip\n(another person,\nanother camera)", driving),
                ("Reference Clip take\n(poses retargeted\nto the shot's person)", _frames(Path(record["clip"])))]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        compose(rows, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        sys.path.insert(0, str(REPO))
        try:
            _inside(*sys.argv[2:6])
        except Exception:
            traceback.print_exc()
            sys.stdout.flush()
            os._exit(1)
        sys.stdout.flush()
        os._exit(0)  # as Blender exits: no interpreter teardown with bpy loaded
    sys.exit(main())
