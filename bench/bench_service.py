"""Engine service benchmark: cold start, a warm job, and what the protocol itself costs.

    python bench/bench_service.py                       # tiny on CPU, 8 frames, 128x128, 10 steps
    python bench/bench_service.py --frames 16 --size 256 --steps 25 --repeats 3

Measures, through a real ``python -m flash_engine serve`` subprocess driven by the client:

- cold start: spawn → hello answered (imports), and spawn → the first clip's frames on disk
  (imports + model load + the job);
- a warm job: the same job again, model already loaded (the status ``loads`` counter must
  stay at 1);
- the protocol's overhead per job: the median warm job through the service minus the
  median of the same job run in this process (resolve + run_animate on a warm pipeline),
  and the median round trip of a ``status`` request.

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


def in_process_times(reference: Path, work: Path, args) -> list[float]:
    """The same job without the service: resolve + warm pipeline + run_animate."""
    from flash_engine.animate import AnimateRequest, resolve, run_animate
    from flash_engine.runtime import PipelineCache, PipelineKey, pick_device, pick_dtype, precision_name

    cache = PipelineCache()
    times = []
    for index in range(args.repeats + 1):  # the first run loads and warms up: not counted
        started = time.perf_counter()
        request = AnimateRequest.from_dict(job_args(reference, work / f"inproc{index}", args))
        job = resolve(request)
        device = pick_device(request.device)
        key = PipelineKey(job.model, None, str(device), precision_name(pick_dtype(request.precision, device)), False)
        run_animate(job, cache.get(key), progress=lambda phase, step, total: None, should_cancel=lambda: False)
        if index:
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="warm jobs per side (medians are reported)")
    args = parser.parse_args()

    from tests.conftest import draw_scene

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        reference = work / "reference.png"
        draw_scene(args.size, args.size).save(reference)

        client = EngineClient(sys.executable, ["--model", args.model, "--device", args.device], engine_path=REPO,
                              cwd=work)
        spawned = time.perf_counter()
        client.start()
        hello_s = time.perf_counter() - spawned
        events = []
        client.animate(job_args(reference, work / "cold", args), on_event=events.append)
        first_clip_s = time.perf_counter() - spawned
        warm = []
        for index in range(args.repeats):
            started = time.perf_counter()
            client.animate(job_args(reference, work / f"warm{index}", args))
            warm.append(time.perf_counter() - started)
        round_trips = []
        for _ in range(50):
            started = time.perf_counter()
            status = client.status()
            round_trips.append(time.perf_counter() - started)
        assert status["loads"] == 1, status  # warm: one load for all the jobs
        client.close()

        local = in_process_times(reference, work, args)

    service_ms, local_ms = statistics.median(warm) * 1000, statistics.median(local) * 1000
    machine = f"{platform.processor() or platform.machine()} CPU" if args.device == "cpu" else args.device
    print(f"\nservice benchmark: {args.model}, {args.frames} frames {args.size}x{args.size}, {args.steps} steps, "
          f"{machine}, python {platform.python_version()}; {len(events)} events for one job\n")
    print("| model | clip | cold: spawn → hello | cold: spawn → first clip | warm job (service) "
          "| same job in-process | protocol overhead / job | status round trip |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.model} ({args.device}) | {args.frames}×{args.size}², {args.steps} steps | {hello_s:.1f} s "
          f"| {first_clip_s:.1f} s | {service_ms:.0f} ms | {local_ms:.0f} ms | {service_ms - local_ms:+.0f} ms "
          f"| {statistics.median(round_trips) * 1000:.2f} ms |")
    print(f"\nwarm service jobs (ms): {', '.join(f'{t * 1000:.0f}' for t in warm)}; "
          f"in-process (ms): {', '.join(f'{t * 1000:.0f}' for t in local)}")


if __name__ == "__main__":
    main()
