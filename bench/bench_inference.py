"""Inference benchmark: seconds per denoising step and per clip, and peak memory.

    python bench/bench_inference.py --model tiny --frames 16 --size 256 --steps 25
    python bench/bench_inference.py --model sd15-random --frames 16 --size 256 --steps 1   # CPU
    python bench/bench_inference.py --model sd15-random --frames 16 --size 512 --steps 25  # GPU

A clip's time is measured whole (encode + all steps + decode); the per-step figure is the
denoise phase divided by the steps, after one warm-up clip. Prints one Markdown table row.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from flash_engine.models.loading import load_base  # noqa: E402
from flash_engine.pipeline import AnimationSettings, FlashPipeline  # noqa: E402
from flash_engine.runtime import pick_device, pick_dtype, precision_name  # noqa: E402


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux → GiB (process peak)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, sd15-random or a weights folder")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="square side in pixels (multiple of 8)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--offload", action="store_true")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up clip (slow CPU runs)")
    args = parser.parse_args()

    device = pick_device(args.device)
    dtype = pick_dtype(args.precision, device)
    started = time.perf_counter()
    pipeline = FlashPipeline(load_base(args.model), device=device, dtype=dtype, offload=args.offload)
    load_s = time.perf_counter() - started
    from PIL import Image

    reference = Image.new("RGB", (args.size, args.size), (120, 140, 160))
    settings = AnimationSettings(prompt="a person is shooting a soccer ball.", num_frames=args.frames,
                                 steps=args.steps, guidance=args.guidance, width=args.size, height=args.size)
    if not args.no_warmup:
        pipeline(reference, AnimationSettings(**{**settings.__dict__, "steps": 1}))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    result = pipeline(reference, settings)
    clip_s = time.perf_counter() - started
    step_s = result.timings["denoise"] / args.steps
    print(f"| {args.model} | {args.frames}×{args.size}² | {args.steps} | {precision_name(dtype)} | "
          f"{step_s:.3f} | {clip_s:.2f} | {result.timings['decode']:.2f} | {peak_memory_gib(device):.2f} | "
          f"{load_s:.1f} | {machine(device)} |")


if __name__ == "__main__":
    main()
