"""Motion from the scene, in Blender: the rig's pose and the shot's depth on each take frame,
the reference clip's length, and the files the engine gets.

The logic is pure Python beside this module (``rig_pose``, ``camera_project``, ``motion``,
``pose_maps``, ``pose_file``); here only what needs Blender:

- :func:`read_rig` sets each of the take's sample frames (``TakeTiming.sample_frames``) and
  reads the armature's *evaluated* pose (constraints, drivers, NLA) and the camera's evaluated
  lens, shift and placement, then puts the frame and the active camera back; a joint the set
  hides from the camera (a ray cast meets something that renders and is not the character)
  gets a low confidence;
- :func:`render_depth` renders the camera's depth along the view axis on those frames with
  Cycles (one sample, every surface an emission of its depth, into float EXRs in a temporary
  folder), normalises it over the take and writes 16-bit PNGs; every setting it changes (render,
  Cycles, view layers, markers, earlier takes' planes) is put back, also when it fails;
- :func:`clip_info` asks Blender's movie reader how many frames a video has.

Nothing here starts the engine; ``animate_take`` and ``operators/motion`` call it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from . import motion as mo
from .camera_project import OCCLUDED, image_point, view_ray
from .errors import PlanError
from .importers import camera_params
from .pose_maps import normalise_depth
from .png_files import grey16_png, write_new
from .reference import (TAKE_PROPERTY, camera_kept, markers_unbound, preserved_render_settings,
                        takes_hidden_from_render)
from .rig_pose import Mapping, bones_needed, resolve, world_points

DEPTH_MATERIAL = "FLASH depth pass"
DEPTH_OUTPUT = "View Z Depth"  # ShaderNodeCameraData: distance along the view axis, as depth maps have it
COVERED = 0.5  # alpha above which a depth pixel hit something
MAX_SURFACES = 16  # the character's own surfaces a ray may pass through before it meets the set
RAY_STEP = 1e-4  # how far past a surface a continued ray starts (scene units)


# ---------------------------------------------------------------------------------------
# The rig


def find_rig(scene, choice: mo.MotionChoice):
    """The armature object ``choice.rig`` names, or PlanError with the fix."""
    obj = bpy.data.objects.get(choice.rig) if choice.rig else None
    mo.check_rig_picked(choice, obj.type if obj is not None else None)
    if scene.objects.get(obj.name) is None:
        raise PlanError(f"the rig '{obj.name}' is not in scene '{scene.name}'", mo.RIG_FIX)
    return obj


def rig_mapping(armature, choice: mo.MotionChoice) -> Mapping:
    return resolve(armature.name, armature.data.bones.keys(), choice.bones)


def _depsgraph(context, scene):
    if context.scene != scene:  # the batch overrides the context's scene for each shot
        raise RuntimeError(f"the context shows scene '{context.scene.name}', not '{scene.name}'")
    return context.evaluated_depsgraph_get()


def character_objects(scene, armature) -> set[str]:
    """The objects that are the rig's character (deformed by it, or parented under it): they
    do not hide its joints, which sit inside them. Neither do takes' and previews' planes."""
    def under_rig(obj) -> bool:
        parent = obj.parent
        while parent is not None:
            if parent == armature:
                return True
            parent = parent.parent
        return False

    skip = {armature.name}
    for obj in scene.objects:
        deformed = any(m.type == 'ARMATURE' and m.object == armature for m in getattr(obj, "modifiers", ()))
        if deformed or under_rig(obj) or TAKE_PROPERTY in obj or obj.hide_render:
            skip.add(obj.name)
    return skip


def occluded(scene, depsgraph, origin, direction, distance: float, skip: set[str]) -> bool:
    """Whether something that renders, other than ``skip``, lies on the ray before ``distance``."""
    from mathutils import Vector

    start, direction, travelled = Vector(origin), Vector(direction), 0.0
    for _ in range(MAX_SURFACES):
        left = distance - travelled - RAY_STEP
        if left <= 0:
            return False
        hit, location, _normal, _index, obj, _matrix = scene.ray_cast(depsgraph, start, direction, distance=left)
        if not hit:
            return False
        if obj is not None and obj.original.name not in skip:
            return True
        moved = (location - start).length + RAY_STEP
        travelled += moved
        start = start + direction * moved
    return False


@dataclass
class RigRead:
    """A rig read through a camera on the take's sample frames."""

    mapping: Mapping
    samples: list  # (scene frame, subframe) per take frame
    world: list = field(default_factory=list)  # per frame, 18 world points (None: not given)
    image: list = field(default_factory=list)  # per frame, 18 (x, y down, confidence)


