"""``flash.animate_action``: reference render → engine job → plane and/or strip.

In the UI the job runs in a modal operator whose timer drains the engine's events, so
Blender stays usable; in background mode (``bpy.app.background``) — and whenever the
operator is executed rather than invoked — it runs blocking and prints its progress.
Operator properties that are set override the scene's FLASH settings, so
``bpy.ops.flash.animate_action(action="soccer_shoot", frames=4)`` works headless.
"""

from __future__ import annotations

import shutil
import traceback
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy.types import Operator

from .. import importers
from ..timing import TakeTiming, clip_fps, scene_fps
from ..engine import MANAGER
from ..take_planning import (PlanError, check_writable, model_size, output_root, plan_take, reserve_reference,
                    staging_leftovers)
from ..services import engine_config, get_catalog, get_prefs, user_dir
from ..progress import STATUS, AnimateJob, one_line
from ..properties import DEFAULT_ACTION, OUTPUT_ITEMS
from ..reference import render_reference
from .modal import TimerOperator, redraw_panels

TIMER_INTERVAL_S = 0.1


def discard_take(meta: dict, engine_died: bool = False) -> None:
    """Remove what a take that will not be imported left: its reference render, and after an
    engine death the staging folder the dead engine could not remove itself."""
    Path(meta["reference"]).unlink(missing_ok=True)
    if engine_died:
        for folder in staging_leftovers(meta["plan"]):
            shutil.rmtree(folder, ignore_errors=True)


def abandon_running_job(reason: str) -> None:
    """Stop the running job for good (file closing, add-on disabled)."""
    job = STATUS.job
    if job is not None and not job.finished:
        job.abandon(reason)
        discard_take(job.meta)


