"""What the Detail Enhancement Decoder does to motion, measured (issue 20).

    python -m mannequin.decoder_probe [--actions kick jumping_jack bow] [--shots 16] [--references 8]
        [--decoder-steps 100] [--trainings jitter jitter-spread no-jitter] [--threads 1] [--json FILE]

For each held-out action it trains the decoder phase alone (the UNet plays no part in it) on
the benchmark's few-shot clips, with the benchmark's settings, once per ``--trainings`` entry
(``TRAININGS``: with or without the spec's region colour jitter, and how a decoder sample's
frames are picked, ``TrainConfig.decoder_sampling``), and then measures:

1. **Ground truth**: the test clips' own latents (the VAE's encoding of the real continuation),
   decoded by the stock decoder and by each trained one. On the *moving* pixels (where a frame
   differs from the reference frame) ``pull`` is how far the trained decode moved from the
   stock one toward the reference frame, as a fraction of the way (0: kept the latent's pose,
   1: drew the reference's pose there); also the error to the truth there and on the static
   pixels, and the whole-clip flow cosine against the truth. **1b**: the same pull on latents
   the base model generates itself from the test references (``--generated``).
2. **Branches**: in each enhancement block, the fusion weights |w| and the two branches'
   contributions |w·s| (warping) and |w·t| (patch attention) relative to |h|, on moving vs
   static positions, and ``pull`` with one branch switched off.
3. **Distortions**: for training samples of the benchmark's kind, each distortion alone and all
   together, at the 64²-scaled sizes the benchmark trains with and at the spec's literal sizes
   (blur 3–10, elastic 1–20 px with σ 5, which are for 512² frames), by distance from the
   reference: the error of decoding the distorted frame with the stock decoder against the
   error of copying the reference frame. Where copying wins, the L2 loss pays the decoder
   for drawing the reference.

Cost: about a minute per 100 decoder steps per action and training on one 2-core CPU, plus
the clips (rendered once into the mannequin cache).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

MOVING_THRESHOLD = 0.1  # a pixel "moves" where it differs from the reference by this much (of 1)


# ---------------------------------------------------------------------------- measurements

def moving_mask(clip: np.ndarray, threshold: float = MOVING_THRESHOLD) -> np.ndarray:
    """(F, H, W) bool: where frame i differs from frame 0 (the reference) in any channel."""
    x = clip.astype(np.float32) / 255
    return np.abs(x - x[:1]).max(-1) > threshold


def pull_toward_reference(stock: np.ndarray, decoded: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """How far ``decoded`` moved from ``stock`` toward ``reference`` on ``mask``, as a fraction
    of the way: the projection of (decoded − stock) on (reference − stock). 0 keeps the stock
    decode's (the latent's) pose, 1 draws the reference there; NaN when nothing moves."""
    d = (decoded.astype(np.float64) - stock) / 255
    r = (reference.astype(np.float64)[None] - stock) / 255
    m = mask[..., None]
    denominator = float(((r * r) * m).sum())
    return float(((d * r) * m).sum() / denominator) if denominator > 0 else float("nan")


def masked_rmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    diff = (a.astype(np.float64) - b) / 255
    count = mask.sum() * a.shape[-1]
    return float(np.sqrt(((diff ** 2) * mask[..., None]).sum() / count)) if count else float("nan")


def to_pixels(clip: np.ndarray):
    import torch

    return torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 127.5 - 1


def decode_truth(vae, decoder, clip: np.ndarray, enhance: bool = True) -> np.ndarray:
    """The clip's latents (the encoder's mean) decoded by ``decoder``; frame 0 is the reference."""
    import torch

    from flash_engine.images import to_uint8_frames
    from flash_engine.models.decoder import encode_with_features

    with torch.no_grad():
        pixels = to_pixels(clip)
        latents, _ = encode_with_features(vae, pixels, decoder.enhanced_levels)
        _, features = encode_with_features(vae, pixels[:1], decoder.enhanced_levels)
        flags = torch.arange(len(clip)) > 0 if enhance else None
        return to_uint8_frames(decoder(latents, features, flags))


@contextmanager
def branches_recorded(decoder, off: str | None = None):
    """Record every enhancement block's h, w, s, t (and, with ``off`` = "warp" or "attention",
    switch that branch off) while decoding; yields {level: [dict, ...]} (one dict per call)."""
    import torch

    records: dict[str, list] = {}
    originals = {}
    for level, block in decoder.enhancers.items():
        originals[level] = block.forward

        # DetailEnhancementBlock.forward step by step (tests/mannequin/test_decoder_motion.py
        # checks that, with both branches on, it returns what the block does)
        def forward(hidden_states, reference, block=block, level=level):
            import torch.nn.functional as F

            num_frames, _, height, width = hidden_states.shape
            reference = reference.to(hidden_states)
            if reference.shape[-2:] != (height, width):
                reference = F.interpolate(reference, size=(height, width), mode="bilinear", align_corners=False)
            reference = block.reference_proj(reference)
            h_norm, g_norm = block.norm_h(hidden_states.contiguous()), block.norm_g(reference.contiguous())
            joint = torch.cat([h_norm, g_norm.expand(num_frames, -1, -1, -1)], dim=1)
            offset = block.offset_net(joint)
            warped = block._warp(reference, offset)
            attended = block._patch_attention(h_norm, g_norm)
            if off == "warp":
                warped = torch.zeros_like(warped)
            elif off == "attention":
                attended = torch.zeros_like(attended)
            weights = block.fusion_net(joint)
            records.setdefault(level, []).append({"h": hidden_states, "w": weights, "s": warped, "t": attended,
                                                  "offset": offset})
            return hidden_states + weights * (warped + attended)

        block.forward = forward
    try:
        yield records
    finally:
        for level, block in decoder.enhancers.items():
            block.forward = originals[level]


def branch_statistics(records: dict, mask: np.ndarray) -> dict:
    """Per level: mean |w|, |w·s|/|h| and |w·t|/|h| (per-position channel means) on moving and
    static positions of frames 1.. (the mask downsampled to the level), and the warp's offsets."""
    import torch
    import torch.nn.functional as F

    out = {}
    for level, calls in records.items():
        record = calls[-1]
        h, w, s, t = (record[k] for k in ("h", "w", "s", "t"))  # frames 1.. (frame 0 is not enhanced)
        size = h.shape[-2:]
        moving = F.adaptive_max_pool2d(torch.from_numpy(mask[1:]).float()[:, None], size)[:, 0] > 0
        static = ~moving
        scale = h.abs().mean(1)

        def mean(x, where):
            return float(x[where].mean()) if where.any() else float("nan")

        offset = record["offset"].norm(dim=1)
        out[level] = {
            "resolution": list(size),
            "w_moving": mean(w.abs().mean(1), moving), "w_static": mean(w.abs().mean(1), static),
            "warp_moving": mean((w * s).abs().mean(1) / scale, moving),
            "warp_static": mean((w * s).abs().mean(1) / scale, static),
            "attention_moving": mean((w * t).abs().mean(1) / scale, moving),
            "attention_static": mean((w * t).abs().mean(1) / scale, static),
            "offset_px_moving": mean(offset, moving), "offset_px_static": mean(offset, static),
        }
    return out


