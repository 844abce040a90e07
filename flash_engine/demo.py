"""``make demo``: animate a reference frame, writing frames + MP4 under out/.

With the built-in ``mannequin`` model (the default when it ships), the demo animates the
model card's reference (``demo_reference.png``) with the card's ``demo`` settings (prompt,
size, frames, steps, guidance, seed) at the model's native 64×64, and adds an enlarged
preview (``preview.mp4`` and ``strip.png``, nearest-neighbour ×4). Any other model animates
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


def write_preview(out: Path, scale: int = PREVIEW_SCALE, fps: int = 8) -> list[Path]:
    """``preview.mp4`` + ``strip.png`` (the frames side by side), enlarged ``scale``× without smoothing."""
    import numpy as np

    from flash_engine.images import write_mp4

    frames = []
    for path in sorted(out.glob("frame_*.png")):
        with Image.open(path) as frame:
            frames.append(np.asarray(frame.convert("RGB").resize((frame.width * scale, frame.height * scale),
                                                                  Image.NEAREST)))
    stack = np.stack(frames)
    strip = out / "strip.png"
    Image.fromarray(np.concatenate(list(stack), axis=1)).save(strip)
    return [write_mp4(stack, out / "preview.mp4", fps=fps), strip]


def run_demo(out: Path, model: str = "default") -> None:
    from flash_engine.cli import main
    from flash_engine.models.loading import MANNEQUIN
    from flash_engine.weights import resolve_model_source

    if resolve_model_source(model) == MANNEQUIN:
        run_mannequin_demo(out)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    reference = out.parent / "demo_reference.png"
    draw_reference().save(reference)
    print(f"demo: reference frame drawn to {reference}", file=sys.stderr)
    # The demo's own folder is replaced on each run; user outputs never are.
    code = main(["animate", "--image", str(reference), "--action", DEMO_ACTION, "--model", model,
                 "--long-side", "256", "--frames", "16", "--steps", "25", "--seed", "7",
                 "--out", str(out), "--overwrite", "--mp4"])
    if code:
        raise SystemExit(code)
    print(f"demo: frames and flash.mp4 in {out}", file=sys.stderr)


def run_mannequin_demo(out: Path) -> None:
    """Animate the model card's demo reference with its demo settings, then write the enlarged preview."""
    from flash_engine.cli import main
    from flash_engine.models.loading import MANNEQUIN, MANNEQUIN_DIR, mannequin_card

    demo = mannequin_card()["demo"]
    reference = MANNEQUIN_DIR / demo.get("image", "demo_reference.png")
    print(f"demo: model 'mannequin', reference {reference} ({demo.get('source', 'from the model card')})",
          file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The card names a prompt (the model's training sentence), not a FLASH preset: pass --prompt.
    # The demo's own folder is replaced on each run; user outputs never are.
    code = main(["animate", "--image", str(reference), "--prompt", demo["prompt"], "--model", MANNEQUIN,
                 "--width", str(demo["width"]), "--height", str(demo["height"]), "--frames", str(demo["frames"]),
                 "--steps", str(demo.get("steps", 25)), "--guidance", str(demo.get("guidance", 7.5)),
                 "--seed", str(demo.get("seed", 7)), "--out", str(out), "--overwrite", "--mp4"])
    if code:
        raise SystemExit(code)
    write_preview(out)
    print(f"demo: frames and flash.mp4 in {out}; enlarged ×{PREVIEW_SCALE}: preview.mp4 and strip.png",
          file=sys.stderr)
