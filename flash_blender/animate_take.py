"""The animate use case in Blender: the shot's settings → the reference render → the engine
job → the imported take. ``flash.animate_action`` and each shot of a batch call these
functions (the planning itself is pure Python, in ``takes.py``).

:func:`start_take` checks everything it can before anything is written, then plans the
take, renders its reference and returns the job (the engine starts meanwhile);
:func:`finish_take` imports a finished job's take, or removes what a failed one left.
Neither touches the session's status: the caller shows what they return.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import bpy

from . import importers
from . import motion as mo
from .bundled import engine_module
from .engine import MANAGER
from .errors import PlanError
from .motion_take import prepare_motion, remove_written, write_motion
from .job_loop import JobLoop, Outcome, changed_lines
from .progress import AnimateJob, one_line
from .properties import DEFAULT_ACTION, bone_overrides
from .reference import render_reference
from .services import engine_config, get_catalog, get_prefs, user_dir
from .take_planning import check_writable, output_root, plan_take, remove_dead_staging, reserve_reference
from .takes import Shot, Take, TakeChoice, plan_animate, take_result
from .timing import DEFAULT_CLIP_FPS, TakeTiming, scene_fps

# The settings an operator (or a batch) may override; unset ones come from the scene.
OVERRIDES = ("action", "prompt", "seed", "frames", "steps", "guidance", "long_side", "output", "motion", "rig",
             "clip", "depth")
MOTION_OVERRIDES = ("motion", "rig", "clip", "depth")
TICK_S = 0.1


@dataclass
class TakeStart:
    job: AnimateJob
    warnings: list[str] = field(default_factory=list)


@dataclass
class TakeEnd:
    ok: bool
    message: str  # the take's summary, or why there is none (one line with the fix)
    level: str = "INFO"  # INFO, WARNING (cancelled) or ERROR
    notes: list[str] = field(default_factory=list)  # things the user should know (changed settings)


def take_choice(scene, overrides: dict, mp4: bool = False) -> TakeChoice:
    """The scene's FLASH settings, with ``overrides`` (names of OVERRIDES) replacing them."""
    settings = scene.flash
    unknown = set(overrides) - set(OVERRIDES)
    if unknown:
        raise PlanError(f"unknown take setting(s): {', '.join(sorted(unknown))}", f"use {', '.join(OVERRIDES)}")

    def value(name):
        return overrides[name] if name in overrides else getattr(settings, name)

    try:
        action = get_catalog().find(overrides.get("action") or settings.action_id or DEFAULT_ACTION)
    except KeyError as err:
        raise PlanError(str(err.args[0])) from None
    if "long_side" in overrides:
        long_side = overrides["long_side"]
    else:
        long_side = None if settings.native_size else settings.long_side
    # The scene's prompt is the sentence of the scene's action: another action given to the
    # operator or the batch brings its own, unless a prompt is given too.
    other_action = "action" in overrides and action.id != settings.action_id and action.prompt
    prompt = overrides["prompt"] if "prompt" in overrides else (action.prompt if other_action else settings.prompt)
    return TakeChoice(action=action, prompt=prompt, seed=value("seed"), frames=value("frames"),
                      steps=value("steps"), guidance=value("guidance"), long_side=long_side, output=value("output"),
                      plane_distance=settings.plane_distance, outside=settings.outside, mp4=mp4,
                      motion=motion_choice(scene, overrides))


def motion_choice(scene, overrides: dict) -> mo.MotionChoice:
    """The scene's Motion settings with the overrides of MOTION_OVERRIDES (a rig by name, a
    clip by path)."""
    settings = scene.flash
    clip = overrides["clip"] if "clip" in overrides else settings.clip_path
    if clip:
        clip = os.path.abspath(bpy.path.abspath(clip))
    rig = overrides["rig"] if "rig" in overrides else (settings.rig.name if settings.rig else "")
    return mo.MotionChoice(source=overrides.get("motion") or settings.motion, rig=rig, clip=clip,
                           clip_start=settings.clip_start, depth=overrides.get("depth", settings.use_depth),
                           pose_strength=round(settings.pose_strength, mo.STRENGTH_DECIMALS),
                           depth_strength=round(settings.depth_strength, mo.STRENGTH_DECIMALS),
                           bones=bone_overrides(settings))


def take_timing(scene, choice: TakeChoice) -> TakeTiming:
    """The take's timing as the importer will lay it (the action's fps, else the engine's)."""
    render = scene.render
    return TakeTiming(scene.frame_current, choice.frames, choice.action.fps or DEFAULT_CLIP_FPS,
                      scene_fps(render.fps, render.fps_base))


def check_camera(scene):
    """The scene's active camera, or PlanError saying how to get one."""
    camera = scene.camera
    if camera is None:
        raise PlanError(f"scene '{scene.name}' has no active camera",
                        "add a camera and make it active: select it and press Ctrl+Numpad 0")
    if camera.type != 'CAMERA' or camera.data.type not in ('PERSP', 'ORTHO'):
        raise PlanError(f"the active camera '{camera.name}' is not a perspective or orthographic camera",
                        "use a perspective or orthographic camera for the shot")
    return camera


