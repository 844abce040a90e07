"""Does the built-in base draw a person a detector we did not train can see? The figures of
``docs/mannequin-base.md``'s "person" table, for one model or two side by side (same run):

    python -m mannequin.base_report [--model mannequin] [--compare OLD_FOLDER] [--json OUT]

On the test split (appearances and cameras no training clip has): MediaPipe Pose's person-
detection rate (``mannequin.judge``) on the rendered frames, on the same frames after the VAE's
encode → decode, and on clips the model generates from those clips' first frames with their
own action's sentence (training actions: what the base learned); the round trip's PSNR and
the keypoint error between MediaPipe's landmarks on the round trip and on the original; and
seconds per generated clip (16 frames, 25 DDIM steps, CFG) on this CPU. Rates come with a
standard error over clips (frames of one clip are not independent draws).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROUND_TRIP_ACTIONS = ("jump", "kick")  # a training and a held-out action, as the issue measured them
CLIPS_PER_ACTION = 4  # test-split clips: all the base's training run renders
STEPS, GUIDANCE, SEED = 25, 7.5, 0


def rate_with_error(found_per_clip: list[int], frames_per_clip: int) -> tuple[float, float]:
    """Mean detection rate and its standard error over clips."""
    rates = np.asarray(found_per_clip, dtype=float) / frames_per_clip
    error = float(rates.std(ddof=1) / math.sqrt(len(rates))) if len(rates) > 1 else float("nan")
    return float(rates.mean()), error


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255 ** 2 / max(mse, 1e-12))


def blurred(clip: np.ndarray, sigma: float) -> np.ndarray:
    """Every frame through a Gaussian blur of std ``sigma`` px (Pillow's radius is the std)."""
    from PIL import Image, ImageFilter

    return np.stack([np.asarray(Image.fromarray(frame).filter(ImageFilter.GaussianBlur(sigma))) for frame in clip])


def measure(model: str, cache: Path, judge, train_actions: tuple[str, ...], log=print,
            blurs: tuple[float, ...] = ()) -> dict:
    """``blurs``: also judge the originals after a Gaussian blur of each std (px): how sharp a
    round trip must be for the judge (the answer does not depend on the model)."""
    from PIL import Image

    from flash_engine.models.loading import load_base
    from flash_engine.pipeline import AnimationSettings, FlashPipeline
    from mannequin.actions import PROMPTS
    from mannequin.benchmark import vae_round_trip
    from mannequin.generate import clip_path
    from mannequin.judge import score
    from mannequin.train_base import read_clip

    base = load_base(model)
    pipeline = FlashPipeline(base)

    def clip(action: str, index: int) -> np.ndarray:
        return read_clip(clip_path(cache / "test", action, index, "png"), 16)

    found = {"original": [], "round_trip": [], **{f"blur {sigma:g}": [] for sigma in blurs}}
    psnrs, errors = [], []
    for action in ROUND_TRIP_ACTIONS:
        for index in range(CLIPS_PER_ACTION):
            truth = clip(action, index)
            rebuilt = vae_round_trip(base, truth)
            truth_points, rebuilt_points = judge.clip(truth), judge.clip(rebuilt)
            judged = score(rebuilt_points, truth_points)
            found["original"].append(judged.reference_found)
            found["round_trip"].append(judged.found)
            psnrs.append(psnr(rebuilt, truth))
            for sigma in blurs:
                found[f"blur {sigma:g}"].append(sum(p is not None for p in judge.clip(blurred(truth, sigma))))
            if judged.keypoint_error_px is not None:
                errors.append((judged.keypoint_error_px, judged.both_found))
    generated_found, truth_found, seconds = [], [], []
    for action in train_actions:
        truth = clip(action, 0)
        settings = AnimationSettings(prompt=PROMPTS[action], num_frames=16, steps=STEPS, guidance=GUIDANCE,
                                     seed=SEED, width=truth.shape[2], height=truth.shape[1])
        started = time.perf_counter()
        frames = pipeline(Image.fromarray(truth[0]), settings).frames
        seconds.append(time.perf_counter() - started)
        generated_found.append(sum(p is not None for p in judge.clip(frames)))
        truth_found.append(sum(p is not None for p in judge.clip(truth)))
        log(f"{model}: {action} generated, person in {generated_found[-1]}/16 frames ({seconds[-1]:.1f} s)")
    weighted = sum(e * n for e, n in errors) / max(1, sum(n for _, n in errors)) if errors else None
    return {
        "model": model, "identity": base.identity,
        "round_trip_clips": f"test split, {CLIPS_PER_ACTION} clips each of {', '.join(ROUND_TRIP_ACTIONS)}",
        "original": rate_with_error(found["original"], 16),
        "original_found": f"{sum(found['original'])}/{16 * len(found['original'])}",
        "round_trip": rate_with_error(found["round_trip"], 16),
        "round_trip_found": f"{sum(found['round_trip'])}/{16 * len(found['round_trip'])}",
        "round_trip_psnr": (float(np.mean(psnrs)), float(np.min(psnrs)), float(np.max(psnrs))),
        "keypoint_error_px": weighted,
        "blurred_originals": {sigma: f"{sum(found[f'blur {sigma:g}'])}/{16 * len(found['original'])}"
                              for sigma in blurs},
        "generated_clips": f"test split, clip 0 of each training action ({len(train_actions)}), own sentence",
        "generated": rate_with_error(generated_found, 16),
        "generated_found": f"{sum(generated_found)}/{16 * len(generated_found)}",
        "generated_truth": rate_with_error(truth_found, 16),
        "seconds_per_clip": float(np.median(seconds)),
    }


def demo_figure(model: str, cache: Path, path: Path, scale: int = 3) -> Path:
    """The picture in docs/mannequin-base.md: the demo take (the card's demo settings, as
    ``make demo``), the VAE round trip of its ground truth, and the ground truth, every other
    frame, enlarged ``scale``× (nearest neighbour: pixels as the model made them)."""
    from PIL import Image

    from flash_engine.models.loading import load_base
    from flash_engine.pipeline import AnimationSettings, FlashPipeline
    from mannequin.benchmark import model_card, vae_round_trip
    from mannequin.generate import clip_path
    from mannequin.train_base import read_clip

    demo = model_card(model)["demo"]
    truth = read_clip(clip_path(cache / "test", demo["action"], 0, "png"), demo["frames"])
    base = load_base(model)
    settings = AnimationSettings(prompt=demo["prompt"], num_frames=demo["frames"], steps=demo["steps"],
                                 guidance=demo["guidance"], seed=demo["seed"], width=demo["width"],
                                 height=demo["height"])
    generated = FlashPipeline(base)(Image.fromarray(truth[0]), settings).frames
    rows = [np.concatenate(list(clip[::2]), axis=1) for clip in (generated, vae_round_trip(base, truth), truth)]
    strip = Image.fromarray(np.concatenate(rows, axis=0))
    strip = strip.resize((strip.width * scale, strip.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path)
    return path


def _rate(pair) -> str:
    mean, error = pair
    return f"{100 * mean:.0f}% ± {100 * error:.0f}" if math.isfinite(error) else f"{100 * mean:.0f}%"


def table(results: list[dict]) -> str:
    names = [f"{Path(r['model']).name} {r['identity'][:8]}" for r in results]
    rows = [
        ("person found, original test frames (round-trip set)", lambda r: f"{r['original_found']} ({_rate(r['original'])})"),
        ("same frames after the VAE round trip", lambda r: f"{r['round_trip_found']} ({_rate(r['round_trip'])})"),
        ("round trip ÷ originals' rate", lambda r: f"{r['round_trip'][0] / max(r['original'][0], 1e-9):.2f}"),
        ("VAE round-trip PSNR, mean (min–max over clips)",
         lambda r: "{:.1f} dB ({:.1f}–{:.1f})".format(*r["round_trip_psnr"])),
        ("keypoint error, round trip vs original (px at 64²)",
         lambda r: "–" if r["keypoint_error_px"] is None else f"{r['keypoint_error_px']:.2f}"),
        ("person found, generated clips", lambda r: f"{r['generated_found']} ({_rate(r['generated'])})"),
        ("same clips' ground truth", lambda r: _rate(r["generated_truth"])),
        ("generated ÷ ground truth's rate", lambda r: f"{r['generated'][0] / max(r['generated_truth'][0], 1e-9):.2f}"),
        ("seconds per clip (16 frames, 25 steps, CPU, median)", lambda r: f"{r['seconds_per_clip']:.2f}"),
    ]
    for place, sigma in enumerate(results[0].get("blurred_originals", {}), start=2):  # beside the round trip
        rows.insert(place, (f"original frames after a Gaussian blur of {sigma:g} px",
                        lambda r, s=sigma: r.get("blurred_originals", {}).get(s, "–")))
    lines = ["| figure | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {label} | " + " | ".join(cell(r) for r in results) + " |" for label, cell in rows]
    for other, name in zip(results[1:], names[1:]):
        ratio = results[0]["seconds_per_clip"] / other["seconds_per_clip"]
        lines.append(f"\nSeconds per clip, `{names[0]}` ÷ `{name}` (same run): {ratio:.2f}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mannequin.base_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mannequin", help="the model to measure (default: the built-in)")
    parser.add_argument("--compare", nargs="+", default=[], metavar="MODEL",
                        help="more models measured in the same run (e.g. the previous base)")
    parser.add_argument("--cache", type=Path, help="mannequin clip cache (default: the training run's)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--blur", nargs="+", type=float, default=[], metavar="SIGMA",
                        help="also judge the original frames after a Gaussian blur of these stds (px)")
    parser.add_argument("--figure", type=Path, help="also draw the demo strip (generated / VAE round trip / "
                        "ground truth) of --model into this PNG")
    args = parser.parse_args(argv)
    import torch

    from mannequin.base_config import BaseConfig
    from mannequin.generate import default_cache_dir, generate
    from mannequin.judge import JudgeUnavailable, PoseJudge
    from mannequin.benchmark import model_card

    from flash_engine.library_logs import quiet_libraries

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = args.cache or default_cache_dir()
    config = BaseConfig()
    card = model_card(args.model)
    train_actions = tuple(card.get("train_actions") or config.train_actions)
    generate(cache, tuple(dict.fromkeys(train_actions + ROUND_TRIP_ACTIONS)), CLIPS_PER_ACTION, "test",
             config.data_seed, config.size, config.frames, "png", 2, lambda *_: None)
    try:
        judge = PoseJudge()
    except JudgeUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with judge:
        results = [measure(m, cache, judge, train_actions, blurs=tuple(args.blur) if i == 0 else ())
                   for i, m in enumerate([args.model, *args.compare])]
    print(table(results))
    if args.figure:
        print(f"wrote {demo_figure(args.model, cache, args.figure)}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "torch_threads": torch.get_num_threads()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
