"""``flash.batch_animate`` and the batch script's entry: several shots in one run.

Each shot runs the animate use case (``animate_take``, what ``flash.animate_action`` runs)
with the shot's camera made active (and, for marker shots, the marker's frame current; the
frame first, as a frame change lets markers switch the camera); the file's own frame and then
its active camera are put back afterwards, before the copy is saved. The shots go through
``shot_queue.run_shots``: one after another on the session's engine, or with ``--devices``
shared between one engine per device — engine work in parallel, Blender's (reference renders,
imports) here on the main thread, the takes imported in shot order. A shot that fails is
reported and the next one runs. With ``save`` the file, with the planes and strips of the
shots that worked, is saved to a new .blend at the end — also when some shots failed.

The pure parts (arguments, choosing shots, devices, summary lines) are in ``flash_blender/batch.py``.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy.types import Operator

from .. import importers
from ..animate_take import OVERRIDES, start_take, stored_folder, take_loop
from ..batch import (EXIT_USAGE, OUTPUT_FIX, BatchError, BatchOptions, Shot, ShotResult, check_out_exists,
                     engine_devices, exit_code, final_lines, needs_cuda_count, parse_args, save_target, script_argv,
                     select_shots, split_names, summary_line)
from ..bundled import engine_module
from ..engine import MANAGER, EngineManager
from ..errors import PlanError
from ..progress import STATUS, one_line
from ..properties import CUSTOM_LONG_SIDE, MOTION_ITEMS, OUTPUT_ITEMS
from ..reference import camera_kept
from ..request_limits import options
from ..services import engine_config, get_prefs, user_dir
from ..shot_queue import Engine, ShotJob, run_shots
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


@contextlib.contextmanager
def _in_scene(context, scene):
    """Blender's context with ``scene`` as its scene (a batch may run another than the window's)."""
    if context.scene != scene:
        with context.temp_override(scene=scene):
            yield bpy.context
    else:
        yield context


def _show_shot(scene, shot: Shot):
    """The shot's camera active, at its frame (the frame first: a frame change lets markers
    switch the camera); the camera, or None when it is gone."""
    camera = scene.objects.get(shot.camera)
    if camera is None or camera.type != 'CAMERA':  # select_shots saw it: only a script could remove it
        return None
    if shot.frame is not None and scene.frame_current != shot.frame:
        scene.frame_set(shot.frame)
    if scene.camera != camera:
        scene.camera = camera
    return camera


def _start_shot(context, scene, shot: Shot, options: BatchOptions, engine: Engine, made: list):
    """One take started on ``engine``: what ``flash.animate_action`` does, without the
    operator (a ShotJob for the queue, or a ShotResult when the camera is gone)."""
    if _show_shot(scene, shot) is None:
        return ShotResult(shot, False, reason=f"camera '{shot.camera}' is gone")
    with _in_scene(context, scene) as here:
        start = start_take(here, dict(options.overrides), options.output_root or None, mp4=options.mp4,
                           manager=engine.manager, config=engine.config)
    for warning in start.warnings:
        print(f"FLASH: {warning}")
    job = start.job
    loop = take_loop(job, prefix=engine.line_prefix)  # finish imports into the context it runs in

    def finish() -> ShotResult:
        # As one engine leaves it when its take comes back: the plane reads the camera where the shot was.
        _show_shot(scene, shot)
        with _in_scene(context, scene):
            end = loop.finish()
        if not end.ok:
            return ShotResult(shot, False, reason=end.message)
        take, result = job.meta, job.result or {}
        made.append(take)
        return ShotResult(shot, True, take=take.name, folder=stored_folder(take, result),
                          frames=len(result.get("frames") or []), mp4=result.get("mp4"),
                          base_model_only=take.base_model_only)

    return ShotJob(advance=loop.advance, finish=finish, lines=loop.lines, stop=loop.stop)


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


def _check_engine():
    """The engine can be started (set up, its model found): checked once, before any shot,
    so a worker without it fails in one line instead of once per shot. Its config."""
    try:
        return engine_config(get_prefs())
    except PlanError as err:
        raise BatchError(err.message, err.hint) from None


def _engines(options: BatchOptions, config, shots: int) -> tuple[list[Engine], str]:
    """The batch's engines (``--devices``: one per device, the first the session's own; none
    named: the session's engine as the preferences say) and a note on the choice. BatchError
    for devices the engine does not have, before any starts."""
    prefs = get_prefs()
    cuda_count = None
    if needs_cuda_count(options.devices):
        try:
            cuda_count = engine_module("client").cuda_device_count(config.python, config.engine_path)
        except Exception as err:  # EngineError: one line with the fix
            raise BatchError(getattr(err, "message", one_line(err)), getattr(err, "hint", "")) from None
    plan = engine_devices(options.devices, shots, prefs.device, cuda_count)
    if not options.devices:
        return [Engine(prefs.device, MANAGER, config)], plan.note
    several = len(plan.devices) > 1
    return [Engine(device, MANAGER if number == 1 else EngineManager(), engine_config(prefs, device, number),
                   number=number, several=several)
            for number, device in enumerate(plan.devices, start=1)], plan.note


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
    config = _check_engine()
    cameras = [o.name for o in scene.objects if o.type == 'CAMERA']
    others = [o.name for o in scene.objects if o.type != 'CAMERA']
    markers = [(m.frame, m.name, m.camera.name if m.camera else None) for m in scene.timeline_markers]
    shots = select_shots(options.mode, scene.name, active=scene.camera.name if scene.camera else None,
                         cameras=cameras, others=others, markers=markers, names=options.cameras,
                         marker_names=options.markers)
    engines, note = _engines(options, config, sum(not shot.error for shot in shots))
    _check_output(options, target)  # after the devices' check: a batch refused makes no folder
    where = Path(bpy.data.filepath).name if bpy.data.filepath else "an unsaved file"
    on = f" on {len(engines)} engines ({', '.join(e.device for e in engines)})" if len(engines) > 1 else ""
    report(f"FLASH batch: {len(shots)} shot{'s' if len(shots) != 1 else ''} of {where}{on}")
    if note:
        report(f"FLASH batch: {note}")
    batch = BatchReport()

    def take_result(result: ShotResult) -> None:
        batch.results.append(result)
        report(summary_line(result))

    try:
        with camera_kept(scene):  # the file's own frame, then its own camera, before saving
            run_shots(shots, engines, lambda shot, engine: _start_shot(context, scene, shot, options, engine,
                                                                       batch.takes),
                      on_result=take_result, report=report)
    except KeyboardInterrupt:
        target = None  # an interrupted batch saves no copy that looks like a finished one
        raise
    finally:
        for engine in engines:
            if engine.manager is not MANAGER:  # the batch's own; the session's stays for the next job
                engine.manager.shutdown()
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
