"""Custom actions: train one from clips, resume, cancel, delete (Preferences › FLASH Previs).

``flash.train_action`` runs the engine's ``train`` job. In the UI it returns at once and a
persistent application timer follows the job (training takes hours: Blender stays usable,
also across opening other files); in background mode (``bpy.app.background``) — and when
executed from a script — it blocks and prints its progress. Operator properties that are
set override the preferences' fields, so a script can train without touching them::

    bpy.ops.flash.train_action(action_name="golf swing", prompt="a person is swinging a golf club.",
                               clips_folder="/clips/golf", steps=20000, decoder_steps=10000)
"""

from __future__ import annotations

import datetime as _dt
import shutil
import traceback
from pathlib import Path

import bpy
from bpy.props import BoolProperty, CollectionProperty, IntProperty, StringProperty
from bpy.types import Operator, OperatorFileListElement

from .. import clipcheck, training
from ..engine import MANAGER
from ..errors import PlanError
from ..preferences import FlashClipFile
from ..services import (actions_dir, chosen_clip_files, chosen_clips_folder, engine_config,
                           get_catalog, get_prefs, model_argument)
from ..job_loop import JobLoop, Outcome, changed_lines
from ..request_limits import limits
from ..progress import STATUS, one_line
from .modal import JobOperator, follow_with_app_timer, redraw_panels, stop_app_timer

TICK_S = 0.2
PRINT_EVERY_S = 2.0
STOP_WAIT_S = 30.0  # after Ctrl-C: time for the engine to write its checkpoint
TRAINING_TIMER = "training"
CLIP_GLOB = ";".join(f"*{suffix}" for suffix in clipcheck.VIDEO_SUFFIXES + clipcheck.IMAGE_SUFFIXES)


def abandon_training(reason: str) -> None:
    """The add-on goes away: cancel (the engine writes a checkpoint, Resume continues)."""
    stop_app_timer(TRAINING_TIMER)
    job = STATUS.training
    if job is not None and not job.finished:
        job.abandon(reason)


def _clean_request(paths: training.TrainPaths) -> None:
    paths.request_file.unlink(missing_ok=True)
    shutil.rmtree(paths.staged_clips, ignore_errors=True)


def finish_training(job: training.TrainJob) -> tuple[str, str]:
    """After the job's end: tidy up, refresh the action list, say what happened.
    Returns the report level and the message."""
    meta = job.meta
    paths = training.TrainPaths(Path(meta["actions_dir"]), meta["folder"])
    name = meta["name"]
    skipped = job.skipped()
    STATUS.train_notes += [f"skipped by the engine: {line}" for line in skipped]
    if job.state == "done":
        result = job.result or {}
        try:
            training.write_sources(paths.out, meta.get("sources") or {}, result, skipped)
        except OSError as err:
            print(f"FLASH train: could not write {training.SOURCES_JSON}: {err}")
        _clean_request(paths)
        get_catalog().refresh(force=True)  # in the sidebar's dropdown from now on
        used = len(result.get("clips") or [])
        message = (f"'{name}' is trained ({result.get('steps_done', '?')} UNet + "
                   f"{result.get('decoder_steps_done', '?')} decoder steps on {used} clip{'s' if used != 1 else ''}"
                   + (f", {len(skipped)} skipped" if skipped else "") + "): pick it in the sidebar's Action list")
        STATUS.train_message, level = message, 'INFO'
    else:
        checkpoint = paths.checkpoint()
        where = (f" at {'UNet' if checkpoint.get('phase') == 'unet' else 'decoder'} step {checkpoint.get('step')}"
                 if checkpoint else "")
        if checkpoint is None and not meta.get("resumed"):
            _clean_request(paths)  # nothing to resume: the next Start begins afresh
        if job.state == "cancelled":
            message = f"training of '{name}' cancelled{where}" + (
                "; Resume continues from there" if checkpoint else "")
            STATUS.train_message, level = message, 'WARNING'
        else:
            message = job.error_line
            if job.error_code == "engine_died":
                message += " — the next job starts a fresh engine"
            if checkpoint:
                message += f"; Resume continues from the last checkpoint{where}"
            STATUS.train_error, level = message, 'ERROR'
    redraw_panels()
    return level, message


OVERRIDES = ("action_name", "prompt", "clips_folder", "clip_files", "steps", "decoder_steps", "resolution", "frames",
             "stride")
PREFS_FIELDS = {"action_name": "train_name", "prompt": "train_prompt", "steps": "train_steps",
                "decoder_steps": "train_decoder_steps", "resolution": "train_resolution", "frames": "train_frames",
                "stride": "train_stride"}


