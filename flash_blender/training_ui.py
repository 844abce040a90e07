"""The preferences' "Custom actions" section: train an action from clips, follow it, list
the trained ones (drawing only; the work is in ``operators/training.py``)."""

from __future__ import annotations

import os
from pathlib import Path

from . import training
from .clipcheck import group_files
from .services import actions_dir, clip_check, get_catalog
from .progress import STATUS

MAX_LINES = 6
_details_cache: dict[str, tuple[int | None, training.TrainedDetails]] = {}


def _details(folder: str) -> training.TrainedDetails:
    """``action.toml`` of one action, read again only when it changes."""
    try:
        stamp = os.stat(Path(folder) / training.LAYOUT.ACTION_MANIFEST).st_mtime_ns
    except OSError:
        stamp = None
    cached = _details_cache.get(folder)
    if cached is None or cached[0] != stamp:
        cached = (stamp, training.trained_details(Path(folder)))
        _details_cache[folder] = cached
    return cached[1]


def batch_script() -> Path:
    return Path(__file__).resolve().parent / "flash_batch.py"


def _lines(layout, lines: list[str], icon: str) -> None:
    for number, line in enumerate(lines[:MAX_LINES]):
        layout.label(text=line, icon=icon if number == 0 else 'BLANK1')
    if len(lines) > MAX_LINES:
        layout.label(text=f"… and {len(lines) - MAX_LINES} more (the console has them all)", icon='BLANK1')


def draw_custom_actions(prefs, box, context) -> None:
    box.label(text="Custom actions", icon='ARMATURE_DATA')
    job = STATUS.training
    running = job is not None and not job.finished

    column = box.column()
    column.enabled = not running
    column.prop(prefs, "train_name")
    column.prop(prefs, "train_prompt")
    row = column.row()
    row.prop(prefs, "train_source", expand=True)
    if prefs.train_source == 'FOLDER':
        column.prop(prefs, "train_folder")
    else:
        row = column.row(align=True)
        row.operator("flash.train_choose_clips", text="Choose Clip Files…", icon='FILEBROWSER')
        add = row.operator("flash.train_choose_clips", text="Add…", icon='ADD')
        add.append = True
        row.operator("flash.train_clear_clips", text="", icon='X')
        groups = group_files(item.path for item in prefs.train_files if item.path)
        if groups:
            names = [f"{paths[0].parent.name}/ ({len(paths)} frames)" if kind == "frames" else paths[0].name
                     for kind, paths in groups]
            shown = ", ".join(names[:6]) + (f", … (+{len(names) - 6})" if len(names) > 6 else "")
            column.label(text=f"Chosen: {shown}")
    check = clip_check(prefs)
    column.label(text=f"Clips: {check.summary()}",
                 icon='ERROR' if check.error or not check.usable else ('INFO' if check.bad else 'CHECKMARK'))
    _lines(column, check.lines(), 'BLANK1')
    if check.hint:
        column.label(text=check.hint, icon='INFO')

    settings = column.column(align=True)
    settings.use_property_split = True
    settings.prop(prefs, "train_steps")
    settings.prop(prefs, "train_decoder_steps")
    settings.prop(prefs, "train_resolution")
    settings.prop(prefs, "train_frames")
    settings.prop(prefs, "train_stride")

    if running:
        meta = job.meta
        box.label(text=f"Training '{meta.get('name', '')}'", icon='TIME')
        box.progress(factor=job.progress.factor, type='BAR', text=job.progress.text)
        box.operator("flash.train_cancel", text="Cancel", icon='CANCEL')
    else:
        row = box.row()
        row.scale_y = 1.3
        row.operator("flash.train_action", text="Train Action", icon='PLAY')
    if STATUS.train_error:
        box.label(text=STATUS.train_error, icon='ERROR')
    if STATUS.train_message:
        box.label(text=STATUS.train_message, icon='CHECKMARK')
    _lines(box, STATUS.train_notes, 'INFO')

    folder = actions_dir()
    waiting = [item for item in training.interrupted_trainings(folder)
               if not (running and job.meta.get("folder") == item.folder)]
    if waiting:
        sub = box.box()
        sub.label(text="Interrupted trainings", icon='RECOVER_LAST')
        for item in waiting:
            row = sub.row()
            row.label(text=item.text)
            if item.resumable:
                resume = row.operator("flash.train_action", text="Resume", icon='PLAY')
                resume.resume = True
                resume.action_name = item.name
            else:
                row.label(text="started outside Blender: resume it with the command line")
            row.operator("flash.discard_training", text="", icon='TRASH').folder = item.folder

    trained = [a for a in get_catalog().refresh() if a.source == "trained"]
    sub = box.box()
    sub.label(text=f"Trained actions ({len(trained)})", icon='ACTION')
    if not trained:
        sub.label(text="none yet")
    for action in trained:
        details = _details(action.path)
        item = sub.box()
        row = item.row()
        row.label(text=details.name if not details.problem else f"{details.name}: {details.problem}",
                  icon='CHECKMARK' if action.weights else 'ERROR')
        row.operator("flash.delete_action", text="", icon='TRASH').folder = Path(action.path).name
        col = item.column(align=True)
        col.label(text=f"Prompt: {details.prompt}")
        col.label(text=f"Clips: {details.clip_names}"
                       + (f" ({len(details.clips_skipped)} skipped)" if details.clips_skipped else ""))
        col.label(text=f"Steps: {details.steps_text}")
        col.label(text=f"Base model: {details.base_model or 'unknown'}")
        col.label(text=f"Trained: {details.date}")
    box.label(text=f"Stored in {folder}", icon='FILE_FOLDER')
    box.label(text=f"Batch script (blender -b … -P): {batch_script()}", icon='CONSOLE')
