"""The animate job: from a request to a finished output folder.

Shared by the command line and the engine service. Everything a user can get wrong is
checked before any model is loaded, and the output folder appears only when complete.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from flash_engine import __version__
from flash_engine.actions import Action, read_action
from flash_engine.controls import controlnet_bytes, prepare_controls, resolve_controls
from flash_engine.errors import FlashError
from flash_engine.images import fit_reference, load_reference, resolve_size, save_frames, write_mp4
from flash_engine.layout import TAKE_DRIVING_POSES, TAKE_MANIFEST, TAKE_MP4
from flash_engine.output import check_destination, file_digest, normalise, os_error, staged_folder
from flash_engine.presets import Preset, find_preset
from flash_engine.models.loading import (BUILT_IN, MANNEQUIN, base_identity, base_latent_identity, check_mannequin,
                                         check_weights_folder, model_card_actions, model_limits)
from flash_engine.requests import DEFAULT_FPS, DEFAULT_FRAMES, DEFAULT_GUIDANCE, DEFAULT_STEPS, AnimateRequest, specs, validate
from flash_engine.weights import resolve_model_source

METADATA_FILE = TAKE_MANIFEST
# ExtraFiles(folder, frames) writes more files into a take before it is put in place and
# returns their names (the demo's preview): flash.json lists them with the frames.
ExtraFiles = Callable[[Path, object], list]


def written_take_files(folder: Path) -> dict[str, str | None] | None:
    """The names the engine wrote into a take folder, with their SHA-256 as written, from its
    ``flash.json``; None when the folder has no engine manifest (then it is not a take, and
    never replaced)."""
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(metadata, dict) or "engine_version" not in metadata:
        return None
    files = metadata.get("files")
    if not isinstance(files, list):  # takes written before "files" existed
        files = list(metadata.get("frames") or []) + ([metadata["mp4"]] if metadata.get("mp4") else [])
    digests = metadata.get("sha256") if isinstance(metadata.get("sha256"), dict) else {}
    names = {name: digests.get(name) if isinstance(digests.get(name), str) else None for name in files
             if isinstance(name, str) and name and "/" not in name and "\\" not in name and name not in (".", "..")}
    return {**names, METADATA_FILE: None}  # flash.json itself is rewritten by every take


def clip_fps(request: AnimateRequest, action) -> float:
    """The clip's fps: the request's, else the trained action's learned one, else DEFAULT_FPS."""
    if request.fps is not None:
        return request.fps
    learned = action.meta.get("fps") if action is not None else None
    try:  # the schema's fps limits (1-240, finite) hold for a learned fps too; else the default
        return specs(AnimateRequest)["fps"].check("fps", learned) if learned is not None else DEFAULT_FPS
    except FlashError:
        return DEFAULT_FPS


@dataclass
class ResolvedAnimate:
    """A request with every default filled in and every input checked."""

    request: AnimateRequest
    preset: Preset | None
    action: Action | None
    prompt: str
    frames: int
    steps: int
    guidance: float
    seed: int
    width: int
    height: int
    model: str
    reference: object  # PIL image, already at width×height
    out: Path  # normalised: `x/.` is `x`
    key: object  # warm.PipelineKey: the warm pipeline this job runs on
    model_action: object = None  # model_actions.ModelAction: one of the model card's own actions
    controls: list = field(default_factory=list)  # controls.TakeControl: what steers the motion

    @property
    def needs_preparing(self) -> bool:
        """Whether ``prepare`` has work left (a driving clip's poses to read)."""
        return any(control.driving is not None and control.pose is None for control in self.controls)

    @property
    def controlnet_keys(self) -> list[tuple[str, str]]:
        """The ControlNets this job steers with (``warm.PipelineCache.controlnets`` keeps them)."""
        return [control.controlnet_key for control in self.controls]