def _chosen_clips(prefs, overrides: dict, frames: int, stride: int):
    """(kind, folder or files, check): the overrides' clips, else the preferences'."""
    if "clips_folder" in overrides:
        folder = bpy.path.abspath(overrides["clips_folder"])
        return "folder", folder, clipcheck.check_folder(folder, frames, stride)
    if "clip_files" in overrides:
        files = [bpy.path.abspath(path) for path in overrides["clip_files"] if path]
        return "files", files, clipcheck.check_files(files, frames, stride)
    if prefs.train_source == 'FILES':
        files = chosen_clip_files(prefs)
        return "files", files, clipcheck.check_files(files, frames, stride)
    folder = chosen_clips_folder(prefs)
    return "folder", folder, clipcheck.check_folder(folder, frames, stride)


def begin_training(context, overrides: dict, resume: bool = False) -> training.TrainJob:
    """Checks, staging, the saved request; then the job (its engine starting). ``overrides``
    replace the preferences' fields (keys of OVERRIDES). Writes nothing when a check fails."""
    prefs = get_prefs(context)

    def value(name):
        return overrides[name] if name in overrides else getattr(prefs, PREFS_FIELDS[name])

    if STATUS.engine_busy:
        raise PlanError("the engine is busy with another FLASH job", "wait for it or cancel it")
    name = value("action_name").strip()
    folder = training.action_folder_name(name)
    paths = training.TrainPaths(actions_dir(), folder)
    if resume:
        return _resume(prefs, name, paths)
    if paths.out.exists():
        raise PlanError(f"an action '{folder}' already exists",
                        "delete it in the list of trained actions, or choose another name")
    if paths.checkpoint() is not None:
        raise PlanError(f"an interrupted training of '{name}' is waiting",
                        "Resume it, or Discard it in the list below and start again")
    frames, stride = value("frames"), value("stride")
    kind, chosen, check = _chosen_clips(prefs, overrides, frames, stride)
    STATUS.train_notes = [f"skipped before training: {line}" for line in check.lines()]
    if check.error:
        raise PlanError(check.error, "choose a clips folder or clip files in Custom actions")
    for line in check.lines():
        print(f"FLASH train: will skip {line}")
    if not check.usable:
        raise PlanError(f"no usable clips: {'; '.join(check.lines()[:3])}",
                        check.hint or "add video files (mp4/mov/webm/gif/avi) or folders of frame images")
    config = engine_config(prefs)  # before anything is written: an unset engine creates nothing
    clips_folder = paths.staged_clips if kind == "files" else Path(chosen)
    args = training.train_args(
        clips_folder=clips_folder, name=name, prompt=value("prompt"), out=paths.out, model=model_argument(prefs),
        steps=value("steps"), decoder_steps=value("decoder_steps"), resolution=value("resolution"), frames=frames,
        stride=stride, device=prefs.device, precision=prefs.precision,
        model_limits=MANAGER.model_limits(config))  # a running engine's model: its size step
    paths.actions_dir.mkdir(parents=True, exist_ok=True)
    sources = clipcheck.stage_files(chosen, paths.staged_clips) if kind == "files" else {}
    training.write_json(paths.request_file, {
        "name": name, "prompt": args["prompt"][0], "args": args, "sources": sources,
        "clips": chosen if kind == "files" else [chosen],
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    meta = {"name": name, "folder": folder, "actions_dir": str(paths.actions_dir), "sources": sources,
            "steps": args["steps"], "decoder_steps": args["decoder_steps"], "usable": len(check.usable)}
    return training.TrainJob(MANAGER, config, args, meta)


def _resume(prefs, name: str, paths: training.TrainPaths) -> training.TrainJob:
    checkpoint = paths.checkpoint()
    if checkpoint is None:
        raise PlanError(f"nothing to resume for '{name}': no checkpoint in {paths.work_dir}",
                        "start the training again")
    saved = paths.saved_request()
    if saved is None or not isinstance(saved.get("args"), dict):
        raise PlanError(f"the add-on did not start the training of '{name}', so it does not know its clips",
                        f"resume it with python -m flash_engine train --resume --out {paths.out} and its clips")
    args = dict(saved["args"], resume=True, device=prefs.device, precision=prefs.precision)
    args.pop("force", None)
    missing = [c for c in args.get("clips", []) if not Path(c).is_dir()]
    if missing:
        raise PlanError(f"the clips of '{name}' are gone: {missing[0]}", "Discard it and train again")
    config = engine_config(prefs)
    settings = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    meta = {"name": saved.get("name") or name, "folder": paths.folder, "actions_dir": str(paths.actions_dir),
            "sources": saved.get("sources") or {}, "resumed": True,
            "steps": int(settings.get("steps", args.get("steps") or 0)),
            "decoder_steps": int(settings.get("decoder_steps", args.get("decoder_steps") or 0))}
    return training.TrainJob(MANAGER, config, args, meta)


def training_loop(job: training.TrainJob) -> JobLoop:
    """The job loop of a training: its progress printed at most every few seconds (and at
    each new phase); Ctrl-C (blocking) stops it at its next step, keeping a checkpoint."""

    def advance() -> bool:
        try:
            return job.tick()
        except Exception as err:  # never let a timer die silently with the job still "running"
            traceback.print_exc()
            job._fail(err)
            return True

    def finish() -> Outcome:
        level, message = finish_training(job)
        for note in STATUS.train_notes:
            print(f"FLASH train: {note}")
        return Outcome(job.state == "done", message, level)

    return JobLoop(advance=advance, finish=finish,
                   lines=changed_lines(lambda: job.progress.text, prefix="FLASH train: ", every_s=PRINT_EVERY_S,
                                       phase=lambda: job.progress.phase),
                   stop=job.cancel, interval=TICK_S, stop_wait=STOP_WAIT_S)


def follow_in_ui(job: training.TrainJob) -> None:
    """The UI's way: the job runs in the engine, a persistent application timer follows it
    (it survives opening another file)."""
    STATUS.training = job
    follow_with_app_timer(TRAINING_TIMER, training_loop(job), prefix="FLASH train: ")
    redraw_panels()


class FLASH_OT_train_action(JobOperator, Operator):
    bl_idname = "flash.train_action"
    bl_label = "Train Action"
    bl_description = ("Teach the engine a new action from your clips (the preferences' Custom actions); "
                      "it then appears in the sidebar's Action list")
    # A training takes hours: in the UI an application timer follows it, so the operator
    # ends at once and the job outlives the file it started in.
    follow_app_timer = TRAINING_TIMER
    console_prefix = "FLASH train: "

    # Overrides of the preferences' fields (unset: the preferences').
    action_name: StringProperty(name="Action Name", options={'SKIP_SAVE'})
    prompt: StringProperty(name="Prompt", options={'SKIP_SAVE'})
    clips_folder: StringProperty(name="Clips Folder", subtype='DIR_PATH', options={'SKIP_SAVE'})
    clip_files: CollectionProperty(type=FlashClipFile, options={'SKIP_SAVE'})
    # (limits: the engine's train request schema)
    steps: IntProperty(name="UNet Steps", **limits("steps", "train"), default=training.DEFAULT_STEPS,
                       options={'SKIP_SAVE'})
    decoder_steps: IntProperty(name="Decoder Steps", **limits("decoder_steps", "train"),
                               default=training.DEFAULT_DECODER_STEPS, options={'SKIP_SAVE'})
    resolution: IntProperty(name="Resolution", min=training.NATIVE_RESOLUTION, max=4096,
                            default=training.NATIVE_RESOLUTION, options={'SKIP_SAVE'},
                            description="0: the base model's native size")
    frames: IntProperty(name="Frames", **limits("frames", "train"), default=training.DEFAULT_FRAMES, options={'SKIP_SAVE'})
    stride: IntProperty(name="Stride", **limits("stride", "train"), default=training.DEFAULT_STRIDE, options={'SKIP_SAVE'})
    resume: BoolProperty(name="Resume", default=False, options={'SKIP_SAVE'},
                         description="Continue an interrupted training of this action from its last checkpoint")

    @classmethod
    def poll(cls, context):
        if STATUS.training_busy:
            cls.poll_message_set("A training is running: wait for it or cancel it")
            return False
        if STATUS.busy:
            cls.poll_message_set("An animate job is running: wait for it or cancel it")
            return False
        return True

    def _overrides(self) -> dict:
        overrides = {name: getattr(self, name) for name in OVERRIDES
                     if name != "clip_files" and self.properties.is_property_set(name)}
        if self.properties.is_property_set("clip_files"):
            overrides["clip_files"] = [item.path for item in self.clip_files]
        return overrides

    def refused(self, context, error: BaseException) -> str:
        STATUS.train_error = one_line(error)
        return STATUS.train_error

    def start_job(self, context) -> JobLoop:
        STATUS.clear_train_messages()
        job = STATUS.training = begin_training(context, self._overrides(), resume=self.resume)
        print(f"FLASH train: '{job.meta['name']}'" + (" (resuming)" if job.meta.get("resumed") else "")
              + f" → {job.args['out']}")
        return training_loop(job)



class FLASH_OT_train_cancel(Operator):
    bl_idname = "flash.train_cancel"
    bl_label = "Cancel Training"
    bl_description = "Stop the training at its next step; it keeps a checkpoint, and Resume continues from it"

    @classmethod
    def poll(cls, context):
        return STATUS.training_busy

    def execute(self, context):
        STATUS.training.cancel()
        self.report({'INFO'}, "FLASH: stopping the training at its next step")
        return {'FINISHED'}


class FLASH_OT_train_choose_clips(Operator):
    bl_idname = "flash.train_choose_clips"
    bl_label = "Choose Clips"
    bl_description = ("Pick clip files (several at once); images picked together from one folder are one clip's "
                      "frames. Your files are never moved: training uses links or copies")

    filter_glob: StringProperty(default=CLIP_GLOB, options={'HIDDEN'})
    files: CollectionProperty(type=OperatorFileListElement, options={'HIDDEN', 'SKIP_SAVE'})
    directory: StringProperty(subtype='DIR_PATH', options={'HIDDEN', 'SKIP_SAVE'})
    append: BoolProperty(name="Add to the List", default=False, options={'SKIP_SAVE'},
                         description="Keep the clips already chosen")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {'RUNNING_MODAL'}

    def execute(self, context):
        prefs = get_prefs(context)
        if not self.append:
            prefs.train_files.clear()
        known = {item.path for item in prefs.train_files}
        for element in self.files:
            if not element.name:
                continue
            path = str(Path(self.directory) / element.name)
            if path not in known:
                prefs.train_files.add().path = path
                known.add(path)
        prefs.train_source = 'FILES'
        redraw_panels()
        return {'FINISHED'}


class FLASH_OT_train_clear_clips(Operator):
    bl_idname = "flash.train_clear_clips"
    bl_label = "Clear Clips"
    bl_description = "Forget the chosen clip files (the files stay where they are)"

    def execute(self, context):
        get_prefs(context).train_files.clear()
        return {'FINISHED'}


def _actions_child(folder: str) -> Path:
    """``folder`` inside the actions folder, refused when it points anywhere else."""
    root = actions_dir().resolve()
    if not folder or folder in (".", "..") or "/" in folder or "\\" in folder:
        raise PlanError(f"not an action folder: {folder!r}")
    target = root / folder
    if target.resolve().parent != root:
        raise PlanError(f"not an action folder: {folder!r}")
    return target


def _training_folder() -> str | None:
    job = STATUS.training
    return job.meta.get("folder") if job is not None and not job.finished else None


class FLASH_OT_delete_action(Operator):
    bl_idname = "flash.delete_action"
    bl_label = "Delete Trained Action"
    bl_description = "Delete this trained action and its weights (asks first)"

    folder: StringProperty(name="Folder", options={'SKIP_SAVE'})

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        return context.window_manager.invoke_confirm(
            self, event, title="Delete trained action?",
            message=f"'{self.folder}' and its weights will be deleted. This cannot be undone.",
            confirm_text="Delete", icon='WARNING')

    def execute(self, context):
        try:
            target = _actions_child(self.folder)
            if not (target / training.LAYOUT.ACTION_MANIFEST).is_file():
                raise PlanError(f"no trained action '{self.folder}' in {target.parent}", "refresh the list")
            if _training_folder() == self.folder:
                raise PlanError(f"'{self.folder}' is training", "cancel the training first")
        except PlanError as err:
            self.report({'ERROR'}, f"FLASH: {err}")
            return {'CANCELLED'}
        shutil.rmtree(target)
        get_catalog().refresh(force=True)
        STATUS.train_message = f"deleted the trained action '{self.folder}'"
        self.report({'INFO'}, f"FLASH: {STATUS.train_message}")
        redraw_panels()
        return {'FINISHED'}


class FLASH_OT_discard_training(Operator):
    bl_idname = "flash.discard_training"
    bl_label = "Discard Interrupted Training"
    bl_description = "Delete an interrupted training's checkpoint (asks first); Start then begins afresh"

    folder: StringProperty(name="Folder", options={'SKIP_SAVE'})

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        return context.window_manager.invoke_confirm(
            self, event, title="Discard interrupted training?",
            message=f"The checkpoint of '{self.folder}' will be deleted: its training steps are lost.",
            confirm_text="Discard", icon='WARNING')

    def execute(self, context):
        try:
            _actions_child(self.folder)
            if _training_folder() == self.folder:
                raise PlanError(f"'{self.folder}' is training", "cancel the training first")
        except PlanError as err:
            self.report({'ERROR'}, f"FLASH: {err}")
            return {'CANCELLED'}
        paths = training.TrainPaths(actions_dir(), self.folder)
        shutil.rmtree(paths.work_dir, ignore_errors=True)
        _clean_request(paths)
        STATUS.train_message = f"discarded the interrupted training of '{self.folder}'"
        self.report({'INFO'}, f"FLASH: {STATUS.train_message}")
        redraw_panels()
        return {'FINISHED'}


classes = (FLASH_OT_train_action, FLASH_OT_train_cancel, FLASH_OT_train_choose_clips, FLASH_OT_train_clear_clips,
           FLASH_OT_delete_action, FLASH_OT_discard_training)
