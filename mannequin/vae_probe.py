"""Rank VAE designs for the built-in base by what MediaPipe sees after a round trip.

    python -m mannequin.vae_probe NAME STEPS '{"vae_channels": [32, 64, 128], "latent_channels": 4}'

Trains stage 1 of ``mannequin.train_base`` (the same loss, data and schedule, on 30 train-split
clips per training action) for STEPS steps with the given ``BaseConfig`` changes, on one
thread, then round-trips 4 test-split clips each of jump and kick (128 frames) and prints one
JSON line: seconds per step, PSNR, frames where MediaPipe finds the person after the round trip
and in the originals, and the limb keypoint error. Short runs rank designs; they do not say how
good a design gets with the full stage. Also writes NAME.png (originals over round trips) into
``--out`` (default: the clip cache's sibling ``vae-probe`` folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

PROBE_CLIPS_PER_ACTION = 30
JUDGED_ACTIONS = ("jump", "kick")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mannequin.vae_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("steps", type=int)
    parser.add_argument("changes", help="BaseConfig fields to change, as JSON")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch
    from PIL import Image

    from mannequin import train_base as tb
    from mannequin.base_config import BaseConfig
    from mannequin.generate import default_cache_dir
    from mannequin.judge import PoseJudge, score

    torch.set_num_threads(1)
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.changes).items()}
    cache = default_cache_dir()
    out = args.out or cache.parent / "vae-probe"
    out.mkdir(parents=True, exist_ok=True)
    config = BaseConfig(vae_steps=args.steps, clips_per_action=PROBE_CLIPS_PER_ACTION, **changes)
    config.validate()
    tb.render_clips(config.replace(eval_clips_per_action=4), cache, 2, lambda *_: None)
    train = tb.load_frames(tb.clip_list(config, cache, "train", config.train_actions, PROBE_CLIPS_PER_ACTION), 16)
    parts = tb.build_parts(config)
    stage = tb.VaeStage(config, parts["vae"], train.frames)
    started = time.perf_counter()
    while stage.step < args.steps:
        loss = stage.train_step()
        if stage.step % 100 == 0:
            print(f"{args.name} step {stage.step} loss {loss:.4f}", file=sys.stderr, flush=True)
    per_step = (time.perf_counter() - started) / max(1, args.steps)
    vae = parts["vae"].eval()
    test = tb.load_frames(tb.clip_list(config, cache, "test", JUDGED_ACTIONS, 4), 16)
    original = test.frames.reshape(-1, *test.frames.shape[2:])
    with torch.no_grad():
        rebuilt = torch.cat([vae.decode(vae.encode(tb.to_pixels(original[i:i + 32])).latent_dist.mean).sample
                             for i in range(0, len(original), 32)])
    rebuilt = ((rebuilt.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    mse = ((rebuilt.astype(float) - original.astype(float)) ** 2).reshape(len(original), -1).mean(1)
    psnr = float(np.mean(10 * np.log10(255 ** 2 / np.maximum(mse, 1e-9))))
    with PoseJudge() as judge:
        judged = score(judge.clip(rebuilt), judge.clip(original))
    result = {"name": args.name, "steps": args.steps, "changes": json.loads(args.changes),
              "s_per_step": round(per_step, 3), "psnr": round(psnr, 2), "found": judged.found,
              "original_found": judged.reference_found, "frames": judged.frames,
              "keypoint_error_px": judged.keypoint_error_px, "vae_parameters": sum(p.numel() for p in vae.parameters())}
    print(json.dumps(result))
    picked = [original[:16:2], rebuilt[:16:2], original[80:96:2], rebuilt[80:96:2]]
    strip = np.concatenate([np.concatenate(list(row), axis=1) for row in picked], axis=0)
    Image.fromarray(strip).resize((strip.shape[1] * 3, strip.shape[0] * 3), Image.NEAREST).save(out / f"{args.name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
