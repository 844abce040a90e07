"""``python -m flash_engine``: animate, train, serve, info, weights, demo.

Results go to files; progress and errors go to stderr; the exit code is non-zero on failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from flash_engine import protocol as P
from flash_engine import requests as R
from flash_engine.errors import FlashError
from flash_engine.library_logs import quiet_libraries
from flash_engine.weights import CONTROL_HELP  # standard library only


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flash_engine", description="FLASH image animation engine")
    commands = parser.add_subparsers(dest="command", required=True)

    animate = commands.add_parser("animate", help="animate a reference image")
    what = animate.add_argument_group("what to animate (an action preset, a prompt, or both)")
    R.add_arguments(animate, R.AnimateRequest,
                    groups={name: what for name in ("action", "prompt", "negative_prompt", "weights")})

    train = commands.add_parser("train", help="teach an action from a few clips (FLASH training)")
    R.add_arguments(train, R.TrainRequest)
    train.add_argument("--json", action="store_true", help="progress as JSON lines on stdout")

    info = commands.add_parser("info", help="device, versions, weights found, the model's actions and presets")
    info.add_argument("--model", default="default",
                      help="whose actions to list: as for animate (default: the default model)")
    info.add_argument("--json", action="store_true")

    weights = commands.add_parser("weights", help="base model weights")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True)
    fetch = weights_commands.add_parser("fetch", help="download SD 1.5 + AnimateDiff (needs network)")
    fetch.add_argument("--dest", type=Path, help="default: the per-user weights folder (see `info`)")
    fetch.add_argument("--control", action="store_true", help=CONTROL_HELP)

    demo = commands.add_parser("demo", help="animate a built-in reference image")
    demo.add_argument("--out", default="out/demo")
    demo.add_argument("--model", default="default", help="as for animate (default: the default model)")

    serve = commands.add_parser("serve", help="the engine service for the Blender add-on: JSON lines on stdin/stdout")
    # --model, --motion-adapter, --device, --precision, --offload: defaults for requests that leave them out
    R.add_arguments(serve, R.AnimateRequest, only=R.SERVICE_DEFAULTS)
    return parser


def animate_command(args) -> int:
    from flash_engine.animate import prepare, resolve, run_animate
    from flash_engine.progress import stderr_progress
    from flash_engine.warm import PipelineCache

    request = R.from_namespace("animate", args)
    job = resolve(request)
    print(f"flash: {job.frames} frames at {job.width}x{job.height}, {job.steps} steps, seed {job.seed}, "
          f"model {job.model} on {job.key.device}", file=sys.stderr)
    prepare(job, report=lambda line: print(f"flash: {line}", file=sys.stderr))  # a driving clip: before the model
    cache = PipelineCache()
    pipeline = cache.get(job.key)
    metadata = run_animate(job, pipeline, progress=stderr_progress(), action_slot=cache.slot,
                           controlnets=cache.controlnets(job.controlnet_keys))
    print(f"flash: wrote {len(metadata['frames'])} frames to {job.out}", file=sys.stderr)
    if metadata["action"]["base_model_only"]:
        print("flash: no trained weights for this action: the base model animated the prompt", file=sys.stderr)
    return 0


def train_command(args) -> int:
    import signal
    import time

    from flash_engine.errors import JobCancelled
    from flash_engine.training.job import resolve_train, run_train
    from flash_engine.training.trainer import read_checkpoint_meta

    def emit(event: dict) -> None:
        sys.stdout.write(P.encode(event).decode("ascii"))  # strict JSON, as the service writes
        sys.stdout.flush()

    def report(line: str) -> None:
        emit({"type": "log", "message": line}) if args.json else print(f"flash: {line}", file=sys.stderr)

    request = R.from_namespace("train", args)
    job = resolve_train(request, report=report)
    last_line = [0.0]
    interrupted = []
    # Ctrl-C (or a SIGTERM from a farm or a shell) finishes the current step and saves a
    # checkpoint instead of losing the run.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: interrupted.append(True))

    def progress(phase, step, total, loss=None, it_per_s=None, eta_s=None):
        if args.json:
            emit({"type": "progress", "phase": phase, "step": step, "total": total, "loss": loss,
                  "it_per_s": it_per_s, "eta_s": eta_s})
            return
        now = time.monotonic()
        if step == total or now - last_line[0] >= 2.0:
            last_line[0] = now
            eta = f" ETA {eta_s:.0f}s" if eta_s is not None else ""
            print(f"  {phase} {step}/{total} loss {loss:.4f} {it_per_s:.2f} it/s{eta}", file=sys.stderr, flush=True)

    try:
        result = run_train(job, progress=progress, should_cancel=lambda: bool(interrupted), log=report)
    except JobCancelled:
        if read_checkpoint_meta(job.work_dir) is None:  # stopped before the first checkpoint
            print("flash: stopped before any training step was saved: nothing to resume", file=sys.stderr)
        else:
            print("flash: stopped; the checkpoint is kept: run the same command with --resume to continue",
                  file=sys.stderr)
        return 130
    if args.json:
        emit({"type": "result", **result})
    else:
        print(f"flash: action '{result['name']}' written to {result['action']} "
              f"({result['steps_done']} UNet + {result['decoder_steps_done']} decoder steps, "
              f"{len(result['clips'])} clips)", file=sys.stderr)
    return 0


def info_command(args) -> int:
    from flash_engine import __version__
    from flash_engine.presets import list_presets
    from flash_engine.devices import device_report
    from flash_engine.models.loading import model_card_actions
    from flash_engine.weights import resolve_model_source, weights_status

    import diffusers
    import transformers

    model = resolve_model_source(args.model)
    actions = model_card_actions(model)  # None: a model without a card of its own actions
    presets = list_presets()
    report = {
        "engine_version": __version__,
        **device_report(),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "weights": weights_status(),
        "default_model": resolve_model_source("default"),
        "model": model,
        "model_actions": actions.to_report() if actions else None,
        # learned: whether the model knows the preset's sentence (None: no card says)
        "presets": [{**preset.to_dict(), "learned": actions.knows(preset.prompt) if actions else None}
                    for preset in presets],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"FLASH engine {report['engine_version']}  (python {report['python']}, torch {report['torch']}, "
          f"diffusers {report['diffusers']}, transformers {report['transformers']})")
    gpu = f" - {report['gpu']} ({report['gpu_memory_gib']} GiB)" if "gpu" in report else ""
    print(f"device: {report['device']}{gpu}  CUDA {report['cuda_version'] or 'not built'}")
    weights = report["weights"]
    state = "found" if weights["found"] else "not found (" + "; ".join(weights["problems"]) + ")"
    print(f"weights: {weights['folder']}: {state}")
    print(f"default model: {report['default_model']}")
    if args.model != "default":
        print(f"model: {model}")
    if actions:
        for learned, header in ((True, f"actions {actions.model} learned, each with the sentence it was trained on "
                                       "(use it as the prompt):"),
                                (False, f"actions held out of {actions.model}'s training:")):
            chosen = [a for a in actions.actions if a.learned == learned]
            if chosen:
                print(header)
            for action in chosen:
                mark = "" if learned else f"[{actions.mark(False)}]  "
                print(f"  {action.id:<22} {action.name:<24} {mark}{action.prompt}")
    print("presets:")
    for preset, entry in zip(presets, report["presets"]):
        if preset.has_weights:
            mark = "trained"
        elif actions:
            mark = actions.mark(entry["learned"])
        else:
            mark = "base model only"
        print(f"  {preset.id:<22} {preset.name:<24} [{mark}]  {preset.prompt}")
    return 0


def weights_command(args) -> int:
    from flash_engine.weights import fetch, fetch_controlnets

    for dest in fetch_controlnets(args.dest) if args.control else [fetch(args.dest)]:
        print(f"weights ready in {dest}", file=sys.stderr)
    return 0


def demo_command(args) -> int:
    from flash_engine.demo import run_demo

    run_demo(Path(args.out), model=args.model)
    return 0


def serve_command(args) -> int:
    from flash_engine.server import serve_main

    return serve_main(args)


COMMANDS = {"serve": serve_command, "animate": animate_command, "train": train_command, "info": info_command, "weights": weights_command, "demo": demo_command}


def _terminate(signum, frame):
    # SIGTERM ends a job like Ctrl-C: staged folders are removed on the way out.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    if args.command not in ("info", "serve"):  # serve quiets them itself, after taking over stdout
        quiet_libraries()
    if args.command != "serve" and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return COMMANDS[args.command](args)
    except FlashError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (nothing was written)", file=sys.stderr)
        return 130
