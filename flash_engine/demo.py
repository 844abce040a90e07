"""``make demo``: animate a reference frame, writing frames + MP4 under out/.

With the built-in ``mannequin`` model (the default when it ships), the demo animates the
model card's reference (``demo_reference.png``) with the card's ``demo`` settings (prompt,
size, frames, steps, guidance, seed) at the model's native 64×64, and adds an enlarged
preview (``preview.mp4`` and ``strip.png``, nearest-neighbour ×4). When the model ships its pose
ControlNet, a second take beside it (``OUT-pose``) is steered by the card's demo poses (a
held-out action done by the reference's own person: ``mannequin.demo_pose``). Any other model animates
a reference frame drawn in code at 256 px long side.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

DEMO_ACTION = "soccer_shoot"


def draw_reference(width: int = 384, height: int = 256) -> Image.Image:
    """A previs-like still: sky, pitch, a figure about to kick a ball."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    horizon = int(height * 0.55)
    for y in range(horizon):  # sky gradient
        t = y / horizon
        draw.line([(0, y), (width, y)], fill=(int(110 + 80 * t), int(160 + 60 * t), 235))
    draw.rectangle([0, horizon, width, height], fill=(70, 140, 60))
    for x in range(0, width, 48):  # mowing stripes
        draw.polygon([(x, horizon), (x + 24, horizon), (x + 40, height), (x + 8, height)], fill=(80, 155, 70))
    cx, ground = int(width * 0.42), int(height * 0.86)
    skin, shirt, shorts = (230, 190, 160), (200, 40, 40), (30, 30, 90)
    draw.ellipse([cx - 12, ground - 150, cx + 12, ground - 126], fill=skin)  # head
    draw.rounded_rectangle([cx - 16, ground - 126, cx + 16, ground - 76], radius=6, fill=shirt)  # torso
    draw.line([(cx - 14, ground - 118), (cx - 40, ground - 92)], fill=shirt, width=9)  # arms
    draw.line([(cx + 14, ground - 118), (cx + 38, ground - 100)], fill=shirt, width=9)
    draw.rectangle([cx - 16, ground - 80, cx + 16, ground - 62], fill=shorts)
    draw.line([(cx - 8, ground - 62), (cx - 14, ground)], fill=skin, width=10)  # standing leg
    draw.line([(cx + 8, ground - 62), (cx + 30, ground - 20)], fill=skin, width=10)  # kicking leg, drawn back
    draw.ellipse([cx + 52, ground - 18, cx + 72, ground + 2], fill=(245, 245, 245), outline=(20, 20, 20))  # ball
    return image


PREVIEW_SCALE = 4  # mannequin frames are 64×64: too small to look at as they are


def write_preview(out: Path, frames, scale: int = PREVIEW_SCALE, fps: int = 8, maps=None) -> list[str]:
    """``preview.mp4`` + ``strip.png`` (the frames side by side), enlarged ``scale``× without
    smoothing; with ``maps`` (the take's pose maps, one per frame), the strip's first row is them."""
    import numpy as np

    from flash_engine.images import write_mp4

    def enlarged(images):
        return np.stack([np.asarray(Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale),
                                                                  Image.NEAREST)) for image in images])

    stack = enlarged(frames)
    rows = ([enlarged(maps)] if maps is not None else []) + [stack]
    Image.fromarray(np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)).save(out / "strip.png")
    write_mp4(stack, out / "preview.mp4", fps=fps)
    return ["preview.mp4", "strip.png"]


def _animate(request, extra_files=None) -> Path:
    """The demo's take through the same path as ``animate``: its folder is replaced on the next
    run only while it holds just what the demo wrote (a user's folder never is)."""
    from flash_engine.animate import resolve, run_animate
    from flash_engine.progress import stderr_progress
    from flash_engine.warm import PipelineCache

    job = resolve(request)
    cache = PipelineCache()
    run_animate(job, cache.get(job.key), progress=stderr_progress(), action_slot=cache.slot, extra_files=extra_files)
    return job.out


def run_demo(out: Path, model: str = "default") -> None:
    from flash_engine.animate import AnimateRequest
    from flash_engine.models.loading import MANNEQUIN
    from flash_engine.weights import default_weights_dir, resolve_model_source

    if resolve_model_source(model) == MANNEQUIN:
        run_mannequin_demo(out)
        return
    # Drawn into the engine's own data folder, never beside the user's --out.
    reference = default_weights_dir().parent / "demo_reference.png"
    reference.parent.mkdir(parents=True, exist_ok=True)
    draw_reference().save(reference)
    request = AnimateRequest(image=str(reference), out=str(out), action=DEMO_ACTION, model=model, long_side=256,
                             seed=7, overwrite=True, mp4=True)  # the preset's frames and steps
    print(f"demo: frames and flash.mp4 in {_animate(request)} (reference: {reference})", file=sys.stderr)


def run_mannequin_demo(out: Path) -> None:
    """Animate the model card's demo reference with its demo settings, then write the enlarged preview."""
    from flash_engine.animate import AnimateRequest
    from flash_engine.models.loading import MANNEQUIN, MANNEQUIN_DIR, mannequin_card

    demo = mannequin_card()["demo"]
    reference = MANNEQUIN_DIR / demo.get("image", "demo_reference.png")
    print(f"demo: model 'mannequin', reference {reference} ({demo.get('source', 'from the model card')})",
          file=sys.stderr)
    # The card names a prompt (the model's training sentence), not a FLASH preset.
    request = AnimateRequest(image=str(reference), out=str(out), prompt=demo["prompt"], model=MANNEQUIN,
                             width=demo["width"], height=demo["height"], frames=demo["frames"],
                             steps=demo.get("steps"), guidance=demo.get("guidance"), seed=demo.get("seed", 7),
                             overwrite=True, mp4=True)
    done = _animate(request, lambda folder, frames: write_preview(folder, frames))
    print(f"demo: frames and flash.mp4 in {done}; enlarged ×{PREVIEW_SCALE}: preview.mp4 and strip.png",
          file=sys.stderr)
    if "pose" in demo and (MANNEQUIN_DIR / "controlnet_pose").is_dir():
        run_mannequin_pose_demo(out.with_name(out.name + "-pose"), demo, reference)


def run_mannequin_pose_demo(out: Path, demo: dict, reference: Path) -> None:
    """The same reference steered by the card's demo poses (a held-out action, through the
    model's own pose ControlNet): ``animate --pose``, with the pose maps above the frames in
    the strip."""
    from flash_engine.animate import AnimateRequest
    from flash_engine.models.loading import MANNEQUIN, MANNEQUIN_DIR
    from flash_engine.pose.draw import draw_pose_maps
    from flash_engine.pose.format import read_pose_file

    pose = demo["pose"]
    pose_file = MANNEQUIN_DIR / pose["file"]
    request = AnimateRequest(image=str(reference), out=str(out), prompt=pose["prompt"], model=MANNEQUIN,
                             width=demo["width"], height=demo["height"], frames=demo["frames"],
                             steps=demo.get("steps"), guidance=demo.get("guidance"), seed=demo.get("seed", 7),
                             pose=str(pose_file), overwrite=True, mp4=True)
    maps = draw_pose_maps(read_pose_file(pose_file), demo["width"], demo["height"])
    done = _animate(request, lambda folder, frames: write_preview(folder, frames, maps=maps))
    print(f"demo: a take driven by the poses of {pose['action']} ({pose_file.name}) in {done}; "
          "strip.png has the pose maps above the frames", file=sys.stderr)
