"""One rank of the DDP training benchmark: run under torchrun, prints rank 0's timing as JSON.

    torchrun --nproc-per-node 2 bench/bench_ddp.py --model tiny --frames 8 --size 64 --steps 5

Each rank trains the same synthetic clip with batch 1 (so N ranks train N clips per step) and
times UNet steps after a warm-up one; one rank is a plain process (no process group, no DDP).
``bench/run_benchmarks.py --only ddp`` runs it with 1 and N ranks and writes the table rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from flash_engine.library_logs import quiet_libraries  # noqa: E402
from flash_engine.models.loading import load_base  # noqa: E402
from flash_engine.training.clips import Clip  # noqa: E402
from flash_engine.training.config import TrainConfig  # noqa: E402
from flash_engine.training.distributed import join, ranks_from_environment  # noqa: E402
from flash_engine.training.trainer import FlashTrainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed UNet steps")
    parser.add_argument("--device", default="auto", help="auto: GPU LOCAL_RANK where there is CUDA, else the CPU")
    parser.add_argument("--threads", type=int, help="torch threads per rank (CPU)")
    args = parser.parse_args()
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    ranks = ranks_from_environment()
    team = join(ranks, args.device)
    from flash_engine.devices import pick_device

    device = team.device or pick_device(args.device)
    generator = np.random.default_rng(0)
    size, frames = args.size, args.frames
    clip = Clip(path=Path("synthetic"), prompt="a person is shooting a soccer ball.",
                frames=generator.integers(0, 255, (frames + 2, size * 5 // 4, size * 5 // 4, 3), dtype=np.uint8))
    config = TrainConfig(num_frames=frames, stride=1, width=size, height=size, steps=args.steps + 1,
                         decoder_steps=0, checkpoint_every=10**9)
    try:
        with tempfile.TemporaryDirectory() as work:
            trainer = FlashTrainer(load_base(args.model), [clip], config, Path(work), device=device, team=team)
            trainer.unet_step()  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            for _ in range(args.steps):
                loss = trainer.unet_step()
            loss.item()  # waits for the last step on any device
            seconds = (time.perf_counter() - started) / args.steps
    finally:
        team.close()
    if team.is_main:
        print(json.dumps({"ranks": team.world_size, "s_per_step": seconds, "device": str(device),
                          "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