def read_rig(context, scene, camera, armature, mapping: Mapping, samples: list) -> RigRead:
    """The mapped points on every sample frame, in world space and in ``camera``'s picture.
    The scene's frame and active camera are as they were afterwards."""
    read = RigRead(mapping=mapping, samples=list(samples))
    names = bones_needed(mapping)
    skip = character_objects(scene, armature)
    with camera_kept(scene):
        for frame, subframe in samples:
            scene.frame_set(frame, subframe=subframe)
            depsgraph = _depsgraph(context, scene)
            rig = armature.evaluated_get(depsgraph)
            to_world = rig.matrix_world
            bones = {}
            for name in names:
                bone = rig.pose.bones.get(name)
                if bone is not None:
                    bones[name] = (tuple(to_world @ bone.head), tuple(to_world @ bone.tail))
            points = world_points(mapping, bones)
            shot = camera.evaluated_get(depsgraph)
            params = camera_params(scene, shot.data)
            matrix = tuple(tuple(row) for row in shot.matrix_world)
            clip = (shot.data.clip_start, shot.data.clip_end)
            image = []
            for point in points:
                x, y, confidence = image_point(params, matrix, point, clip)
                if confidence > 0 and occluded(scene, depsgraph, *view_ray(params, matrix, point), skip):
                    confidence = OCCLUDED
                image.append((x, y, confidence))
            read.world.append(points)
            read.image.append(image)
    return read


# ---------------------------------------------------------------------------------------
# The reference clip

_clip_infos: dict = {}


def forget_clip_info() -> None:
    _clip_infos.clear()


def _clip_key(path: str):
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (path, stat.st_mtime_ns, stat.st_size)


def clip_info(path: str) -> mo.ClipInfo:
    """How many frames Blender's movie reader finds in ``path`` (0: not a video it reads).
    The movie clip it opens for that is removed again."""
    key = _clip_key(path)
    if key in _clip_infos:
        return _clip_infos[key]
    try:
        clip = bpy.data.movieclips.load(path, check_existing=False)
    except RuntimeError:
        info = mo.ClipInfo(0)
    else:
        try:
            frames = clip.frame_duration if clip.source == 'MOVIE' else 0
            info = mo.ClipInfo(int(frames), float(clip.fps or 0.0))
        finally:
            bpy.data.movieclips.remove(clip)
    if key is not None:
        _clip_infos[key] = info
    return info


def known_clip_info(path: str) -> mo.ClipInfo | None:
    """What :func:`clip_info` found before (the panel may not open files while it draws)."""
    return _clip_infos.get(_clip_key(path))


def read_clip(choice: mo.MotionChoice) -> mo.ClipInfo:
    mo.check_clip_path(choice.clip)
    info = clip_info(choice.clip)
    mo.check_clip(choice.clip, info, choice.clip_start)
    return info


# ---------------------------------------------------------------------------------------
# Depth


@contextlib.contextmanager
def settings_changed(changes: list):
    """Set ``(owner, attribute, value)`` for the block, then put every old value back (in
    reverse order), also when the block fails."""
    done = []
    try:
        for owner, name, value in changes:
            if owner is None or not hasattr(owner, name):
                continue
            done.append((owner, name, getattr(owner, name)))
            if getattr(owner, name) != value:
                setattr(owner, name, value)
        yield
    finally:
        for owner, name, old in reversed(done):
            with contextlib.suppress(AttributeError, TypeError, ValueError, ReferenceError):
                if getattr(owner, name) != old:
                    setattr(owner, name, old)


def _depth_material():
    material = bpy.data.materials.new(DEPTH_MATERIAL)
    material.use_nodes = True
    tree = material.node_tree
    tree.nodes.clear()
    data = tree.nodes.new("ShaderNodeCameraData")
    emission = tree.nodes.new("ShaderNodeEmission")
    emission.inputs["Strength"].default_value = 1.0
    output = tree.nodes.new("ShaderNodeOutputMaterial")
    tree.links.new(data.outputs[DEPTH_OUTPUT], emission.inputs["Color"])
    tree.links.new(emission.outputs["Emission"], output.inputs["Surface"])
    return material