def resolve(request: AnimateRequest) -> ResolvedAnimate:
    """Check every input and fill every default, before any model is loaded."""
    from flash_engine import devices
    from flash_engine.warm import PipelineKey

    validate(request)
    if not request.action and not request.weights and not (request.prompt and request.prompt.strip()):
        raise FlashError("nothing to animate: no action and no prompt",
                         "pass --action PRESET (see `python -m flash_engine info`) or --prompt TEXT",
                         code="bad_prompt")
    model = resolve_model_source(request.model)
    # A model with a card knows its own actions by the sentences it was trained on: its id wins
    # over a preset of the same name (whose sentence it never saw).
    card = model_card_actions(model) if request.action else None
    own = card.get(request.action) if card else None
    preset = find_preset(request.action) if request.action and own is None else None
    weights = request.weights or (str(preset.weights) if preset and preset.weights else None)
    action = read_action(weights) if weights else None
    given = request.prompt.strip() if request.prompt else None  # a blank prompt is no prompt
    prompt = (given or (action.prompt if action and not preset else None) or (own.prompt if own else None)
              or (preset.prompt if preset else ""))
    if not prompt.strip():
        raise FlashError("the prompt is empty", "pass --prompt TEXT, or an --action whose preset has one",
                         code="bad_prompt")
    if model == MANNEQUIN:
        check_mannequin()
    elif model not in BUILT_IN:
        model_dir = Path(model).expanduser()
        adapter = Path(request.motion_adapter).expanduser() if request.motion_adapter else model_dir / "motion_adapter"
        check_weights_folder(model_dir, adapter)
    frames = request.frames if request.frames is not None else (preset.frames if preset else DEFAULT_FRAMES)
    steps = request.steps if request.steps is not None else (preset.steps if preset else DEFAULT_STEPS)
    guidance = request.guidance if request.guidance is not None else (preset.guidance if preset else DEFAULT_GUIDANCE)
    limits = model_limits(model, request.motion_adapter)
    identity = base_identity(model, request.motion_adapter) if action is not None else None
    if identity is not None and not action.fits(identity, base_latent_identity(model, request.motion_adapter)):
        # told now, not after a multi-GB load
        raise FlashError(f"action '{action.name}' was trained on base model {action.base_model}, not {identity} "
                         f"({model})", "animate with the base model it was trained on, or retrain the action on "
                         "this one", code="base_mismatch")
    if frames > limits["max_frames"]:
        raise FlashError(f"frames must be at most {limits['max_frames']} for this model's motion modules "
                         f"(got {frames})", f"use frames {min(DEFAULT_FRAMES, limits['max_frames'])}",
                         code="bad_frames")
    device = devices.pick_device(request.device)
    dtype = devices.pick_dtype(request.precision, device)
    reference = load_reference(request.image)
    native_long_side = max(limits["width"], limits["height"])
    width, height = resolve_size(reference.size, request.width, request.height, request.long_side or native_long_side,
                                 limits["size_multiple"])
    controls = resolve_controls(request, model=model, frames=frames, width=width, height=height,
                                size_multiple=limits["size_multiple"], reference_size=reference.size)
    devices.check_clip_fits(device, dtype, frames, width, height, guided=guidance > 1.0,
                            size_multiple=limits["size_multiple"],
                            weights_bytes=_weights_bytes(model) + controlnet_bytes(controls))
    check_destination(request.out, request.overwrite, written_take_files, needed_bytes=frames * width * height * 3)
    return ResolvedAnimate(
        request=request,
        preset=preset,
        action=action,
        model_action=own,
        prompt=prompt,
        frames=frames,
        steps=steps,
        guidance=float(guidance),
        seed=request.seed if request.seed is not None else random.SystemRandom().randrange(2**31),
        width=width,
        height=height,
        model=model,
        # Only what the job needs: the reference at the clip's size (a queued job must not
        # hold a 10000² decode), the normalised destination, and the pipeline it runs on.
        reference=fit_reference(reference, width, height),
        out=normalise(request.out),
        key=PipelineKey(model, request.motion_adapter, str(device), devices.precision_name(dtype),
                                request.offload),
        controls=controls,
    )


def prepare(job: ResolvedAnimate, report: Callable[[str], None] | None = None) -> None:
    """What a job does before its model loads: a driving clip's poses (MediaPipe, seconds).
    Run by the job, not by ``resolve`` (the service's reading thread must not wait for it);
    ``run_animate`` runs it too when the caller has not."""
    prepare_controls(job.controls, job.frames, job.reference, clip_fps(job.request, job.action), report)


def _write_driving_poses(job: ResolvedAnimate, staging: Path) -> list[str]:
    """A driving clip's poses, as read and retargeted, beside the frames (to check, edit, reuse
    with --pose); its flash.json source names the file."""
    from flash_engine.pose.format import write_pose_file

    written = []
    for control in job.controls:
        if control.driving is not None:
            write_pose_file(control.pose, staging / TAKE_DRIVING_POSES)
            control.source["poses"] = TAKE_DRIVING_POSES
            written.append(TAKE_DRIVING_POSES)
    return written


