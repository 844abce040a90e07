"""FLASH benchmark harness: one command, one Markdown table.

    .venv/bin/python bench/run_benchmarks.py --model tiny --frames 16 --size 256 --steps 25
    .venv/bin/python bench/run_benchmarks.py --model sd15-random --frames 16 --size 256 --steps 1 \
        --train-frames 8 --train-size 128                                           # CPU, SD1.5-sized
    .venv/bin/python bench/run_benchmarks.py --model sd15-random --frames 16 --size 512 --steps 25 \
        --train-frames 16 --train-size 512                                          # GPU, full size

Sections (``--only`` picks some): inference (s/clip, s/step, peak memory, achieved TFLOP/s
against this device's measured matmul rate), animatediff (diffusers' AnimateDiffPipeline on
the same weights, steps and size: the cost of FLASH's additions), control (s/step without a
control, with a pose ControlNet and with pose + depth: the cost of motion control), decode (stock VAE decoder vs
Detail Enhancement Decoder, per frame), options (channels_last and torch.compile of the UNet
against eager, compile cost apart), memory (bench/memory_estimate.py's tensor accounting
for the same settings, beside the measured peak), precision (bf16/fp16 UNet output against fp32),
training (a FLASH step vs a plain fine-tune step on the same data, and a decoder step),
ddp (a UNet step on 1 rank vs --ddp-ranks ranks under torchrun, batch 1 on each, via
bench/bench_ddp.py: one thread per rank on the CPU, one GPU per rank on CUDA), engine (the service's cold start to the first frame and a warm second job, via
bench/bench_service.py). Ratios in one run hold on any machine; absolute figures
belong to the machine printed in the header.
"""

from __future__ import annotations

import argparse
import copy
import gc
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from flash_engine.library_logs import quiet_libraries  # noqa: E402
from flash_engine.models.loading import load_base  # noqa: E402
from flash_engine.pipeline import AnimationSettings, FlashPipeline  # noqa: E402
from flash_engine.devices import pick_device, pick_dtype, precision_name  # noqa: E402

PROMPT = "a person is shooting a soccer ball."


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat=1):
    """Best of ``repeat`` wall times of fn() (seconds), with device syncs around it."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def reset_peak(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS peak)"


def matmul_rate(device, dtype) -> float:
    """Measured dense matmul TFLOP/s: the device's practical ceiling for these ratios."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    repeat = 20 if device.type == "cuda" else 5
    seconds, _ = timed(lambda: [a @ b for _ in range(repeat)], device)
    return 2 * n ** 3 * repeat / seconds / 1e12


