"""The train job: from a request to an action artifact, resumable.

Shared by ``python -m flash_engine train`` and the engine service. ``resolve_train`` makes
the cheap checks (names, prompts, folders, destination, checkpoint state: what the service
runs before it accepts a job, on its reading thread); ``run_train`` reads the clips
(cancellable between clips, each bad one reported) before any model is loaded. Checkpoints live in a hidden work folder beside the
artifact (``.<name>.training/``); the artifact folder itself appears only when training
has finished, and an existing one is never replaced without ``force``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flash_engine.actions import write_action, written_action_files
from flash_engine.errors import FlashError
from flash_engine.layout import training_work_dir
from flash_engine.output import check_destination, staged_folder
from flash_engine.requests import DEFAULT_FRAMES, TrainRequest
from flash_engine.training.clips import BadClip, ClipScan, check_clip_folder, learned_fps, scan_clips
from flash_engine.training.config import TrainConfig
from flash_engine.training.distributed import SOLO, Team
from flash_engine.training.trainer import read_checkpoint_meta


@dataclass
class ResolvedTrain:
    request: TrainRequest
    config: TrainConfig
    sources: list[tuple[Path, str]]  # (clips folder, its prompt)
    out: Path
    work_dir: Path
    model: str
    resume_from: dict | None
    scan: ClipScan | None = None  # the decoded clips: read when the job runs (scan_train_clips)
    start_over: bool = False  # --force over an earlier run's checkpoint: removed when training starts


def parse_resolution(text: str | None, native: tuple[int, int], multiple: int) -> tuple[int, int]:
    """``N`` or ``WxH`` (multiples of ``multiple``, the model's size step); none: the base
    model's native size."""
    if not text:
        return native
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise FlashError(f"resolution {text!r} is not N or WxH", f"use --resolution {native[0]}x{native[1]}",
                         code="bad_size")
    if any(p < multiple or p % multiple for p in parts):
        lower = [max(multiple, p // multiple * multiple) for p in parts]
        raise FlashError(f"resolution {text!r} is not N or WxH in multiples of {multiple}, this model's size step",
                         f"use --resolution {'x'.join(map(str, lower))} or "
                         f"{'x'.join(str(p + multiple) for p in lower)}", code="bad_size")
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def work_dir_for(out: Path) -> Path:
    return training_work_dir(out)


def _option_value(key: str, value, current):
    """A training option as its TrainConfig field takes it (the type of the field's default),
    or a one-line bad_argument: a wrong type must not fail inside the trainer, after loading."""
    import dataclasses
    import math

    def bad(wanted: str):
        return FlashError(f"training option '{key}' must be {wanted}, got {value!r:.40}",
                          f"fix options.{key}", code="bad_argument")

    if dataclasses.is_dataclass(current):  # strong / distort: an object of its fields, or the config itself
        if isinstance(value, type(current)):
            return value
        if not isinstance(value, dict):
            raise bad(f"an object of {type(current).__name__} fields")
        try:
            return type(current)(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        except TypeError as err:
            raise bad(f"an object of {type(current).__name__} fields ({err})") from None
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif isinstance(current, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(current, int) and not isinstance(value, int)):
            raise bad("a whole number" if isinstance(current, int) else "a number")
        if not math.isfinite(value):
            raise bad("a finite number")
    elif isinstance(current, str) and not isinstance(value, str):
        raise bad("a string")
    return value


def build_config(request: TrainRequest, limits: dict) -> TrainConfig:
    """The training config: the paper's defaults, the variant, the request's settings, and
    the base model's native size and motion length (``models.loading.model_limits``)."""
    config = TrainConfig()
    if request.variant is not None:
        config.apply_variant(request.variant)
    unknown = sorted(set(request.options) - set(config.__dataclass_fields__))
    if unknown:
        raise FlashError(f"unknown training option(s): {', '.join(unknown)}", "see TrainConfig in the docs",
                         code="bad_argument")
    for key, value in request.options.items():
        setattr(config, key, _option_value(key, value, getattr(config, key)))
    overrides = dict(steps=request.steps, decoder_steps=request.decoder_steps, num_frames=request.frames,
                     stride=request.stride, checkpoint_every=request.checkpoint_every, seed=request.seed,
                     batch_size=request.batch, lr_scaling=request.lr_scaling)
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    config.width, config.height = parse_resolution(request.resolution, (limits["width"], limits["height"]),
                                                   limits["size_multiple"])
    if config.num_frames > limits["max_frames"]:
        raise FlashError(f"frames must be at most {limits['max_frames']} for this model's motion modules "
                         f"(got {config.num_frames})", f"use frames {min(DEFAULT_FRAMES, limits['max_frames'])}",
                         code="bad_frames")
    config.validate(limits["size_multiple"])
    return config


def resolve_train(request: TrainRequest, report: Callable[[str], None] = lambda line: None) -> ResolvedTrain:
    """Check what is quick to check: names, prompts, that the clip folders exist, the
    destination, what resuming would do. The clips themselves are read by ``run_train``."""
    from flash_engine.models.loading import model_limits
    from flash_engine.weights import resolve_model_source

    if not request.action.strip():
        raise FlashError("the action name is empty", "pass --action NAME", code="bad_argument")
    prompts = [p.strip() for p in request.prompt]
    if any(not p for p in prompts):
        raise FlashError("a prompt is empty", "pass --prompt 'a person is ...'", code="bad_prompt")
    if len(prompts) not in (1, len(request.clips)):
        raise FlashError(f"{len(prompts)} prompts for {len(request.clips)} clip folders",
                         "pass one --prompt for all folders or one per folder, in the same order",
                         code="bad_argument")
    model = resolve_model_source(request.model)
    config = build_config(request, model_limits(model, request.motion_adapter))
    out = Path(request.out).expanduser()
    out = check_destination(out, request.force, written_action_files)
    work_dir = work_dir_for(out)
    resume_from = read_checkpoint_meta(work_dir)
    if request.resume and resume_from is None:
        raise FlashError(f"nothing to resume: no checkpoint in {work_dir}", "run without --resume to start",
                         code="no_checkpoint")
    if resume_from is not None and not request.resume:
        if not request.force:
            raise FlashError(f"an earlier training of {out.name} stopped at {resume_from['phase']} step "
                             f"{resume_from['step']}", "pass --resume to continue it or --force to start over",
                             code="checkpoint_exists")
        resume_from, start_over = None, True  # the old checkpoint goes when the job runs, not before
    else:
        start_over = False
    if resume_from is not None:
        config = TrainConfig.from_dict(resume_from["config"])
    sources = [(Path(folder).expanduser(), prompts[min(i, len(prompts) - 1)])
               for i, folder in enumerate(request.clips)]
    for folder, _ in sources:
        check_clip_folder(folder)
    return ResolvedTrain(request=request, config=config, sources=sources, out=out, work_dir=work_dir,
                         model=model, resume_from=resume_from, start_over=start_over)


def scan_train_clips(job: ResolvedTrain, report: Callable[[str], None] = lambda line: None,
                     should_cancel: Callable[[], bool] | None = None) -> ClipScan:
    """Read the job's clips (kept on ``job.scan``); each bad one is reported as it is found.
    Raises FlashError (no_clips) when none is usable, JobCancelled when cancelled between clips."""
    config = job.config
    scan = scan_clips(job.sources, config.num_frames, config.stride, (config.width, config.height),
                      on_bad=lambda bad: report(bad.line()), should_cancel=should_cancel)
    if not scan.good:
        raise FlashError(f"no usable clips in {', '.join(job.request.clips)} ({len(scan.bad)} skipped)",
                         "add video files or frame folders with enough frames (see the lines above)",
                         code="no_clips")
    report(scan.summary())
    job.scan = scan
    return scan


def run_fingerprint(job: ResolvedTrain) -> str:
    """What every rank of a run must agree on: clips, settings, base model, checkpoint."""
    import json

    resume = job.resume_from and (job.resume_from["phase"], job.resume_from["step"])
    return json.dumps({"clips": [(str(c.path), c.prompt, list(c.frames.shape)) for c in job.scan.good],
                       "config": job.config.to_dict(), "model": job.model, "out": str(job.out),
                       "resume": resume, "start_over": job.start_over}, sort_keys=True, default=str)


def run_train(job: ResolvedTrain, progress: Callable | None = None, should_cancel: Callable[[], bool] | None = None,
              log: Callable[[str], None] = lambda line: None, base=None, device=None, team: Team = SOLO) -> dict:
    """Train and write the artifact; returns a result dict (the artifact's manifest data).
    Reads the clips first (reported through ``log``) unless ``scan_train_clips`` already did.
    ``team``: the other ranks of a torchrun run (``distributed.join``); rank 0 alone writes,
    the others return ``{"rank": N}`` once training is done."""
    import torch

    from flash_engine.models.loading import load_base
    from flash_engine.devices import pick_device
    from flash_engine.training.trainer import FlashTrainer, loss_trend

    request, config = job.request, job.config
    if job.scan is None:
        scan_train_clips(job, report=log, should_cancel=should_cancel)
    with team.talking("the start (comparing the ranks' runs)"):
        team.check_same(run_fingerprint(job))
    device = device or team.device or pick_device(request.device)
    if team.is_main and job.start_over and read_checkpoint_meta(job.work_dir) is not None:  # still the engine's
        shutil.rmtree(job.work_dir)
    base = base or load_base(job.model, request.motion_adapter)
    if job.resume_from is not None and job.resume_from["base_model"] != base.identity:
        raise FlashError(f"the checkpoint was made with base model {job.resume_from['base_model']}, "
                         f"not {base.identity}", "resume with the same --model, or --force to start over",
                         code="base_mismatch")
    trainer = FlashTrainer(base, job.scan.good, config, job.work_dir, device=device, team=team)
    if job.resume_from is not None:
        meta = trainer.load_checkpoint()
        log(f"resuming {job.out.name} at {meta['phase']} step {meta['step']}")
    if trainer.effective_batch > 1:
        log(f"{team.world_size} rank(s) x {config.batch_size} clip(s): effective batch {trainer.effective_batch}, "
            f"learning rate {trainer.learning_rates['unet']:.3g} ({config.lr_scaling} rule)")
    trainer.run(progress=progress, should_cancel=should_cancel)
    if not team.is_main:
        return {"rank": team.rank}
    unet_first, unet_last = loss_trend(trainer.losses["unet"])
    prompts = sorted({clip.prompt for clip in job.scan.good})
    meta = {
        "prompts": prompts,
        "steps_done": len(trainer.losses["unet"]),
        "decoder_steps_done": len(trainer.losses["decoder"]),
        "clips": [str(clip.path) for clip in job.scan.good],
        "clips_skipped": [f"{bad.path}: {bad.reason}" for bad in job.scan.bad],
        "device": str(device),
        "torch": torch.__version__,
        "loss": {"unet_first": unet_first, "unet_last": unet_last},
        "config": {k: v for k, v in config.to_dict().items() if not isinstance(v, dict)},
        "batch": trainer.batch_report(),
    }
    fps = learned_fps(job.scan.good, config.stride)
    if fps is not None:
        meta["fps"] = fps  # the speed its takes play at (flash.json "fps")
    with staged_folder(job.out, overwrite=request.force, written_files=written_action_files) as staging:
        write_action(staging, name=request.action, prompt=request.prompt[0].strip(),
                     base_model=base.identity, base_latent=base.latent_identity, unet_state=trainer.unet_state(),
                     decoder_state=trainer.decoder_state(), meta=meta)
    shutil.rmtree(job.work_dir, ignore_errors=True)
    return {"action": str(job.out), "name": request.action, **meta}


__all__ = ["BadClip", "TrainRequest", "resolve_train", "run_train", "scan_train_clips"]