def _depth_changes(scene, material) -> list:
    """Everything the depth pass sets (render.py's reference settings come on top): each
    surface emits its depth, seen once, unclamped, unfiltered, uncomposited."""
    render, cycles = scene.render, getattr(scene, "cycles", None)
    changes = [(render, "use_compositing", False), (render, "use_motion_blur", False),
               (render, "use_freestyle", False), (render, "use_border", False)]
    changes += [(cycles, name, value) for name, value in (
        ("samples", 1), ("use_adaptive_sampling", False), ("use_denoising", False), ("film_exposure", 1.0),
        ("pixel_filter_type", 'BOX'), ("filter_width", 1.0), ("sample_clamp_direct", 0.0),
        ("sample_clamp_indirect", 0.0))]
    for layer in scene.view_layers:
        changes += [(layer, "material_override", material), (layer, "samples", 0)]
    return changes


def _read_exr(path: Path) -> tuple[list, list]:
    """(depth, covered) of a depth EXR, row-major with row 0 at the top."""
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        width, height = image.size
        pixels = array("f", bytes(4 * width * height * 4))
        image.pixels.foreach_get(pixels)
    finally:
        bpy.data.images.remove(image)
    depth, covered = [], []
    for y in range(height - 1, -1, -1):  # Blender's rows start at the bottom
        for start in range(y * width * 4, (y + 1) * width * 4, 4):
            alpha = pixels[start + 3]
            hit = alpha > COVERED
            covered.append(hit)
            depth.append(pixels[start] / alpha if hit else 0.0)  # the colour is premultiplied
    return depth, covered


def render_depth(context, scene, camera, samples: list, width: int, height: int) -> tuple[list, tuple | None]:
    """Depth maps (16-bit, near = bright) of ``camera`` on each sample frame at ``width`` ×
    ``height``, and the take's (near, far) in scene units (None: it saw nothing). Renders with
    Cycles; the user's settings, frame, active camera and markers are as they were afterwards."""
    material = _depth_material()
    depths, masks = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="flash-depth-") as folder:
            paths = []
            with camera_kept(scene), preserved_render_settings(scene), takes_hidden_from_render(scene), \
                    markers_unbound(scene), settings_changed(_depth_changes(scene, material)):
                render = scene.render
                render.engine = 'CYCLES'
                render.film_transparent = True  # the background is "nothing", not a depth
                render.resolution_x, render.resolution_y = width, height
                render.resolution_percentage = 100
                render.pixel_aspect_x = render.pixel_aspect_y = 1.0
                render.use_sequencer = False
                settings = render.image_settings
                if hasattr(settings, "media_type"):
                    settings.media_type = 'IMAGE'
                settings.file_format = 'OPEN_EXR'
                settings.color_mode = 'RGBA'
                settings.color_depth = '32'
                for index, (frame, subframe) in enumerate(samples):
                    scene.frame_set(frame, subframe=subframe)
                    scene.camera = camera
                    try:
                        result = bpy.ops.render.render(write_still=False, scene=scene.name)
                    except RuntimeError as err:
                        raise PlanError(f"the depth pass failed: {' '.join(str(err).split())}",
                                        "check that the scene renders with Cycles, or turn Depth from Scene off") \
                            from None
                    if 'FINISHED' not in result:
                        raise PlanError("the depth pass was cancelled", "animate again when Blender is not rendering")
                    path = Path(folder) / f"depth_{index:04d}.exr"
                    bpy.data.images["Render Result"].save_render(filepath=str(path), scene=scene)
                    paths.append(path)
            for path in paths:
                depth, covered = _read_exr(path)
                depths.append(depth)
                masks.append(covered)
    finally:
        bpy.data.materials.remove(material)
    seen = [d for depth, mask in zip(depths, masks) for d, hit in zip(depth, mask) if hit]
    near_far = (min(seen), max(seen)) if seen else None
    return normalise_depth(depths, masks), near_far


def write_depth(folder: Path, maps: list, width: int, height: int) -> list[Path]:
    """The take's depth folder (new: an existing one is never written into) with one PNG a frame."""
    folder = Path(folder)
    try:
        folder.mkdir()
    except FileExistsError:
        raise PlanError(f"{folder.name} already exists", "run again: the take gets the next number") from None
    try:
        return [write_new(folder / mo.DEPTH_FRAME.format(k), grey16_png(width, height, depth_map))
                for k, depth_map in enumerate(maps)]
    except BaseException:
        remove_depth(folder, len(maps))
        raise


def remove_depth(folder: Path, frames: int) -> None:
    """Remove a depth folder this add-on wrote: only its frame files, then the folder if empty."""
    folder = Path(folder)
    for k in range(frames):
        (folder / mo.DEPTH_FRAME.format(k)).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()