def truth_measurements(vae, stock, decoders: dict, clips: list[np.ndarray]) -> dict:
    """Section 1 and 2 for each decoder, averaged over ``clips``."""
    from mannequin.metrics import flow_cosine

    rows: dict[str, dict] = {}
    for name, decoder in {"stock": stock, **decoders}.items():
        per_clip = []
        for clip in clips:
            mask = moving_mask(clip)
            mask[0] = False
            static = ~moving_mask(clip)
            static[0] = False
            base = decode_truth(vae, stock, clip, enhance=False)
            with branches_recorded(decoder) as records:
                decoded = decode_truth(vae, decoder, clip)
            values = {"pull": pull_toward_reference(base, decoded, clip[0], mask),
                      "rmse_moving": masked_rmse(decoded, clip, mask),
                      "rmse_static": masked_rmse(decoded, clip, static),
                      "flow_cos": flow_cosine(decoded, clip),
                      "moving_fraction": float(mask[1:].mean())}
            if name != "stock":
                values["branches"] = branch_statistics(records, mask)
                for off in ("warp", "attention"):
                    with branches_recorded(decoder, off=off):
                        ablated = decode_truth(vae, decoder, clip)
                    values[f"pull_without_{off}"] = pull_toward_reference(base, ablated, clip[0], mask)
            per_clip.append(values)
        rows[name] = average(per_clip)
    return rows