def unet_flops(pipeline: FlashPipeline, frames: int, size: int, guided: bool) -> float:
    unet = pipeline.base.unet
    channels = unet.config.in_channels
    batch = 2 if guided else 1
    latent = size // pipeline.base.size_multiple
    sample = torch.randn(batch, channels, frames, latent, latent, device=pipeline.device, dtype=pipeline.dtype)
    text = torch.randn(batch * frames, 77, unet.config.cross_attention_dim, device=pipeline.device,
                       dtype=pipeline.dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(sample, 500, encoder_hidden_states=text)
    return counter.get_total_flops()


def bench_inference(args, rows, device, dtype, pipeline):
    from PIL import Image

    reference = Image.new("RGB", (args.size, args.size), (120, 140, 160))
    settings = AnimationSettings(prompt=PROMPT, num_frames=args.frames, steps=args.steps, guidance=args.guidance,
                                 width=args.size, height=args.size, seed=0)
    if not args.no_warmup:
        pipeline(reference, AnimationSettings(**{**settings.__dict__, "steps": 1}))
    reset_peak(device)
    clip_s, result = timed(lambda: pipeline(reference, settings), device)
    step_s = result.timings["denoise"] / args.steps
    flops = unet_flops(pipeline, args.frames, args.size, args.guidance > 1)
    achieved = flops / step_s / 1e12
    ceiling = matmul_rate(device, dtype)
    rows.append(("inference", "seconds per clip", f"{clip_s:.2f}"))
    rows.append(("inference", "seconds per denoising step", f"{step_s:.3f}"))
    rows.append(("inference", "encode / denoise / decode (s)",
                 f"{result.timings['encode']:.2f} / {result.timings['denoise']:.2f} / {result.timings['decode']:.2f}"))
    rows.append(("inference", "peak memory", peak_gib(device)))
    rows.append(("inference", "UNet TFLOP per step (CFG batch)", f"{flops / 1e12:.3f}"))
    rows.append(("inference", "achieved TFLOP/s / measured matmul TFLOP/s",
                 f"{achieved:.3f} / {ceiling:.3f} = {achieved / ceiling:.1%}"))
    return clip_s


def bench_control(args, rows, device, dtype, pipeline):
    """The cost of motion control, in one run: seconds per denoising step without a control,
    with one ControlNet (pose) and with two (pose + depth), each a random one shaped for the
    model (docs/motion-control.md); the peak memory of each and the ControlNet's size."""
    from PIL import Image

    from flash_engine.models.controlnet import controlnet_for
    from flash_engine.pipeline import Control

    reference = Image.new("RGB", (args.size, args.size), (120, 140, 160))
    settings = AnimationSettings(prompt=PROMPT, num_frames=args.frames, steps=args.steps, guidance=args.guidance,
                                 width=args.size, height=args.size, seed=0)
    nets = [pipeline.place(controlnet_for(args.model, seed)) for seed in (1, 2)]
    conditions = torch.rand(args.frames, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    runs = {"no control": [], "pose": [Control(nets[0], conditions, name="pose")],
            "pose + depth": [Control(nets[0], conditions, name="pose"), Control(nets[1], conditions, name="depth")]}
    if not args.no_warmup:
        pipeline(reference, AnimationSettings(**{**settings.__dict__, "steps": 1}), controls=runs["pose + depth"])
    plain = None
    for label, controls in runs.items():
        reset_peak(device)
        _, result = timed(lambda: pipeline(reference, settings, controls=controls), device)
        step_s = result.timings["denoise"] / args.steps
        plain = plain or step_s
        rows.append(("control", f"seconds per denoising step, {label}", f"{step_s:.3f} (x{step_s / plain:.2f})"))
        rows.append(("control", f"peak memory, {label}", peak_gib(device)))
    parameters = sum(p.numel() for p in nets[0].parameters())
    rows.append(("control", "ControlNet parameters (each)",
                 f"{parameters / 1e6:.0f} M, {parameters * nets[0].dtype.itemsize / 2**30:.2f} GiB in "
                 f"{precision_name(dtype)}"))


def bench_options(args, rows, device, dtype):
    """The opt-in UNet switches, each in a fresh pipeline against eager in the same run: seconds
    per denoising step, the compile cost apart (the first clip), and agreement with eager."""
    from PIL import Image

    reference = Image.new("RGB", (args.size, args.size), (120, 140, 160))
    settings = AnimationSettings(prompt=PROMPT, num_frames=args.frames, steps=args.steps, guidance=args.guidance,
                                 width=args.size, height=args.size, seed=0)
    first_clip = AnimationSettings(**{**settings.__dict__, "steps": 1})
    eager_latents = eager_step = None
    variants = [("eager", {}), ("channels_last", {"channels_last": True}), ("torch.compile", {"compile_unet": True}),
                ("channels_last + torch.compile", {"channels_last": True, "compile_unet": True})]
    if device.type == "cuda":  # CUDA graphs: the UNet is one graph of static shapes
        variants.append(("channels_last + torch.compile, CUDA graphs",
                         {"channels_last": True, "compile_unet": "reduce-overhead"}))
    for label, switches in variants:
        pipeline = FlashPipeline(load_base(args.model), device=device, dtype=dtype, offload=args.offload, **switches)
        first_s, _ = timed(lambda: pipeline(reference, first_clip), device)
        _, result = timed(lambda: pipeline(reference, settings), device)
        step_s = result.timings["denoise"] / args.steps
        if eager_latents is None:
            eager_latents, eager_step = result.latents, step_s
            rows.append(("options", "eager: s per denoising step", f"{step_s:.3f}"))
        else:
            error = ((result.latents - eager_latents).norm() / eager_latents.norm()).item()
            rows.append(("options", f"{label}: s per denoising step (vs eager)",
                         f"{step_s:.3f} (speed-up {eager_step / step_s:.2f}×), clip latents differ by {error:.1e}"))
        if switches.get("compile_unet"):
            rows.append(("options", f"{label}: first 1-step clip, compile included (s)", f"{first_s:.1f}"))
        del pipeline
        reset_peak(device)


def bench_animatediff(args, rows, device, dtype, pipeline, flash_clip_s):
    """diffusers' own AnimateDiffPipeline, same weights/steps/size, stock attention."""
    from diffusers import AnimateDiffPipeline
    from diffusers.models.attention_processor import AttnProcessor2_0

    base = pipeline.base
    unet = copy.deepcopy(base.unet)
    unet.set_attn_processor(AttnProcessor2_0())
    stock = AnimateDiffPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
                                motion_adapter=None, scheduler=copy.deepcopy(base.scheduler))
    stock.set_progress_bar_config(disable=True)

    def run():
        return stock(PROMPT, num_frames=args.frames, height=args.size, width=args.size,
                     num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np",
                     decode_chunk_size=1, generator=torch.Generator("cpu").manual_seed(0))

    if not args.no_warmup:
        stock(PROMPT, num_frames=args.frames, height=args.size, width=args.size, num_inference_steps=1,
              guidance_scale=args.guidance, output_type="latent")
    seconds, _ = timed(run, device)
    rows.append(("animatediff", "AnimateDiffPipeline seconds per clip", f"{seconds:.2f}"))
    rows.append(("animatediff", "FLASH / AnimateDiff time", f"{flash_clip_s / seconds:.3f}"))
    del stock, unet


def bench_decode(args, rows, device, pipeline):
    from flash_engine.models.decoder import encode_with_features

    vae, decoder = pipeline.base.vae, pipeline.decoder
    latent_size = args.size // pipeline.base.size_multiple
    frames = min(args.frames, 4)
    latents = torch.randn(frames, vae.config.latent_channels, latent_size, latent_size, device=device,
                          dtype=pipeline.vae_dtype)
    pixels = torch.rand(1, 3, args.size, args.size, device=device, dtype=pipeline.vae_dtype) * 2 - 1
    with torch.no_grad():
        _, features = encode_with_features(vae, pixels, decoder.enhanced_levels)
        enhance = torch.arange(frames) > 0
        stock_s, _ = timed(lambda: vae.decode(latents).sample, device, repeat=2)
        ded_s, _ = timed(lambda: decoder(latents, features, enhance), device, repeat=2)
    rows.append(("decode", "stock VAE decoder, s per frame", f"{stock_s / frames:.3f}"))
    rows.append(("decode", "Detail Enhancement Decoder, s per frame", f"{ded_s / frames:.3f}"))
    rows.append(("decode", "DED / stock", f"{ded_s / stock_s:.3f}"))
    # The pipeline's decode of a whole clip per chunk size: bigger chunks, fewer and larger calls
    # (faster where launches matter) for more memory (the memory section estimates it).
    clip = torch.randn(1, vae.config.latent_channels, args.frames, latent_size, latent_size, device=device)
    for chunk in dict.fromkeys([1, 4, args.frames]):
        pipeline.decode_chunk = chunk
        with torch.no_grad():
            seconds, _ = timed(lambda: pipeline.decode(clip, features, lambda *_: None), device)
        rows.append(("decode", f"{args.frames}-frame clip, {chunk} frame(s) per decoder call, s",
                     f"{seconds:.2f}"))
    pipeline.decode_chunk = 1


def bench_training(args, rows, device):
    from flash_engine.training.augment import flip_and_crop, strong_augment
    from flash_engine.training.clips import Clip, sample_frames
    from flash_engine.training.config import TrainConfig
    from flash_engine.training.trainer import FlashTrainer

    import numpy as np

    size, frames = args.train_size, args.train_frames
    generator = np.random.default_rng(0)
    clip = Clip(path=Path("synthetic"), prompt=PROMPT,
                frames=generator.integers(0, 255, (frames + 2, size * 5 // 4, size * 5 // 4, 3), dtype=np.uint8))
    results = {}
    for name, variant in (("FLASH (#6)", 6), ("plain fine-tune (#1)", 1)):
        config = TrainConfig(num_frames=frames, stride=1, width=size, height=size, steps=args.train_steps + 1,
                             decoder_steps=0, checkpoint_every=10**9, decoder_frames=min(frames, 4))
        config.apply_variant(variant)
        base = load_base(args.model)
        with tempfile.TemporaryDirectory() as work:
            trainer = FlashTrainer(base, [clip], config, Path(work), device=device)
            trainer.unet_step()  # warm-up
            reset_peak(device)
            seconds, _ = timed(lambda: [trainer.unet_step() for _ in range(args.train_steps)], device)
            results[name] = seconds / args.train_steps
            rows.append(("training", f"{name} s per UNet step", f"{results[name]:.3f}"))
            rows.append(("training", f"{name} peak memory", peak_gib(device)))
            if variant == 6:
                trainer.decoder_step()
                decoder_s, _ = timed(lambda: [trainer.decoder_step() for _ in range(args.train_steps)], device)
                rows.append(("training", f"decoder step ({config.decoder_frames} frames) s",
                             f"{decoder_s / args.train_steps:.3f}"))
        del trainer, base
        reset_peak(device)
    rows.append(("training", "FLASH step / plain step",
                 f"{results['FLASH (#6)'] / results['plain fine-tune (#1)']:.2f}"))
    # A FLASH step's data: sampled frames, flip/crop/resize and the strong augmentation. The
    # trainer runs it on its device; on the host it would be serial work in front of every step.
    strong = TrainConfig().strong  # the default strong augmentation, not a leftover loop variable
    for where in dict.fromkeys([device, torch.device("cpu")]):
        torch_generator = torch.Generator("cpu").manual_seed(0)

        def prepare_pair():
            video = flip_and_crop(sample_frames(clip, frames, 1, torch_generator, where), (size, size), torch_generator)
            return strong_augment(video, strong, torch_generator)

        prepare_pair()
        seconds, _ = timed(lambda: [prepare_pair() for _ in range(3)], where)
        rows.append(("training", f"data for one FLASH step on {where.type} s", f"{seconds / 3:.3f}"))


def bench_ddp(args, rows, device):
    """Step time of 1 rank vs N under torchrun (DDP), each rank a fresh process with batch 1:
    N ranks train N clips per step, so clips/s scale by N × (1-rank step / N-rank step). N plain
    processes at once (no process group) share the machine the same way without syncing: the
    N-rank step over theirs is the cost of DDP itself, apart from the cores' contention."""
    import json
    import os
    import subprocess

    worker = [str(Path(__file__).with_name("bench_ddp.py")), "--model", args.model, "--frames",
              str(args.train_frames), "--size", str(args.train_size), "--steps", str(args.train_steps),
              "--device", "cuda" if device.type == "cuda" else "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the CPU: one thread per rank, as torchrun sets for N > 1

    def timing(done) -> float:
        if done.returncode != 0:
            raise SystemExit(f"bench_ddp.py failed:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])["s_per_step"]

    many = args.ddp_ranks
    seconds = {ranks: timing(subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                                             str(ranks), *worker], env=env, capture_output=True, text=True))
               for ranks in (1, many)}
    alone = []
    for index in range(many):  # as the ranks would, each on its own GPU (CUDA) or sharing the cores (CPU)
        worker_env = {**env, "CUDA_VISIBLE_DEVICES": str(index)} if device.type == "cuda" else env
        alone.append(subprocess.Popen([sys.executable, *worker], env=worker_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    independent = 0.0
    for process in alone:
        out, err = process.communicate()
        independent += timing(subprocess.CompletedProcess(process.args, process.returncode, out, err)) / many
    rows.append(("ddp", "1 rank: s per UNet step (batch 1)", f"{seconds[1]:.3f}"))
    rows.append(("ddp", f"{many} ranks: s per UNet step (batch 1 each, effective {many})", f"{seconds[many]:.3f}"))
    rows.append(("ddp", f"{many}-rank / 1-rank step time", f"{seconds[many] / seconds[1]:.2f}"))
    rows.append(("ddp", f"clips per second, {many} ranks / 1 rank", f"{many * seconds[1] / seconds[many]:.2f}"))
    rows.append(("ddp", f"{many} plain processes at once, no sync: s per step", f"{independent:.3f}"))
    rows.append(("ddp", f"DDP's own cost: {many}-rank step / unsynced step", f"{seconds[many] / independent:.2f}"))


def bench_memory(args, rows, dtype):
    """The meta-device estimate (bench/memory_estimate.py) for this run's settings, beside the
    measured inference peak: on a GPU the two should agree to within the allocator's slack."""
    from bench.memory_estimate import MemorySettings, estimate_clip_memory

    for offload, chunk in dict.fromkeys([(args.offload, 1), (not args.offload, 1), (args.offload, args.frames)]):
        settings = MemorySettings(frames=args.frames, width=args.size, height=args.size, precision=precision_name(dtype),
                                  offload=offload, guided=args.guidance > 1, decode_chunk=chunk)
        estimate = estimate_clip_memory(args.model, settings)
        rows.append(("memory", f"estimated peak, {settings.label} (tensor accounting)",
                     f"{estimate.peak / 2**30:.2f} GiB ({estimate.peak_phase})"))


def bench_precision(args, rows, device):
    """Relative error of one UNet forward in bf16/fp16 against the fp32 reference, same inputs."""
    base = load_base(args.model)
    unet = base.unet.to(device)
    latent = args.size // base.size_multiple
    generator = torch.Generator("cpu").manual_seed(0)
    sample = torch.randn(1, unet.config.in_channels, args.frames, latent, latent, generator=generator)
    text = torch.randn(args.frames, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        reference = unet(sample.to(device), 500, encoder_hidden_states=text.to(device)).sample.float()
        for dtype in ([torch.bfloat16, torch.float16] if device.type == "cuda" else [torch.bfloat16]):
            unet.to(dtype)
            out = unet(sample.to(device, dtype), 500, encoder_hidden_states=text.to(device, dtype)).sample.float()
            error = (out - reference).norm() / reference.norm()
            rows.append(("precision", f"UNet {precision_name(dtype)} vs fp32, relative error", f"{error.item():.2e}"))
    del base, unet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, sd15-random or a weights folder")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256,
                        help="square side in pixels (a multiple of the model's size step: 8 for SD)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--train-frames", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps per variant")
    parser.add_argument("--ddp-ranks", type=int, default=2, help="ranks of the ddp section (GPUs on CUDA)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--offload", action="store_true")
    parser.add_argument("--no-warmup", action="store_true", help="skip warm-up runs (slow CPU runs)")
    sections = ["inference", "animatediff", "control", "decode", "options", "memory", "precision", "training",
                "ddp", "engine"]
    parser.add_argument("--only", nargs="+", choices=sections, default=sections)
    args = parser.parse_args()
    quiet_libraries()

    device = pick_device(args.device)
    dtype = pick_dtype(args.precision, device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    print(f"# {args.model}: {args.frames} frames at {args.size}², {args.steps} steps, {precision_name(dtype)}, "
          f"{machine}, torch {torch.__version__}", flush=True)
    rows: list[tuple[str, str, str]] = []
    started = time.perf_counter()
    pipeline = FlashPipeline(load_base(args.model), device=device, dtype=dtype, offload=args.offload)
    rows.append(("load", "build/load the pipeline (s)", f"{time.perf_counter() - started:.1f}"))
    flash_clip_s = None
    if "inference" in args.only:
        flash_clip_s = bench_inference(args, rows, device, dtype, pipeline)
    if "animatediff" in args.only and flash_clip_s is not None:
        bench_animatediff(args, rows, device, dtype, pipeline, flash_clip_s)
    if "control" in args.only:
        bench_control(args, rows, device, dtype, pipeline)
    if "decode" in args.only:
        bench_decode(args, rows, device, pipeline)
    if "options" in args.only:
        bench_options(args, rows, device, dtype)
    if "memory" in args.only:
        bench_memory(args, rows, dtype)
    if "precision" in args.only:
        bench_precision(args, rows, device)
    del pipeline  # the training sections build their own models
    reset_peak(device)
    if "training" in args.only:
        bench_training(args, rows, device)
    if "ddp" in args.only:
        bench_ddp(args, rows, device)
    print("| section | measure | value |\n|---|---|---|")
    for section, measure, value in rows:
        print(f"| {section} | {measure} | {value} |")
    if "engine" in args.only:
        # Cold start and the warm second job through a real `serve` subprocess: its own script
        # (it must time fresh processes), with this run's sizes.
        import subprocess

        print(flush=True)
        subprocess.run([sys.executable, str(Path(__file__).with_name("bench_service.py")), "--model", args.model,
                        "--device", str(device), "--frames", str(args.frames), "--size", str(args.size),
                        "--steps", str(args.steps), "--repeats", "2", "--cold", "1"], check=True)


if __name__ == "__main__":
    main()
