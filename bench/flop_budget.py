"""The hardware floor of the targets: FLOPs of a clip and of a training run, counted on the meta
device (no GPU, no compute), and the sustained rate each target needs.

    .venv/bin/python bench/flop_budget.py --model sd15-random --frames 16 --size 512

Counts come from ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add of
matmuls, convolutions and attention) running the pipeline's and the trainer's own code on
the meta device; elementwise work (norms, activations, the optimizer) is not counted. The
training steps run ``FlashTrainer.unet_step``/``decoder_step`` themselves, so two videos per
FLASH step, the VAE encodes and gradient checkpointing's recomputation are all in.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.memory_estimate import META, base_on_meta  # noqa: E402
from flash_engine.library_logs import quiet_libraries  # noqa: E402
from flash_engine.models.controlnet import controlnet_for  # noqa: E402
from flash_engine.models.decoder import DetailEnhancementDecoder, encode_with_features  # noqa: E402
from flash_engine.training.clips import Clip  # noqa: E402
from flash_engine.training.config import TrainConfig  # noqa: E402
from flash_engine.training.trainer import FlashTrainer  # noqa: E402

TERA = 1e12


def counted(fn) -> float:
    """TFLOP of one call of ``fn``."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / TERA


def clip_flops(model: str, frames: int, size: int, steps: int, controlnets: int = 0) -> dict[str, float]:
    """One guided clip: the reference encode, ``steps`` CFG UNet calls, the enhanced decode, and
    with ``controlnets`` the ControlNets' calls (each frame's condition, at every step)."""
    base = base_on_meta(model)
    with torch.device(META):
        decoder = DetailEnhancementDecoder.from_vae(base.vae)
        pixels = torch.empty(1, 3, size, size)
        latent = size // base.size_multiple
        latents = torch.empty(2, base.unet.config.in_channels, frames, latent, latent)
        text = torch.empty(2 * frames, 77, base.unet.config.cross_attention_dim)
        timestep = torch.full((), 500, dtype=torch.long)
    with torch.no_grad():
        features = {}
        encode = counted(lambda: features.update(
            features=encode_with_features(base.vae, pixels, decoder.enhanced_levels)[1]))
        unet = counted(lambda: base.unet(latents, timestep, encoder_hidden_states=text))
        decode = counted(lambda: decoder(latents[0].transpose(0, 1), features["features"], torch.arange(frames) > 0))
    result = {"reference encode": encode, f"UNet, {steps} guided steps": unet * steps, "decode (enhanced)": decode}
    if controlnets:
        with torch.device(META):  # frames folded into the batch, as the pipeline calls it
            net = controlnet_for(model)
            sample = torch.empty(2 * frames, base.unet.config.in_channels, latent, latent)
            condition = torch.empty(2 * frames, 3, size, size)
        with torch.no_grad():
            one = counted(lambda: net(sample, timestep, encoder_hidden_states=text, controlnet_cond=condition,
                                      return_dict=False))
        for index in range(controlnets):
            result[f"ControlNet {index + 1}, {steps} guided steps"] = one * steps
    return result


def training_flops(model: str, frames: int, size: int) -> dict[str, float]:
    """One step of each kind, as ``FlashTrainer`` runs it (variant #6 and plain #1)."""
    clip = Clip(Path("synthetic"), "a person", np.zeros((frames + 2, size, size, 3), dtype=np.uint8))
    result = {}
    for label, variant, checkpointing in (("FLASH step (#6), checkpointing", 6, "on"),
                                          ("FLASH step (#6), no checkpointing", 6, "off"),
                                          ("plain fine-tune step (#1), checkpointing", 1, "on")):
        config = TrainConfig(num_frames=frames, stride=1, width=size, height=size, steps=1, decoder_steps=1,
                             checkpoint_every=10**9, gradient_checkpointing=checkpointing)
        config.apply_variant(variant)
        base = base_on_meta(model)
        with tempfile.TemporaryDirectory() as work:
            with torch.device(META):  # the trainer's own new layers (the decoder's) too
                trainer = FlashTrainer(base, [clip], config, Path(work), device=META)
            result[label] = counted(trainer.unet_step)
            if variant == 6 and checkpointing == "on":
                result["of which VAE encodes (2 videos)"] = 2 * counted(
                    lambda: trainer.encode(torch.zeros(1, frames, 3, size, size)))
                result[f"decoder step ({config.decoder_frames} frames)"] = counted(trainer.decoder_step)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd15-random", help="tiny, sd15-random or a weights folder")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--clip-seconds", type=float, default=3.0, help="the per-clip target")
    parser.add_argument("--unet-steps", type=int, default=20_000)
    parser.add_argument("--decoder-steps", type=int, default=10_000)
    parser.add_argument("--training-hours", type=float, default=2.0, help="the per-action target")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="the GPU's dense bf16 peak (H100: ~790)")
    parser.add_argument("--controlnets", type=int, default=0, help="count this many ControlNets in the clip "
                        "(motion control: pose, pose + depth)")
    args = parser.parse_args()
    quiet_libraries()

    print(f"# {args.model}: {args.frames}×{args.size}², FLOPs counted on the meta device\n")
    print("| work | TFLOP |\n|---|---|")
    clip = clip_flops(args.model, args.frames, args.size, args.steps, args.controlnets)
    for name, tflop in clip.items():
        print(f"| clip: {name} | {tflop:.1f} |")
    clip_total = sum(clip.values())
    print(f"| **clip total** | **{clip_total:.1f}** |", flush=True)
    train = training_flops(args.model, args.frames, args.size)
    for name, tflop in train.items():
        print(f"| training: {name} | {tflop:.1f} |")
    decoder_step = next(v for k, v in train.items() if k.startswith("decoder step"))

    print(f"\n| target | sustained TFLOP/s needed | share of a {args.peak_tflops:.0f} TFLOP/s peak |\n|---|---|---|")
    needed = clip_total / args.clip_seconds
    print(f"| clip in {args.clip_seconds:g} s | {needed:.0f} | {needed / args.peak_tflops:.0%} |")
    for label in ("FLASH step (#6), checkpointing", "FLASH step (#6), no checkpointing"):
        total = args.unet_steps * train[label] + args.decoder_steps * decoder_step
        needed = total / (args.training_hours * 3600)
        print(f"| training in {args.training_hours:g} h ({args.unet_steps} UNet steps, {label.split(', ')[1]}; "
              f"{args.decoder_steps} decoder steps) | {needed:.0f} | {needed / args.peak_tflops:.0%} |")


if __name__ == "__main__":
    main()