def start_take(context, overrides: dict, output_folder: str | None = None, mp4: bool = False, manager=None,
               config=None) -> TakeStart:
    """Checks, take folder, reference render; then the job (the engine starts while the
    reference renders). ``output_folder`` replaces the preferences' Output Folder; a batch
    with several engines passes the ``manager`` and ``config`` of the shot's (default: the
    session's engine, as the preferences say). Creates nothing when a check fails."""
    manager = MANAGER if manager is None else manager
    scene = context.scene
    camera = check_camera(scene)
    choice = take_choice(scene, overrides, mp4)
    prefs = get_prefs(context)
    if config is None:
        config = engine_config(prefs)  # before anything is written: an unset engine creates nothing
    root = output_root(bpy.data.filepath, prefs.output_root if output_folder is None else output_folder, user_dir())
    render = scene.render
    shot = Shot(scene=scene.name, camera=camera.name, frame=scene.frame_current, resolution_x=render.resolution_x,
                resolution_y=render.resolution_y, pixel_aspect_x=render.pixel_aspect_x,
                pixel_aspect_y=render.pixel_aspect_y)
    plan = plan_take(root.folder, scene.name, camera.name, choice.action.slug)
    started = manager.model_limits(config)  # a running engine's model: the reference at its size
    take, args = plan_animate(choice, shot, plan, root, started)
    timing = take_timing(scene, choice)
    prepared = prepare_motion(context, scene, camera, choice.motion, timing)  # the rig read and checked
    # After every check that writes nothing, before the engine starts: a read-only folder
    # costs no model load, and a refused take leaves no folder behind.
    check_writable(root.folder)
    job = AnimateJob(manager, config, args, take)  # starts the engine: torch imports while the reference renders
    try:
        reserve_reference(plan)
        try:
            render_reference(scene, plan.reference, *take.reference_size)
            if prepared is not None:  # before the job's first tick submits the request
                record, written = write_motion(context, scene, camera, prepared, plan.reference, take.reference_size,
                                               timing.clip_fps)
                job.meta = dataclasses.replace(take, motion=record, motion_files=written)
        except BaseException:
            plan.reference.unlink(missing_ok=True)  # ours: reserve_reference made it
            raise
    except BaseException:
        job.cancel()  # nothing was submitted: the engine stays for the next job
        raise
    return TakeStart(job, [root.warning] if root.warning else [])


def discard_take(take: Take, engine_died: bool = False) -> None:
    """Remove what a take that will not be imported left: its reference render, and after an
    engine death the staging folder the dead engine could not remove itself."""
    take.reference.unlink(missing_ok=True)
    remove_written(take.motion_files)
    if engine_died:
        remove_dead_staging(take.plan)


def abandon_take(job: AnimateJob | None, reason: str) -> None:
    """Stop a running job for good (file closing, add-on disabled, its operator ended)."""
    if job is not None and not job.finished:
        job.abandon(reason)
        discard_take(job.meta)


def finish_take(context, job: AnimateJob) -> TakeEnd:
    """After the job's end: import the take, or leave nothing of a failed one."""
    take: Take = job.meta
    if job.state != "done":
        discard_take(take, engine_died=job.error_code == "engine_died")  # a failed take leaves nothing
        if job.state == "cancelled":
            return TakeEnd(False, f"{take.name} cancelled", "WARNING")
        line = job.error_line
        if job.error_code == "engine_died":
            line += " — Animate Action again starts a fresh engine"
        return TakeEnd(False, line, "ERROR")
    try:
        result = take_result(job.result)
        motion_note = record_motion(take, result)
        message, notes = importers.import_take(context, take, result)
        notes += motion_note
    except Exception as err:
        if not isinstance(err, PlanError):
            traceback.print_exc()
        return TakeEnd(False, f"the clip is in {take.folder} but could not be imported: {one_line(err)}", "ERROR")
    return TakeEnd(True, message, "INFO", notes)


def record_motion(take: Take, result) -> list[str]:
    """The motion source into the take's flash.json; a note when it cannot be written (the
    frames are fine either way)."""
    if take.motion is None:
        return []
    manifest = result.folder / engine_module("layout").TAKE_MANIFEST
    try:
        mo.record_in_manifest(manifest, take.motion)
    except (OSError, ValueError) as err:
        return [f"the motion source could not be recorded in {manifest}: {one_line(err)}"]
    return []


def take_loop(job: AnimateJob, context=None, shown: Callable[[TakeEnd], None] | None = None,
              prefix: str = "FLASH: ") -> JobLoop:
    """The job loop (``job_loop.py``) of a started take: ``finish`` imports it (into
    ``context``, else Blender's current one) and hands the end to ``shown``; its progress
    lines start with ``prefix``."""

    def finish() -> Outcome:
        end = finish_take(context or bpy.context, job)
        if shown is not None:
            shown(end)
        return Outcome(end.ok, end.message, end.level)

    return JobLoop(advance=job.tick, finish=finish, lines=changed_lines(lambda: job.progress.text, prefix),
                   stop=lambda: abandon_take(job, "the job's operator ended"), interval=TICK_S)


def stored_folder(take: Take, result: dict | None) -> str:
    """The take's folder as the .blend stores it (//… inside the project)."""
    folder = Path((result or {}).get("out") or take.folder)
    return importers.stored_path(folder, take.in_project)
