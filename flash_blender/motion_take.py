"""A take's motion, from the scene to the files the engine reads, and the preview of it.

:func:`prepare_motion` reads and checks everything before anything is written (the rig's
poses through the shot's camera, the clip's frames); :func:`write_motion` writes the take's
``.pose.json`` and depth maps beside its reference (``ROOT/<take>.pose.json``,
``ROOT/<take>.depth/``) and says what it wrote, so a failed take removes exactly that;
:func:`preview_motion` draws the same poses (and depth) as an image sequence on a camera plane.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import bpy

from . import motion as mo
from . import importers
from .errors import PlanError
from .pose_file import pose_text, write_pose
from .pose_maps import black, depth_preview, draw_pose
from .png_files import rgb_png, write_new
from .rig_motion import RigRead, find_rig, read_clip, read_rig, render_depth, rig_mapping, write_depth
from .take_planning import plan_take
from .timing import TakeTiming

PREVIEW_ACTION = "motion-preview"  # the action part of a preview's folder name
PREVIEW_PROPERTY = "flash_preview"  # marks a preview plane (it is a take object too: kept out of renders)
PREVIEW_FRAME = "frame_{:04d}.png"
PREVIEW_POSES = "preview.pose.json"


@dataclass
class PreparedMotion:
    choice: mo.MotionChoice
    camera: str
    samples: list  # (scene frame, subframe) per take frame
    rig: RigRead | None = None
    clip: mo.ClipInfo | None = None


def prepare_motion(context, scene, camera, choice: mo.MotionChoice, timing: TakeTiming) -> PreparedMotion | None:
    """Everything the take's motion needs from the scene, checked (PlanError with the fix);
    None for the action alone. Writes nothing; the frame and camera are as they were."""
    if not choice.controlled:
        return None
    prepared = PreparedMotion(choice=choice, camera=camera.name, samples=timing.sample_frames())
    if choice.source == mo.RIG:
        armature = find_rig(scene, choice)
        mapping = rig_mapping(armature, choice)
        prepared.rig = read_rig(context, scene, camera, armature, mapping, prepared.samples)
        mo.check_visible([[c for _x, _y, c in frame] for frame in prepared.rig.image], armature.name, camera.name,
                         (timing.frame_start, timing.frame_end))
    elif choice.source == mo.CLIP:
        prepared.clip = read_clip(choice)
    return prepared


def write_motion(context, scene, camera, prepared: PreparedMotion, reference: Path, size: tuple[int, int],
                 fps: float) -> tuple[dict, tuple[Path, ...]]:
    """Write the take's motion files beside ``reference``; returns the take's motion record and
    the paths written (a failure removes what this call wrote, then raises)."""
    choice, written = prepared.choice, []
    width, height = size
    try:
        if prepared.rig is not None:
            path = write_pose(mo.pose_path(reference), pose_text(prepared.rig.image, width, height, fps))
            written.append(path)
            record = mo.rig_record(choice, prepared.rig.mapping.record(), prepared.rig.mapping.preset,
                                   prepared.camera, prepared.samples, path)
        elif prepared.clip is not None:
            record = mo.clip_record(choice, prepared.clip, len(prepared.samples))
        else:
            record = {"source": "action"}
        if choice.depth:
            maps, near_far = render_depth(context, scene, camera, prepared.samples, width, height)
            folder = mo.depth_folder(reference)
            written += write_depth(folder, maps, width, height)
            written.append(folder)
            record["depth"] = mo.depth_record(choice, folder, prepared.camera, prepared.samples, near_far)
    except BaseException:
        remove_written(written)
        raise
    return record, tuple(written)


def remove_written(paths) -> None:
    """Remove what :func:`write_motion` wrote: its files, then its (then empty) folders."""
    for path in paths:
        path = Path(path)
        with contextlib.suppress(OSError):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# Preview Motion


def preview_frames(prepared: PreparedMotion, depth_maps: list | None, size: tuple[int, int]) -> list[bytearray]:
    """The preview's pictures (RGB rows): the pose map over the depth, or over black."""
    width, height = size
    pictures = []
    for k in range(len(prepared.samples)):
        picture = depth_preview(depth_maps[k]) if depth_maps else black(width, height)
        if prepared.rig is not None:
            picture = draw_pose(prepared.rig.image[k], width, height, picture)
        pictures.append(picture)
    return pictures


def remove_previews(scene, camera_name: str) -> int:
    """The earlier preview planes of ``camera_name`` in ``scene`` (their files stay on disk)."""
    removed = 0
    for obj in [o for o in scene.objects if o.get(PREVIEW_PROPERTY) and o.get("flash_camera") == camera_name]:
        mesh, materials = obj.data, [slot.material for slot in obj.material_slots if slot.material]
        images = [node.image for m in materials if m.node_tree for node in m.node_tree.nodes
                  if node.type == 'TEX_IMAGE' and node.image]
        bpy.data.objects.remove(obj)
        for block, collection in ([(mesh, bpy.data.meshes)] + [(m, bpy.data.materials) for m in materials]
                                  + [(i, bpy.data.images) for i in images]):
            if block is not None and block.users == 0:
                collection.remove(block)
        removed += 1
    return removed


def preview_motion(context, scene, camera, prepared: PreparedMotion, timing: TakeTiming, size: tuple[int, int],
                   root, distance: float) -> tuple[object, Path]:
    """Draw the take's poses (and depth) into a new preview folder under ``root`` and show them
    on a camera plane timed like the take; returns the plane and the folder."""
    if prepared is None or (prepared.rig is None and not prepared.choice.depth):
        raise PlanError("Preview Motion shows a rig's poses or the scene's depth, and this take has neither",
                        f"pick Motion › Rig or turn on Depth from Scene in {mo.PANEL} (a reference clip's "
                        "poses are read by the engine when it animates)")
    width, height = size
    depth_maps = None
    if prepared.choice.depth:
        depth_maps, _ = render_depth(context, scene, camera, prepared.samples, width, height)
    plan = plan_take(root.folder, scene.name, camera.name, PREVIEW_ACTION)
    plan.folder.mkdir(parents=True)  # a new number each time: an earlier preview is never written over
    frames = []
    for k, picture in enumerate(preview_frames(prepared, depth_maps, size)):
        frames.append(str(write_new(plan.folder / PREVIEW_FRAME.format(k), rgb_png(width, height, picture))))
    if prepared.rig is not None:
        write_pose(plan.folder / PREVIEW_POSES, pose_text(prepared.rig.image, width, height, timing.clip_fps))
    remove_previews(scene, camera.name)
    folder = importers.stored_path(plan.folder, root.in_project)
    meta = {"take": plan.name, "camera": camera.name, "folder": folder}
    with importers.nothing_left_on_failure(scene):
        plane = importers.add_plane(scene, camera, frames, importers.stored_path(frames[0], root.in_project),
                                    plan.name, distance, timing, meta)
        plane[PREVIEW_PROPERTY] = True
    return plane, plan.folder