class FLASH_OT_animate_action(TimerOperator, Operator):
    bl_idname = "flash.animate_action"
    bl_label = "Animate Action"
    bl_description = ("Render the active camera's view, animate it with the chosen action, and bring the clip "
                      "back as a camera plane and/or a sequencer strip")
    bl_options = {'UNDO'}

    # Overrides: unset ones come from the scene's FLASH settings.
    action: StringProperty(name="Action", options={'SKIP_SAVE'},
                           description="Preset id or name, or a trained action's folder name")
    prompt: StringProperty(name="Prompt", options={'SKIP_SAVE'})
    seed: IntProperty(name="Seed", min=0, options={'SKIP_SAVE'})
    frames: IntProperty(name="Frames", min=2, max=256, default=16, options={'SKIP_SAVE'})
    steps: IntProperty(name="Steps", min=1, max=1000, default=25, options={'SKIP_SAVE'})
    guidance: FloatProperty(name="Guidance", min=1.0, max=30.0, default=7.5, options={'SKIP_SAVE'})
    output: EnumProperty(name="Output", items=OUTPUT_ITEMS, default='BOTH', options={'SKIP_SAVE'})
    long_side: IntProperty(name="Long Side", min=64, max=4096, default=512, options={'SKIP_SAVE'})
    # Only as overrides (scripts, the batch): where takes go, and an MP4 beside the frames.
    output_root: StringProperty(name="Output Folder", options={'SKIP_SAVE'},
                                description="Instead of the preferences' Output Folder (// is beside the .blend)")
    mp4: BoolProperty(name="MP4", default=False, options={'SKIP_SAVE'},
                      description="Also write flash.mp4 next to the frames")

    @classmethod
    def poll(cls, context):
        if STATUS.busy:
            cls.poll_message_set("A FLASH job is running: wait for it or cancel it")
            return False
        if STATUS.training_busy:
            cls.poll_message_set("The engine is training an action (Preferences > FLASH Previs): "
                                 "wait for it or cancel it")
            return False
        return context.scene is not None

    # -- settings ------------------------------------------------------------------------

    def _value(self, settings, name):
        if self.properties.is_property_set(name):
            return getattr(self, name)
        if name == "action":
            return settings.action_id or DEFAULT_ACTION
        return getattr(settings, name)

    def _begin(self, context) -> AnimateJob:
        """Checks, take folder, reference render; then the engine request. Creates nothing
        when a check fails."""
        scene = context.scene
        settings = scene.flash
        camera = scene.camera
        if camera is None:
            raise PlanError(f"scene '{scene.name}' has no active camera",
                            "add a camera and make it active: select it and press Ctrl+Numpad 0")
        if camera.type != 'CAMERA' or camera.data.type not in ('PERSP', 'ORTHO'):
            raise PlanError(f"the active camera '{camera.name}' is not a perspective or orthographic camera",
                            "use a perspective or orthographic camera for the shot")
        try:
            action = get_catalog().find(self._value(settings, "action"))
        except KeyError as err:
            raise PlanError(str(err.args[0])) from None
        prompt = (self.prompt if self.properties.is_property_set("prompt") else settings.prompt).strip()
        prompt = prompt or action.prompt
        render = scene.render
        width, height = model_size(render.resolution_x, render.resolution_y, self._value(settings, "long_side"),
                                   render.pixel_aspect_x, render.pixel_aspect_y)
        prefs = get_prefs(context)
        config = engine_config(prefs)  # before anything is written: an unset engine creates nothing
        override = self.output_root if self.properties.is_property_set("output_root") else prefs.output_root
        root = output_root(bpy.data.filepath, override, user_dir())
        check_writable(root.folder)  # before the engine starts: a read-only folder costs no model load
        MANAGER.start(config)  # a cold engine imports torch while the reference renders
        plan = plan_take(root.folder, scene.name, camera.name, action.slug)
        reserve_reference(plan)
        try:
            render_reference(scene, plan.reference, width, height)
        except BaseException:
            plan.reference.unlink(missing_ok=True)
            raise
        seed = self._value(settings, "seed")
        args = {
            "image": str(plan.reference.resolve()), "out": str(plan.folder.resolve()), "prompt": prompt,
            "frames": self._value(settings, "frames"), "steps": self._value(settings, "steps"),
            "guidance": float(self._value(settings, "guidance")), "seed": seed, "width": width, "height": height,
            **action.request_args(),
        }
        if self.mp4:
            args["mp4"] = True
        meta = {
            "scene": scene.name, "camera": camera.name, "take": plan.name, "number": plan.number,
            "folder": str(plan.folder), "reference": str(plan.reference), "in_project": root.in_project,
            "output": self._value(settings, "output"), "frame_start": scene.frame_current,
            "distance": settings.plane_distance, "outside": settings.outside, "action": action.id, "action_name": action.name,
            "seed": seed, "prompt": prompt, "base_model_only": action.base_model_only, "plan": plan,
        }
        if root.warning:
            STATUS.warnings.append(root.warning)
            self.report({'WARNING'}, root.warning)
        return AnimateJob(MANAGER, config, args, meta)

    def _refuse(self, err: BaseException):
        if not isinstance(err, PlanError):
            traceback.print_exc()
        STATUS.last_error = one_line(err)
        self.report({'ERROR'}, STATUS.last_error)
        redraw_panels()
        return {'CANCELLED'}

    # -- the two paths -------------------------------------------------------------------

    def execute(self, context):
        """Blocking: background mode and scripts."""
        STATUS.clear_messages()
        try:
            job = self._begin(context)
        except Exception as err:
            return self._refuse(err)
        STATUS.job = job
        print(f"FLASH: {job.meta['take']}: {job.args['frames']} frames at {job.args['width']}x{job.args['height']}")
        job.run_blocking(report=print)
        return self._end(context, job)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        STATUS.clear_messages()
        try:
            job = self._begin(context)
        except Exception as err:
            return self._refuse(err)
        STATUS.job = job
        self.add_timer(context, TIMER_INTERVAL_S)
        context.window_manager.modal_handler_add(self)
        redraw_panels()
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        if event.type != 'TIMER':
            return {'PASS_THROUGH'}
        job = STATUS.job
        if job is None:  # the add-on was reset under us
            self.remove_timer(context)
            return {'CANCELLED'}
        if job.tick():
            return self._end(context, job)
        redraw_panels()
        return {'PASS_THROUGH'}

    def cancel(self, context):
        """Blender ended the modal operator (file load, window closed): stop the job."""
        abandon_running_job("Blender ended the job's operator")
        self.remove_timer(context)

    # -- the end -------------------------------------------------------------------------

    def _end(self, context, job: AnimateJob):
        self.remove_timer(context)
        meta = job.meta
        if job.state != "done":
            discard_take(meta, engine_died=job.error_code == "engine_died")  # a failed take leaves nothing
            if job.state == "cancelled":
                STATUS.last_message = f"{meta['take']} cancelled"
                self.report({'WARNING'}, f"FLASH: {STATUS.last_message}")
            else:
                line = job.error_line
                if job.error_code == "engine_died":
                    line += " — Animate Action again starts a fresh engine"
                STATUS.last_error = line
                self.report({'ERROR'}, f"FLASH: {line}")
            redraw_panels()
            return {'CANCELLED'}
        try:
            message = self._import(context, job)
        except Exception as err:
            traceback.print_exc()
            STATUS.last_error = f"the clip is in {meta['folder']} but could not be imported: {one_line(err)}"
            self.report({'ERROR'}, f"FLASH: {STATUS.last_error}")
            redraw_panels()
            return {'CANCELLED'}
        STATUS.last_message = message
        self.report({'INFO'}, f"FLASH: {message}")
        redraw_panels()
        return {'FINISHED'}

    def _import(self, context, job: AnimateJob) -> str:
        meta = job.meta
        # The take folder as we named it (the engine reports resolved paths, which may differ
        # by symlinks from the .blend's folder and so not be //-relative).
        folder = Path(meta["folder"])
        frames = [str(folder / Path(frame).name) for frame in job.result["frames"]]
        if not frames:
            raise PlanError("the engine returned no frames", "see the engine log")
        scene = bpy.data.scenes.get(meta["scene"])
        if scene is None:
            raise PlanError(f"scene '{meta['scene']}' is gone", "the frames are on disk: import them by hand")
        in_project = meta["in_project"]
        name, made = meta["take"], []
        tags = {"take": name, "action": meta["action"], "camera": meta["camera"], "seed": meta["seed"],
                "prompt": meta["prompt"], "folder": importers.stored_path(folder, in_project)}
        render = scene.render
        timing = TakeTiming(frame_start=meta["frame_start"], clip_frames=len(frames), clip_fps=clip_fps((job.result or {}).get("metadata")),
                            scene_fps=scene_fps(render.fps, render.fps_base))
        if meta["output"] in ('PLANE', 'BOTH'):
            camera = bpy.data.objects.get(meta["camera"])
            if camera is None or camera.type != 'CAMERA':
                STATUS.warnings.append(f"camera '{meta['camera']}' is gone: no plane for {name}")
                self.report({'WARNING'}, STATUS.warnings[-1])
            else:
                importers.add_plane(scene, camera, frames, importers.stored_path(frames[0], in_project), name,
                                    meta["distance"], timing, tags, outside=meta.get("outside", "HOLD"))
                made.append("plane")
                if importers.show_textures_in_solid(scene):
                    note = "Solid shading now colours by Texture, so the take shows in the viewport and Workbench"
                    STATUS.warnings.append(note)
                    self.report({'INFO'}, note)
        if meta["output"] in ('VSE', 'BOTH'):
            stored_dir = importers.stored_path(folder, in_project).rstrip("/\\") + "/"
            _, shown_elsewhere = importers.add_strip(scene, frames, stored_dir, name, timing, tags, context)
            made.append("strip")
            if shown_elsewhere is not None:
                note = f"the sequencer now shows scene '{scene.name}' (it showed '{shown_elsewhere.name}')"
                STATUS.warnings.append(note)
                self.report({'INFO'}, note)
        base = " (base model only)" if meta["base_model_only"] else ""
        return (f"{name}: {timing.describe()}{base}, scene frames {timing.frame_start}-{timing.frame_end}, "
                f"as {' and '.join(made) or 'files only'}, in {importers.stored_path(folder, in_project)}")


class FLASH_OT_cancel_job(Operator):
    bl_idname = "flash.cancel_job"
    bl_label = "Cancel"
    bl_description = "Stop the running FLASH job (the engine stops within a step; nothing is imported)"

    @classmethod
    def poll(cls, context):
        return STATUS.busy

    def execute(self, context):
        STATUS.job.cancel()
        self.report({'INFO'}, "FLASH: cancelling")
        return {'FINISHED'}


classes = (FLASH_OT_animate_action, FLASH_OT_cancel_job)
