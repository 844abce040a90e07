"""``make demo``: animate a reference frame drawn in code, writing frames + MP4 under out/."""

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


def run_demo(out: Path, model: str = "default") -> None:
    from flash_engine.cli import main

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