def generated_measurements(model: str, stock, decoders: dict, references: list[np.ndarray], prompt: str,
                           steps: int = 25, guidance: float = 7.5, seed: int = 0) -> dict:
    """Section 1b: latents the base model generates itself (the benchmark's base row, reference i
    with seed i), decoded by each decoder. ``pull``: toward the reference frame, on the pixels where
    the stock decode moves (differs from its own frame 0); ``change``: RMSE from the stock decode."""
    import torch
    from PIL import Image

    from flash_engine.images import to_uint8_frames
    from flash_engine.models.loading import load_base
    from flash_engine.pipeline import AnimationSettings, FlashPipeline

    pipeline = FlashPipeline(load_base(model))
    captured = {}
    original = pipeline.decode

    def decode(latents, features, progress):
        captured.update(latents=latents, features=features)
        return original(latents, features, progress)

    pipeline.decode = decode
    per_decoder: dict[str, list] = {name: [] for name in decoders}
    scale = pipeline.base.vae.config.scaling_factor
    for index, clip in enumerate(references):
        settings = AnimationSettings(prompt=prompt, num_frames=len(clip), steps=steps, guidance=guidance,
                                     seed=seed + index, width=clip.shape[2], height=clip.shape[1])
        pipeline(Image.fromarray(clip[0]), settings)
        latents = captured["latents"][0].transpose(0, 1).float() / scale
        flags = torch.arange(len(clip)) > 0
        with torch.no_grad():
            plain = to_uint8_frames(stock(latents))
            mask = moving_mask(plain)
            mask[0] = False
            for name, decoder in decoders.items():
                decoded = to_uint8_frames(decoder(latents, captured["features"], flags))
                per_decoder[name].append({"pull": pull_toward_reference(plain, decoded, clip[0], mask),
                                          "change": masked_rmse(decoded, plain, np.ones(mask.shape, bool)),
                                          "moving_fraction": float(mask[1:].mean())})
    return {name: average(values) for name, values in per_decoder.items()}


