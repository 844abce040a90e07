"""Engine service benchmark: cold start, a warm job, and what the protocol itself costs.

    python bench/bench_service.py                       # tiny on CPU, 8 frames, 128x128, 10 steps
    python bench/bench_service.py --frames 16 --size 256 --steps 25 --repeats 3

Measures, through a real ``python -m flash_engine serve`` subprocess driven by the client:

- cold start: spawn → hello answered (imports), and spawn → the first clip's frames on disk
  (imports + model load + the job), the fastest of ``--cold`` fresh engines;
- a warm job: the same job again, model already loaded (the status ``loads`` counter must
  stay at 1);
- the protocol's overhead per job: the fastest warm job through the service minus the
  fastest of the same job run in this process (resolve + run_animate on a warm pipeline;
  the two alternate so both see the same machine load), and, as a bound that machine noise
  does not blur, (messages per job) × (median round trip of a ``status`` request).

Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flash_engine.client import EngineClient  # noqa: E402


def job_args(reference: Path, out: Path, args) -> dict:
    return {"image": str(reference), "out": str(out), "prompt": "a person is jumping.", "frames": args.frames,
            "steps": args.steps, "width": args.size, "height": args.size, "seed": 1, "model": args.model,
            "device": args.device}


def draw_reference(size: int):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (70, 90, 160))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, size * 2 // 3, size, size], fill=(60, 130, 50))
    draw.ellipse([size // 3, size // 6, size // 2, size // 3], fill=(230, 190, 160))
    draw.rectangle([size // 2 - 6, size // 3, size // 2 + 6, size - 8], fill=(200, 40, 40))
    return image


class InProcess:
    """The same job without the service: resolve + warm pipeline + run_animate, in this process."""

    def __init__(self):
        from flash_engine.warm import PipelineCache

        self.cache = PipelineCache()

    def run(self, args: dict) -> float:
        from flash_engine.animate import resolve, run_animate
        from flash_engine.requests import parse

        started = time.perf_counter()
        job = resolve(parse("animate", args))
        run_animate(job, self.cache.get(job.key), progress=lambda phase, step, total: None, should_cancel=lambda: False,
                    action_slot=self.cache.slot)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="warm jobs per side (the fastest is reported)")
    parser.add_argument("--cold", type=int, default=2, help="cold starts (the fastest is reported)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        reference = work / "reference.png"
        draw_reference(args.size).save(reference)

        hellos, first_clips = [], []
        for attempt in range(args.cold):  # the last engine stays up for the warm jobs
            client = EngineClient(sys.executable, ["--model", args.model, "--device", args.device],
                                  engine_path=REPO, cwd=work)
            spawned = time.perf_counter()
            client.start()
            hellos.append(time.perf_counter() - spawned)
            events = []
            client.animate(job_args(reference, work / f"cold{attempt}", args), on_event=events.append)
            first_clips.append(time.perf_counter() - spawned)
            if attempt < args.cold - 1:
                client.close()
        hello_s, first_clip_s = min(hellos), min(first_clips)
        # Service and in-process jobs alternate, so both see the same machine load; the
        # fastest of each is the least disturbed estimate of its cost.
        local_side = InProcess()
        local_side.run(job_args(reference, work / "inproc-warmup", args))  # its load and warm-up: not counted
        warm, local = [], []
        for index in range(args.repeats):
            started = time.perf_counter()
            client.animate(job_args(reference, work / f"warm{index}", args))
            warm.append(time.perf_counter() - started)
            local.append(local_side.run(job_args(reference, work / f"inproc{index}", args)))
        round_trips = []
        for _ in range(200):
            started = time.perf_counter()
            status = client.status()
            round_trips.append(time.perf_counter() - started)
        assert status["loads"] == 1, status  # warm: one load for all the jobs
        client.close()

    service_ms, local_ms = min(warm) * 1000, min(local) * 1000
    round_trip_ms = statistics.median(round_trips) * 1000
    machine = f"{platform.processor() or platform.machine()} CPU" if args.device == "cpu" else args.device
    print(f"\nservice benchmark: {args.model}, {args.frames} frames {args.size}x{args.size}, {args.steps} steps, "
          f"{machine}, python {platform.python_version()}; {len(events)} events for one job\n")
    print("| model | clip | cold: spawn → hello | cold: spawn → first clip | warm job, service (min) "
          "| same job in-process (min) | difference | status round trip | messages × round trip |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.model} ({args.device}) | {args.frames}×{args.size}², {args.steps} steps | {hello_s:.1f} s "
          f"| {first_clip_s:.1f} s | {service_ms:.0f} ms | {local_ms:.0f} ms | {service_ms - local_ms:+.0f} ms "
          f"| {round_trip_ms:.2f} ms | {(len(events) + 1) * round_trip_ms:.1f} ms |")
    print(f"\ncold starts, spawn → hello (s): {', '.join(f'{t:.1f}' for t in hellos)}; "
          f"spawn → first clip (s): {', '.join(f'{t:.1f}' for t in first_clips)}")
    print(f"warm service jobs (ms): {', '.join(f'{t * 1000:.0f}' for t in warm)}; "
          f"in-process (ms): {', '.join(f'{t * 1000:.0f}' for t in local)}")
    print("'messages × round trip' bounds the protocol's own cost per job (request + events, each at most a "
          "round trip); 'difference' is the same, measured, with the machine's noise in it.")

if __name__ == "__main__":
    main()
