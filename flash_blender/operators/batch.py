"""``flash.batch_animate`` and the batch script's entry: several shots in one run.

Each shot runs the animate use case (``animate_take``, what ``flash.animate_action`` runs)
blocking, as in background mode, with the shot's camera made active (and, for marker shots, the marker's frame current; the frame first, as a
frame change lets markers switch the camera); the file's own frame and then its active camera
are put back afterwards, before the copy is saved. A shot that fails is reported and the
next one runs. With ``save`` the file, with the planes and strips of the shots that worked,
is saved to a new .blend at the end — also when some shots failed.

The pure parts (arguments, choosing shots, summary lines) are in ``flash_blender/batch.py``.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy.types import Operator

from .. import importers
from ..animate_take import OVERRIDES, start_take, stored_folder, take_loop
from ..batch import (EXIT_USAGE, OUTPUT_FIX, BatchError, BatchOptions, Shot, ShotResult, check_out_exists, exit_code,
                     final_lines, parse_args, save_target, script_argv, select_shots, split_names, summary_line)
from ..engine import MANAGER
from ..errors import PlanError
from ..job_loop import run_blocking
from ..progress import STATUS, one_line
from ..properties import CUSTOM_LONG_SIDE, MOTION_ITEMS, OUTPUT_ITEMS
from ..reference import camera_kept
from ..request_limits import options
from ..services import engine_config, get_prefs, user_dir
from ..take_planning import check_writable, output_root
from ..take_records import read_record, take_on_disk, write_record


@dataclass
class BatchReport:
    results: list[ShotResult] = field(default_factory=list)
    takes: list = field(default_factory=list)  # the Take of each shot that worked (for --record)
    saved: str | None = None
    save_error: str = ""

    @property
    def code(self) -> int:
        return exit_code(self.results, self.save_error)

    @property
    def failed(self) -> list[ShotResult]:
        return [r for r in self.results if not r.ok]


def _run_shot(context, scene, shot, options: BatchOptions, made: list) -> ShotResult:
    camera = scene.objects.get(shot.camera)
    if camera is None or camera.type != 'CAMERA':  # select_shots saw it: only a script could remove it
        return ShotResult(shot, False, reason=f"camera '{shot.camera}' is gone")
    if shot.frame is not None:
        scene.frame_set(shot.frame)
    scene.camera = camera  # after the frame: a frame change lets markers switch the camera
    try:
        if context.scene != scene:
            with context.temp_override(scene=scene):
                return _animate_shot(bpy.context, shot, options, made)
        return _animate_shot(context, shot, options, made)
    except PlanError as err:  # refused before the job: nothing was made
        return ShotResult(shot, False, reason=str(err))


def _animate_shot(context, shot, options: BatchOptions, made: list) -> ShotResult:
    """One take, blocking: what ``flash.animate_action`` does, without the operator."""
    start = start_take(context, dict(options.overrides), options.output_root or None, mp4=options.mp4)
    job = start.job
    for warning in start.warnings:
        print(f"FLASH: {warning}")
    end = run_blocking(take_loop(job, context))
    if not end.ok:
        return ShotResult(shot, False, reason=end.message)
    take, result = job.meta, job.result or {}
    made.append(take)
    return ShotResult(shot, True, take=take.name, folder=stored_folder(take, result),
                      frames=len(result.get("frames") or []), mp4=result.get("mp4"),
                      base_model_only=take.base_model_only)


def _check_output(options: BatchOptions, target: Path | None) -> None:
    """The take folder and the copy's folder can be written: checked before any shot starts
    the engine (BatchError with the fix)."""
    root = output_root(bpy.data.filepath, options.output_root or get_prefs().output_root, user_dir())
    if options.out_must_exist:
        check_out_exists(root.folder)
    try:
        check_writable(root.folder, OUTPUT_FIX)
        if target is not None:
            check_writable(target.parent, "pass --save PATH in a writable folder")
    except PlanError as err:
        raise BatchError(err.message, err.hint) from None


def _check_engine() -> None:
    """The engine can be started (set up, its model found): checked once, before any shot,
    so a worker without it fails in one line instead of once per shot."""
    try:
        engine_config(get_prefs())
    except PlanError as err:
        raise BatchError(err.message, err.hint) from None


def _scene_and_target(context, options: BatchOptions):
    if STATUS.engine_busy:
        raise BatchError("a FLASH job is running", "wait for it or cancel it")
    scene = bpy.data.scenes.get(options.scene) if options.scene else context.scene
    if scene is None:
        raise BatchError(f"no scene named '{options.scene}'",
                         f"the file's scenes: {', '.join(s.name for s in bpy.data.scenes)}")
    target = save_target(bpy.data.filepath, options.save_path, options.save_over_input,
                         options.overwrite, options.save_numbered) if options.save else None
    return scene, target


def run_batch(context, options: BatchOptions, report=print) -> BatchReport:
    """Every shot, one summary line each; the saved copy at the end. Raises BatchError
    (before any shot runs) when the batch cannot start. With ``import_records`` it animates
    nothing: :func:`run_import`."""
    if options.import_records:
        return run_import(context, options, report)
    scene, target = _scene_and_target(context, options)
    _check_output(options, target)
    _check_engine()
    cameras = [o.name for o in scene.objects if o.type == 'CAMERA']
    others = [o.name for o in scene.objects if o.type != 'CAMERA']
    markers = [(m.frame, m.name, m.camera.name if m.camera else None) for m in scene.timeline_markers]
    shots = select_shots(options.mode, scene.name, active=scene.camera.name if scene.camera else None,
                         cameras=cameras, others=others, markers=markers, names=options.cameras,
                         marker_names=options.markers)
    where = Path(bpy.data.filepath).name if bpy.data.filepath else "an unsaved file"
    report(f"FLASH batch: {len(shots)} shot{'s' if len(shots) != 1 else ''} of {where}")
    batch = BatchReport()
    try:
        with camera_kept(scene):  # the file's own frame, then its own camera, before saving
            for shot in shots:
                if shot.error:
                    result = ShotResult(shot, False, reason=shot.error)
                else:
                    try:
                        result = _run_shot(context, scene, shot, options, batch.takes)
                    except Exception as err:  # one broken shot must not take the others down
                        traceback.print_exc()
                        result = ShotResult(shot, False, reason=one_line(err))
                batch.results.append(result)
                report(summary_line(result))
    except KeyboardInterrupt:
        target = None  # an interrupted batch saves no copy that looks like a finished one
        raise
    finally:
        _save_copy(batch, target, options)
    if options.record and batch.results and not batch.failed:  # a record names a finished task's takes only
        try:
            report(f"FLASH batch: recorded {write_record(options.record, batch.takes)}")
        except OSError as err:
            batch.save_error = f"the take record {options.record}: {one_line(err)}"
    for line in final_lines(batch.results, batch.saved, batch.save_error):
        report(line)
    return batch


def _save_copy(batch: BatchReport, target: Path | None, options: BatchOptions) -> None:
    if target is None:
        return
    try:
        over_input = bpy.data.filepath and Path(bpy.data.filepath).resolve() == target
        if target.exists() and not (over_input or options.overwrite):  # appeared while the shots ran
            target = save_target(bpy.data.filepath, options.save_path, False, numbered=options.save_numbered)
        target.parent.mkdir(parents=True, exist_ok=True)
        bpy.ops.wm.save_as_mainfile(filepath=str(target), copy=not over_input, check_existing=False)
        batch.saved = str(target)
    except Exception as err:
        batch.save_error = f"{target}: {one_line(err)}"


def _import_one(context, take) -> ShotResult:
    shot = Shot(take.scene, take.camera, frame=take.frame_start)
    try:
        result = take_on_disk(take)
        importers.import_take(context, take, result)
    except PlanError as err:
        return ShotResult(shot, False, reason=str(err))
    return ShotResult(shot, True, take=take.name, folder=importers.stored_path(result.folder, take.in_project),
                      frames=len(result.frames), mp4=result.mp4, base_model_only=take.base_model_only)


def run_import(context, options: BatchOptions, report=print) -> BatchReport:
    """``--import-takes``: the finished takes the records name, imported from their folders
    (nothing is animated, no engine starts), one summary line each; the saved copy at the
    end. A missing record or take fails its line (exit 1); the others are still imported."""
    scene, target = _scene_and_target(context, options)
    if target is not None:
        try:
            check_writable(target.parent, "pass --save PATH in a writable folder")
        except PlanError as err:
            raise BatchError(err.message, err.hint) from None
    report(f"FLASH batch: importing the takes of {len(options.import_records)} record"
           f"{'s' if len(options.import_records) != 1 else ''}")
    batch = BatchReport()
    try:
        for path in options.import_records:
            try:
                takes = read_record(path)
            except PlanError as err:
                takes, failed = [], ShotResult(Shot(scene.name, None), False, reason=str(err))
                batch.results.append(failed)
                report(summary_line(failed))
            for take in takes:
                try:
                    result = _import_one(context, take)
                except Exception as err:  # one broken take must not take the others down
                    traceback.print_exc()
                    result = ShotResult(Shot(take.scene, take.camera), False, reason=one_line(err))
                batch.results.append(result)
                report(summary_line(result))
    except KeyboardInterrupt:
        target = None
        raise
    finally:
        _save_copy(batch, target, options)
    for line in final_lines(batch.results, batch.saved, batch.save_error):
        report(line)
    return batch


class FLASH_OT_batch_animate(Operator):
    bl_idname = "flash.batch_animate"
    bl_label = "Batch Animate Shots"
    bl_description = ("Animate several shots one after another: the active camera, every camera, the cameras bound "
                      "to timeline markers, or named cameras (for scripts and blender -b; the UI waits meanwhile)")

    scene: StringProperty(name="Scene", options={'SKIP_SAVE'}, description="Empty: the current scene")
    cameras: EnumProperty(
        name="Cameras", options={'SKIP_SAVE'}, default='ACTIVE',
        items=[('ACTIVE', "Active Camera", "The scene's active camera at the current frame"),
               ('ALL', "All Cameras", "Every camera in the scene, by name"),
               ('MARKERS', "Marker Cameras", "The cameras bound to timeline markers, each at its marker's frame"),
               ('NAMED', "Named Cameras", "The cameras listed in Camera Names")])
    camera_names: StringProperty(name="Camera Names", options={'SKIP_SAVE'}, description="Comma-separated")
    action: StringProperty(name="Action", options={'SKIP_SAVE'})
    prompt: StringProperty(name="Prompt", options={'SKIP_SAVE'})
    seed: IntProperty(name="Seed", **options("seed"), options={'SKIP_SAVE'})
    frames: IntProperty(name="Frames", **options("frames"), options={'SKIP_SAVE'})
    steps: IntProperty(name="Steps", **options("steps"), options={'SKIP_SAVE'})
    guidance: FloatProperty(name="Guidance", **options("guidance"), options={'SKIP_SAVE'})
    long_side: IntProperty(name="Long Side", **{**options("long_side"), "default": CUSTOM_LONG_SIDE},
                           options={'SKIP_SAVE'}, description="Set: this long side instead of the model's native size")
    output: EnumProperty(name="Output", items=OUTPUT_ITEMS, default='BOTH', options={'SKIP_SAVE'})
    motion: EnumProperty(name="Motion", items=MOTION_ITEMS, default='ACTION', options={'SKIP_SAVE'})
    rig: StringProperty(name="Rig", options={'SKIP_SAVE'},
                        description="The armature object's name (each shot reads it through its own camera)")
    clip: StringProperty(name="Reference Clip", subtype='FILE_PATH', options={'SKIP_SAVE'})
    depth: BoolProperty(name="Depth from Scene", default=False, options={'SKIP_SAVE'})
    output_root: StringProperty(name="Output Folder", options={'SKIP_SAVE'},
                                description="Where the take folders go (empty: the preferences', else //flash/)")
    mp4: BoolProperty(name="MP4", default=False, options={'SKIP_SAVE'},
                      description="Also write flash.mp4 next to each take's frames")
    save: BoolProperty(name="Save a Copy", default=False, options={'SKIP_SAVE'},
                       description="Save the file with the imported results to a new .blend")
    save_path: StringProperty(name="Save As", subtype='FILE_PATH', options={'SKIP_SAVE'},
                              description="Empty: NAME_flash.blend beside the file")
    save_over_input: BoolProperty(name="Save Over the File", default=False, options={'SKIP_SAVE'},
                                  description="Allow saving over the opened .blend itself")
    overwrite: BoolProperty(name="Replace an Existing Copy", default=False, options={'SKIP_SAVE'},
                            description="Allow Save As to replace an existing file (without it the default name "
                                        "is numbered and a named file that exists is refused)")

    @classmethod
    def poll(cls, context):
        if STATUS.engine_busy:
            cls.poll_message_set("A FLASH job is running: wait for it or cancel it")
            return False
        return True

    def execute(self, context):
        mode = self.cameras.lower()
        names = split_names(self.camera_names)
        if names and not self.properties.is_property_set("cameras"):
            mode = "named"
        options = BatchOptions(
            scene=self.scene, mode=mode, cameras=names,
            overrides={name: getattr(self, name) for name in OVERRIDES if self.properties.is_property_set(name)},
            output_root=self.output_root, mp4=self.mp4, save=self.save or bool(self.save_path) or self.save_over_input,
            save_path=self.save_path, save_over_input=self.save_over_input, overwrite=self.overwrite)
        try:
            batch = run_batch(context, options)
        except BatchError as err:
            self.report({'ERROR'}, f"FLASH batch: {err}")
            return {'CANCELLED'}
        if batch.code:
            failed = batch.failed
            first = f"{failed[0].shot.label}: {failed[0].reason}" if failed else batch.save_error
            self.report({'ERROR'}, f"FLASH batch: {len(failed)} of {len(batch.results)} shots failed ({first})"
                        if failed else f"FLASH batch: not saved: {batch.save_error}")
            return {'CANCELLED'}
        self.report({'INFO'}, f"FLASH batch: {len(batch.results)} shots done")
        return {'FINISHED'}


def main(argv: list[str] | None = None) -> int:
    """The batch script: ``blender -b FILE -P flash_batch.py -- ARGS``. Returns the exit code."""
    argv = sys.argv if argv is None else argv
    try:
        options = parse_args(script_argv(argv))
    except SystemExit as stop:  # argparse printed the usage or the help
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    try:
        batch = run_batch(bpy.context, options)
    except BatchError as err:
        print(f"FLASH batch: error: {err}")
        return EXIT_USAGE
    finally:
        MANAGER.shutdown()  # the engine's work is done: let it exit before Blender does
    return batch.code


classes = (FLASH_OT_batch_animate,)