def average(dicts: list[dict]) -> dict:
    out = {}
    for key, value in dicts[0].items():
        if isinstance(value, dict):
            out[key] = average([d[key] for d in dicts])
        elif isinstance(value, (int, float)):
            values = np.array([d[key] for d in dicts], dtype=np.float64)
            out[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        else:
            out[key] = value
    return out


def distortion_configs(scaled) -> dict:
    """Each distortion alone and all of them, at the benchmark's 64² sizes and the spec's literal ones."""
    from flash_engine.training.augment import DistortConfig

    literal = DistortConfig()  # the spec's values, which are for 512² frames
    none = dict(blur_kernel=(1, 1), color_factor=(1.0, 1.0), hue=0.0, elastic_strength=(0.0, 0.0),
                clean_probability=0.0)
    configs = {}
    for label, full in (("64²-scaled", scaled), ("spec, literal", literal)):
        base = replace(full, **none)
        configs[f"blur ({label})"] = replace(base, blur_kernel=full.blur_kernel)
        configs[f"elastic ({label})"] = replace(base, elastic_strength=full.elastic_strength,
                                                elastic_sigma=full.elastic_sigma)
        configs[f"all ({label})"] = replace(full, clean_probability=0.0)
    configs["colour jitter on 80% of regions"] = replace(scaled, **{**none, "color_factor": scaled.color_factor,
                                                                   "hue": scaled.hue})
    return configs


def distortion_measurements(vae, stock, clips: list[np.ndarray], configs: dict, gaps=(1, 2, 3, 8, 15),
                            samples: int = 6, seed: int = 0) -> dict:
    """Section 3: per distortion and distance from the reference, the MSE (×1000, pixels in
    [0, 1]) of the stock decode of the distorted frame and of the reference frame, against
    the clean frame: on the whole frame and on its moving pixels."""
    import torch

    from flash_engine.training.augment import distort

    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, config in configs.items():
        row = {}
        for gap in gaps:
            stock_err, copy_err, stock_moving, copy_moving = [], [], [], []
            for index in range(samples):
                clip = clips[index % len(clips)]
                start = int(torch.randint(0, len(clip) - gap, (), generator=generator))
                pair = clip[[start, start + gap]]
                video = torch.from_numpy(pair).permute(0, 3, 1, 2).float() / 255
                distorted = distort(video, config, generator)
                with torch.no_grad():
                    latents = vae.encode(distorted * 2 - 1).latent_dist.mean
                    decoded = ((stock(latents)[1] + 1) / 2).clamp(0, 1)
                target, reference = video[1], video[0]
                mask = torch.from_numpy(moving_mask(pair)[1])
                stock_err.append(float(((decoded - target) ** 2).mean()))
                copy_err.append(float(((reference - target) ** 2).mean()))
                if mask.any():
                    stock_moving.append(float(((decoded - target) ** 2)[:, mask].mean()))
                    copy_moving.append(float(((reference - target) ** 2)[:, mask].mean()))
            row[gap] = {"stock": 1000 * float(np.mean(stock_err)), "copy": 1000 * float(np.mean(copy_err)),
                        "stock_moving": 1000 * float(np.mean(stock_moving)) if stock_moving else float("nan"),
                        "copy_moving": 1000 * float(np.mean(copy_moving)) if copy_moving else float("nan")}
        out[name] = row
    return out


# ---------------------------------------------------------------------------- training

TRAININGS = {  # name: (the spec's region colour jitter, TrainConfig.decoder_sampling)
    "jitter": (True, "consecutive"),  # what the benchmark trained before 2026-12-02
    "jitter-spread": (True, "spread"),
    "no-jitter": (False, "consecutive"),  # what it trains now
    "no-jitter-spread": (False, "spread"),
}


def benchmark_train_config(steps: int, training: str = "no-jitter", seed: int = 0, size: int = 64, frames: int = 16):
    """The decoder phase as ``mannequin.benchmark`` trains variant 6 (its options), UNet off."""
    from flash_engine.training.config import TrainConfig
    from mannequin.benchmark import BenchmarkConfig

    jitter, sampling = TRAININGS[training]
    options = BenchmarkConfig(decoder_jitter=jitter).training_options()
    config = TrainConfig(num_frames=frames, stride=1, width=size, height=size, steps=0, decoder_steps=steps,
                         decoder_learning_rate=options["decoder_learning_rate"],
                         decoder_frames=options["decoder_frames"], decoder_sampling=sampling,
                         checkpoint_every=10 ** 9, seed=seed, tau=options["tau"], distort=options["distort"])
    return config.apply_variant(6)


def train_decoder(base, clips: list[np.ndarray], prompt: str, config, work: Path):
    """Run only the decoder phase of FlashTrainer on ``clips``; returns the trained decoder (eval)."""
    from flash_engine.training.clips import Clip
    from flash_engine.training.trainer import FlashTrainer

    items = [Clip(path=Path(f"clip{i}"), prompt=prompt, frames=c) for i, c in enumerate(clips)]
    trainer = FlashTrainer(base, items, config, work)
    trainer.run()
    return trainer.decoder.eval(), trainer.losses["decoder"]


# ---------------------------------------------------------------------------- command

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mannequin.decoder_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mannequin")
    parser.add_argument("--actions", nargs="+", default=None, help="default: the model card's held-out actions")
    parser.add_argument("--shots", type=int, default=16, help="train-split clips per action the decoder learns from")
    parser.add_argument("--references", type=int, default=8, help="test-split clips per action to decode")
    parser.add_argument("--decoder-steps", type=int, default=100)
    parser.add_argument("--trainings", nargs="+", default=["jitter", "jitter-spread", "no-jitter"],
                        help=f"decoder trainings to compare, among {', '.join(TRAININGS)}")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--generated", type=int, default=4,
                        help="references per action the base model animates for section 1b (0: skip it)")
    parser.add_argument("--no-distortions", action="store_true", help="skip section 3")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if any(t not in TRAININGS for t in args.trainings):
        parser.error(f"--trainings takes {', '.join(TRAININGS)}")
    if args.shots < 1 or args.references < 1 or args.decoder_steps < 1:
        parser.error("--shots, --references and --decoder-steps must be at least 1")
    import tempfile

    import torch

    from flash_engine.cli import quiet_libraries
    from flash_engine.models.decoder import DetailEnhancementDecoder
    from flash_engine.models.loading import load_base
    from mannequin.actions import ACTIONS, PROMPTS
    from mannequin.benchmark import model_card
    from mannequin.generate import clip_path, default_cache_dir, generate
    from mannequin.train_base import read_clip

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda line: print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)  # noqa: E731
    actions = tuple(args.actions or model_card(args.model).get("held_out_actions", ()))
    unknown = [a for a in actions if a not in ACTIONS]
    if not actions or unknown:
        parser.error(f"--actions: name actions among {', '.join(ACTIONS)}")
    cache = args.cache.expanduser() if args.cache else default_cache_dir()
    generate(cache, actions, args.shots, "train", 0, 64, 16, "png", 1, log)
    generate(cache, actions, args.references, "test", 0, 64, 16, "png", 1, log)

    def clips(split, action, count):
        return [read_clip(clip_path(cache / split, action, i, "png"), 16) for i in range(count)]

    started = time.perf_counter()
    result = {"settings": {**vars(args), "cache": str(cache), "json": str(args.json) if args.json else None,
                           "actions": list(actions)}, "truth": {}, "losses": {}}
    vae = load_base(args.model).vae.eval()
    stock = DetailEnhancementDecoder.from_vae(vae).eval()
    for action in actions:
        train, test = clips("train", action, args.shots), clips("test", action, args.references)
        decoders = {}
        for training in args.trainings:
            base = load_base(args.model)  # a fresh base each time: the trainer installs its modules in it
            config = benchmark_train_config(args.decoder_steps, training)
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as work:
                decoder, losses = train_decoder(base, train, PROMPTS[action], config, Path(work))
            decoders[training] = decoder
            result["losses"][f"{action}/{training}"] = [round(float(np.mean(losses[:10])), 5),
                                                        round(float(np.mean(losses[-10:])), 5)]
            log(f"{action}: {args.decoder_steps} decoder steps ({training}) in {time.perf_counter() - t0:.0f} s")
        result["truth"][action] = truth_measurements(vae, stock, decoders, test)
        print_truth(action, result["truth"][action])
        if args.generated:
            rows = generated_measurements(args.model, stock, decoders, test[: args.generated], PROMPTS[action])
            result.setdefault("generated", {})[action] = rows
            print(f"\n{action}: the base model's own latents ({args.generated} references) decoded")
            print("| decoder | pull → reference | change from stock (RMSE) |")
            print("|---|---|---|")
            for name, row in rows.items():
                print(f"| {name} | {row['pull']:.3f} | {row['change']:.4f} |")
    if not args.no_distortions:
        train_all = [c for a in actions for c in clips("train", a, min(args.shots, 4))]
        configs = distortion_configs(benchmark_train_config(1, "jitter").distort)
        result["distortions"] = distortion_measurements(vae, stock, train_all, configs)
        print_distortions(result["distortions"])
    result["wall_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


def print_truth(action: str, rows: dict) -> None:
    print(f"\n{action}: ground-truth latents decoded (moving pixels: {rows['stock']['moving_fraction']:.1%})")
    print("| decoder | pull → reference | RMSE moving | RMSE static | flow cos | pull, warp off | pull, attention off |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['pull']:.3f} | {row['rmse_moving']:.4f} | {row['rmse_static']:.4f} | "
              f"{row['flow_cos']:.3f} | {row.get('pull_without_warp', float('nan')):.3f} | "
              f"{row.get('pull_without_attention', float('nan')):.3f} |")
    for name, row in rows.items():
        for level, b in row.get("branches", {}).items():
            print(f"  {name} level {level} ({b['resolution'][0]}²): |w| moving {b['w_moving']:.3f} static "
                  f"{b['w_static']:.3f}; |w·s|/|h| {b['warp_moving']:.3f}/{b['warp_static']:.3f}; "
                  f"|w·t|/|h| {b['attention_moving']:.3f}/{b['attention_static']:.3f}; "
                  f"offset px {b['offset_px_moving']:.2f}/{b['offset_px_static']:.2f} (moving/static)")


def print_distortions(table: dict) -> None:
    gaps = list(next(iter(table.values())))
    print("\nMSE ×1000 against the clean frame, stock decode of the distorted frame / copying the reference "
          "(whole frame; moving pixels), by frames from the reference:")
    print("| distortion | " + " | ".join(f"gap {g}" for g in gaps) + " |")
    print("|---|" + "---|" * len(gaps))
    for name, row in table.items():
        cells = [f"{row[g]['stock']:.1f} / {row[g]['copy']:.1f}; {row[g]['stock_moving']:.0f} / "
                 f"{row[g]['copy_moving']:.0f}" for g in gaps]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
