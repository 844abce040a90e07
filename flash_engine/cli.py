"""``python -m flash_engine``: animate, train, pose, serve, info, weights, demo.

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
from flash_engine.library_logs import native_stderr_quiet, quiet_libraries
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

    pose = commands.add_parser("pose", help="a driving clip's poses, fitted to the shot's person, as a .pose.json "
                                        "(to check, edit, or animate with --pose)")
    add_pose_arguments(pose)

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


# The pose command's numbers -> the animate request's fields whose limits they share.
POSE_LIMITS = {"frames": "frames", "start": "driving_start", "fps": "fps"}


def add_pose_arguments(parser: argparse.ArgumentParser) -> None:
    specs = R.specs(R.AnimateRequest)
    parser.add_argument("--driving", required=True, metavar=specs["driving"].metavar,
                        help="a clip of a person: a video file or a folder of frames")
    parser.add_argument("--out", required=True, metavar="POSE_JSON",
                        help="the .pose.json to write (docs/pose-format.md); an existing file is never replaced")
    parser.add_argument("--image", help="the shot's reference frame (PNG/JPEG): the poses are fitted to its person "
                                        "and made for its size")
    parser.add_argument("--reference-pose", dest="reference_pose", metavar=specs["reference_pose"].metavar,
                        help=specs["reference_pose"].help.replace("--image", "--image, or the clip kept as it is"))
    parser.add_argument("--frames", type=int, default=R.DEFAULT_FRAMES,
                        help=f"how many frames (default {R.DEFAULT_FRAMES}, a take's)")
    parser.add_argument("--start", type=int, default=0, help=specs["driving_start"].help)
    parser.add_argument("--fps", type=float,
                        help="take the clip's frames at this rate, e.g. every 3rd of a 24 fps video for 8 "
                             "(default: every frame, at the clip's own rate)")


def pose_command(args) -> int:
    from flash_engine.pose.driving import poses_from_driving
    from flash_engine.pose.format import read_pose_file, write_pose_file

    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise FlashError(f"{out} already exists; it was left as it is", "choose another --out name",
                         code="output_exists")
    if out.suffix.lower() != ".json":
        raise FlashError(f"--out {out} is not a .json file name", f"e.g. --out {out.with_suffix('').name}.pose.json",
                         code=R.BAD_ARGUMENT)
    specs = R.specs(R.AnimateRequest)
    for flag, name in POSE_LIMITS.items():
        specs[name].check(f"--{flag}", getattr(args, flag))
    reference_pose = read_pose_file(args.reference_pose) if args.reference_pose else None
    image = None
    if args.image:
        from flash_engine.images import load_reference

        image = load_reference(args.image)
    lines = []
    try:
        with native_stderr_quiet():  # MediaPipe's start-up lines
            seq = poses_from_driving(args.driving, args.frames, args.start, image, reference_pose, fps=args.fps,
                                     report=lines.append)
    finally:
        for line in lines:
            print(f"flash: {line}", file=sys.stderr)
    write_pose_file(seq, out)
    if image is None and reference_pose is None:
        print("flash: not fitted to a person (no --image or --reference-pose): the poses are as in the clip, "
              "at its size", file=sys.stderr)
    rate = f" at {seq.fps:g} fps" if seq.fps else ""
    print(f"flash: wrote {seq.frames} poses for a {seq.width}x{seq.height} image{rate} to {out}", file=sys.stderr)
    return 0


def animate_command(args) -> int:
    from flash_engine.animate import prepare, resolve, run_animate
    from flash_engine.progress import stderr_progress
    from flash_engine.warm import PipelineCache

    request = R.from_namespace("animate", args)
    job = resolve(request)
    print(f"flash: {job.frames} frames at {job.width}x{job.height}, {job.steps} steps, seed {job.seed}, "
          f"model {job.model} on {job.key.device}", file=sys.stderr)
    if job.needs_preparing:  # a driving clip's poses, before the model loads
        lines = []
        try:
            with native_stderr_quiet():  # MediaPipe's start-up lines
                prepare(job, report=lines.append)
        finally:
            for line in lines:
                print(f"flash: {line}", file=sys.stderr)
    cache = PipelineCache()
    pipeline = cache.get(job.key)
    metadata = run_animate(job, pipeline, progress=stderr_progress(), action_slot=cache.slot,
                           controlnets=cache.controlnets(job.controlnet_keys))
    print(f"flash: wrote {len(metadata['frames'])} frames to {job.out}", file=sys.stderr)
    if metadata["action"]["base_model_only"]:
        print("flash: no trained weights for this action: the base model animated the prompt", file=sys.stderr)
    return 0


def train_command(args) -> int:
    """One process, or (under torchrun) one rank of several: rank 0 alone reports and writes."""
    from flash_engine.training.distributed import RANK_LOST, ranks_from_environment

    ranks = ranks_from_environment()  # a plain run: rank 0 of 1
    try:
        return _train(args, ranks)
    except FlashError as err:
        if ranks.rank == 0 or err.code == RANK_LOST:  # a rank-lost line names its rank already
            raise
        raise FlashError(f"{ranks.label()}: {err.message}", err.hint, code=err.code) from err


def _train(args, ranks) -> int:
    import signal
    import time

    from flash_engine.errors import JobCancelled
    from flash_engine.training.distributed import RANK_LOST, join
    from flash_engine.training.job import resolve_train, run_train
    from flash_engine.training.trainer import read_checkpoint_meta

    main_rank = ranks.rank == 0

    def emit(event: dict) -> None:
        sys.stdout.write(P.encode(event).decode("ascii"))  # strict JSON, as the service writes
        sys.stdout.flush()

    def report(line: str) -> None:
        if not main_rank:
            return
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
        if not main_rank:
            return
        if args.json:
            emit({"type": "progress", "phase": phase, "step": step, "total": total, "loss": loss,
                  "it_per_s": it_per_s, "eta_s": eta_s})
            return
        now = time.monotonic()
        if step == total or now - last_line[0] >= 2.0:
            last_line[0] = now
            eta = f" ETA {eta_s:.0f}s" if eta_s is not None else ""
            print(f"  {phase} {step}/{total} loss {loss:.4f} {it_per_s:.2f} it/s{eta}", file=sys.stderr, flush=True)

    team = join(ranks, request.device)  # a single process: SOLO, nothing to join
    try:
        result = run_train(job, progress=progress, should_cancel=lambda: bool(interrupted), log=report, team=team)
    except JobCancelled:
        if not main_rank:
            pass
        elif read_checkpoint_meta(job.work_dir) is None:  # stopped before the first checkpoint
            print("flash: stopped before any training step was saved: nothing to resume", file=sys.stderr)
        else:
            print("flash: stopped; the checkpoint is kept: run the same command with --resume to continue",
                  file=sys.stderr)
        return 130
    except FlashError as err:
        if err.code != RANK_LOST:
            raise
        kept = read_checkpoint_meta(job.work_dir)
        hint = (f"the checkpoint at {kept['phase']} step {kept['step']} is kept: run the same command with "
                "--resume to continue, on any number of ranks" if kept else
                "no step was saved yet: run the command again")
        raise FlashError(err.message, f"{err.hint}; {hint}", code=err.code) from err
    finally:
        team.close()
    if not main_rank:
        return 0
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
                                       "(--action ID animates it):"),
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


COMMANDS = {"serve": serve_command, "animate": animate_command, "train": train_command, "pose": pose_command,
            "info": info_command, "weights": weights_command, "demo": demo_command}


def _terminate(signum, frame):
    # SIGTERM ends a job like Ctrl-C: staged folders are removed on the way out.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    # serve quiets them itself, after taking over stdout; pose loads neither diffusers nor transformers
    if args.command not in ("info", "serve", "pose"):
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