def _weights_bytes(model: str) -> int:
    if model in BUILT_IN and model != MANNEQUIN:
        return 0
    from flash_engine.models.loading import MANNEQUIN_DIR

    from flash_engine.models.controlnet import OWN_FOLDERS

    folder = MANNEQUIN_DIR if model == MANNEQUIN else Path(model).expanduser()
    # the model's own ControlNets count only when a take uses them (controlnet_bytes)
    return sum(f.stat().st_size for f in folder.glob("*/*.safetensors") if f.parent.name not in OWN_FOLDERS.values())


def run_animate(job: ResolvedAnimate, pipeline, progress: Callable[[str, int, int], None] | None = None,
                should_cancel: Callable[[], bool] | None = None, action_slot=None,
                extra_files: ExtraFiles | None = None, controlnets: list | None = None) -> dict:
    """Animate into the request's folder; returns the metadata written to ``flash.json``.
    ``controlnets``: the loaded ControlNets of ``job.controlnet_keys`` (a warm cache's); None
    loads them for this job only."""
    from flash_engine.actions import ActionSlot
    from flash_engine.controls import pipeline_controls
    from flash_engine.models.controlnet import load_controlnet
    from flash_engine.pipeline import AnimationSettings

    request = job.request
    fps = clip_fps(request, job.action)
    prepare(job)
    if controlnets is None:
        controlnets = [pipeline.place(load_controlnet(control.controlnet)) for control in job.controls]
    controls = pipeline_controls(job.controls, controlnets, job.width, job.height)
    slot = action_slot or ActionSlot(pipeline)
    slot.apply(job.action)
    settings = AnimationSettings(
        prompt=job.prompt, negative_prompt=request.negative_prompt, num_frames=job.frames, steps=job.steps,
        guidance=job.guidance, seed=job.seed, width=job.width, height=job.height,
    )
    started = time.perf_counter()
    with staged_folder(job.out, overwrite=request.overwrite, written_files=written_take_files,
                       needed_bytes=job.frames * job.width * job.height * 3) as staging:
        result = pipeline(job.reference, settings, progress=progress, should_cancel=should_cancel, controls=controls)
        write_started = time.perf_counter()
        try:
            files = [p.name for p in save_frames(result.frames, staging)]
            if request.mp4:
                files.append(write_mp4(result.frames, staging / TAKE_MP4, fps=fps).name)
            files += _write_driving_poses(job, staging)
            if extra_files is not None:
                files += extra_files(staging, result.frames)
        except OSError as err:  # disk full, read-only, ...: one line, and the staging folder goes
            raise os_error(err, job.out) from err
        timings = {**result.timings, "write": round(time.perf_counter() - write_started, 4)}
        timings["total"] = round(time.perf_counter() - started, 4)
        metadata = {
            "engine_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "reference_image": os.path.abspath(request.image),
            "settings": asdict(settings),
            "fps": fps,
            "preset": job.preset.id if job.preset else None,
            "action": {
                "name": job.action.name if job.action else (job.preset.name if job.preset else
                                                            job.model_action.name if job.model_action else None),
                "model_action": job.model_action.id if job.model_action else None,
                "weights": str(job.action.folder.resolve()) if job.action else None,
                "base_model_only": job.action is None,
            },
            "model": {
                "source": pipeline.base.source,
                "identity": pipeline.base.identity,
                "device": str(pipeline.device),
                "dtype": str(pipeline.dtype).removeprefix("torch."),
                "offload": pipeline.offload,
            },
            # What steered the motion: its source (pose file and its SHA-256, driving clip and range,
            # depth folder), strength, schedule window and ControlNet; empty for a prompt-only take.
            "control": [control.record() for control in job.controls],
            "frames": files[: job.frames],
            "mp4": TAKE_MP4 if request.mp4 else None,
            # Every file the engine wrote here, and its SHA-256: --overwrite replaces this folder
            # only while it holds nothing else and none of these was edited, and removes only these.
            "files": files,
            "sha256": {name: file_digest(staging / name) for name in files},
            "timings_s": timings,
        }
        try:
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2, allow_nan=False) + "\n",
                                                 encoding="utf-8")
        except OSError as err:
            raise os_error(err, job.out) from err
    return metadata
