"""Bring a finished take into the scene: a camera plane and/or a sequencer strip, from the
files the engine says it wrote (``takes.TakeResult``)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import bpy
from mathutils import Matrix

from .camera_frame import CameraParams, clamp_distance, frame_corners, frame_fit
from .display import frame_colorspace
from .take_planning import blend_relative, first_free_channel
from .errors import PlanError
from .reference import TAKE_PROPERTY, camera_kept, fcurves
from .takes import Take, TakeResult
from .timing import HIDE, HOLD, TakeTiming, scene_fps

COLLECTION_NAME = "FLASH"
COLLECTION_PROPERTY = "flash_results"


def camera_params(scene, camera_data) -> CameraParams:
    render = scene.render
    return CameraParams(
        type=camera_data.type, lens=camera_data.lens, sensor_width=camera_data.sensor_width,
        sensor_height=camera_data.sensor_height, sensor_fit=camera_data.sensor_fit,
        shift_x=camera_data.shift_x, shift_y=camera_data.shift_y, ortho_scale=camera_data.ortho_scale,
        resolution_x=render.resolution_x, resolution_y=render.resolution_y,
        pixel_aspect_x=render.pixel_aspect_x, pixel_aspect_y=render.pixel_aspect_y,
    )


def results_collection(scene):
    """The scene's "FLASH" collection (created and linked on first use)."""
    for child in scene.collection.children:
        if child.get(COLLECTION_PROPERTY):
            return child
    collection = bpy.data.collections.new(COLLECTION_NAME)
    collection[COLLECTION_PROPERTY] = True
    scene.collection.children.link(collection)
    return collection


BLENDER_INT = range(-2**31, 2**31)  # what an ID property stores as a number


def _tag(id_block, meta: dict) -> None:
    id_block[TAKE_PROPERTY] = meta["take"]
    for key in ("action", "camera", "seed", "prompt", "folder"):
        if key in meta:
            value = meta[key]
            if isinstance(value, int) and value not in BLENDER_INT:  # a 64-bit seed: kept whole, as text
                value = str(value)
            id_block[f"flash_{key}"] = value


@contextlib.contextmanager
def nothing_left_on_failure(scene):
    """A take imports whole or not at all: what a failed import made (objects, meshes,
    materials, images, strips) is removed again, so nothing looks like a finished take."""
    collections = (bpy.data.objects, bpy.data.meshes, bpy.data.materials, bpy.data.images)
    before = [set(collection) for collection in collections]
    editor = scene.sequence_editor
    strips_before = set(editor.strips_all) if editor is not None else set()
    try:
        yield
    except BaseException:
        editor = scene.sequence_editor
        if editor is not None:
            for strip in [s for s in editor.strips_all if s not in strips_before]:
                with contextlib.suppress(ReferenceError, RuntimeError):
                    editor.strips.remove(strip)
        for collection, existing in zip(collections, before):
            for block in [b for b in collection if b not in existing]:
                with contextlib.suppress(ReferenceError, RuntimeError):
                    collection.remove(block)
        raise


def colorspace_for(scene) -> str:
    """The colourspace that makes ``scene``'s view transform show the frames' own values."""
    names = bpy.types.ColorManagedInputColorspaceSettings.bl_rna.properties["name"].enum_items.keys()
    return frame_colorspace(scene.display_settings.display_device, scene.view_settings.view_transform, names)


def sync_colorspaces(scene) -> int:
    """Give the takes' images and strips the colourspace of ``scene``'s current view transform
    (the view can change after a take was imported). Returns how many changed."""
    wanted, changed = colorspace_for(scene), 0
    takes = [image for image in bpy.data.images if TAKE_PROPERTY in image]
    if scene.sequence_editor:
        takes += [strip for strip in scene.sequence_editor.strips if TAKE_PROPERTY in strip]
    for take in takes:
        if getattr(take, "library", None) is not None:  # linked from another file: not ours to change
            continue
        settings = take.colorspace_settings
        if settings.name != wanted:
            settings.name = wanted
            changed += 1
    return changed


def show_textures_in_solid(scene) -> bool:
    """Solid shading and Workbench renders colour objects by their material's viewport
    colour unless set to Texture, which shows the plane's image (and, for objects without
    one, the same material colour). Switches the default Material colouring; a colouring
    the user picked stays. Returns whether anything changed."""
    changed = False
    shadings = [scene.display.shading]
    shadings += [space.shading for screen in bpy.data.screens for area in screen.areas
                 for space in area.spaces if space.type == 'VIEW_3D']
    for shading in shadings:
        if shading.color_type == 'MATERIAL':
            shading.color_type = 'TEXTURE'
            changed = True
    return changed


def _interpolate(id_block, paths: tuple[str, ...], mode: str) -> None:
    for fcurve in fcurves(id_block):
        if fcurve.data_path.endswith(paths):
            for key in fcurve.keyframe_points:
                key.interpolation = mode


def load_sequence(first_frame: str, stored_path: str, name: str):
    image = bpy.data.images.load(first_frame, check_existing=False)
    image.source = 'SEQUENCE'
    image.name = name
    image.filepath = stored_path
    image[TAKE_PROPERTY] = name  # for sync_colorspaces
    return image


def unlit_material(name: str, image, timing: TakeTiming):
    """Emission from the image sequence: the clip's pixels, unaffected by the scene's lights,
    each clip frame on the scene frames ``timing`` gives it (the first and last held outside)."""
    material = bpy.data.materials.new(name)
    tree = material.node_tree
    tree.nodes.clear()
    texture = tree.nodes.new("ShaderNodeTexImage")
    texture.location = (-500, 0)
    texture.image = image
    texture.extension = 'CLIP'
    user = texture.image_user
    user.frame_duration = timing.clip_frames
    user.frame_start = timing.frame_start
    user.use_cyclic = False
    user.use_auto_refresh = True
    path = f'nodes["{texture.name}"].image_user.frame_offset'
    for frame, offset in timing.offset_keys():
        user.frame_offset = offset
        tree.keyframe_insert(path, frame=frame)
    _interpolate(tree, ("frame_offset",), 'CONSTANT')
    tree.nodes.active = texture  # what Texture colouring in Solid/Workbench shows
    material.roughness = 1.0  # Workbench: no studio highlight over the picture
    emission = tree.nodes.new("ShaderNodeEmission")
    emission.location = (-200, 0)
    emission.inputs["Strength"].default_value = 1.0
    output = tree.nodes.new("ShaderNodeOutputMaterial")
    output.location = (100, 0)
    tree.links.new(texture.outputs["Color"], emission.inputs["Color"])
    tree.links.new(emission.outputs["Emission"], output.inputs["Surface"])
    return material


def hide_outside(obj, timing: TakeTiming) -> None:
    """Visible (render and viewport) only over the take's scene frames."""
    for frame, hidden in ((timing.frame_start - 1, True), (timing.frame_start, False), (timing.frame_end, False),
                          (timing.frame_end + 1, True)):
        obj.hide_render = obj.hide_viewport = hidden
        obj.keyframe_insert("hide_render", frame=frame)
        obj.keyframe_insert("hide_viewport", frame=frame)
    _interpolate(obj, ("hide_render", "hide_viewport"), 'CONSTANT')
    obj.hide_render = obj.hide_viewport = False


def follow_camera(scene, camera, obj, base: CameraParams, distance: float, timing: TakeTiming) -> bool:
    """When the camera's lens, shift or sensor is animated over the take, key the plane's
    scale and location on each of its scene frames so it keeps filling the frame. Returns
    whether it keyed anything. The current frame and active camera are put back."""
    if camera.data.animation_data is None:
        return False
    fits = {}
    with camera_kept(scene):
        for frame in range(timing.frame_start, timing.frame_end + 1):
            scene.frame_set(frame)
            fits[frame] = frame_fit(base, camera_params(scene, camera.data), distance)
    if all(all(abs(a - b) < 1e-9 for a, b in zip(fit, (1.0, 1.0, 0.0, 0.0))) for fit in fits.values()):
        return False
    for frame, (scale_x, scale_y, offset_x, offset_y) in fits.items():
        obj.scale = (scale_x, scale_y, 1.0)
        obj.location = (offset_x, offset_y, 0.0)
        obj.keyframe_insert("scale", frame=frame)
        obj.keyframe_insert("location", frame=frame)
    _interpolate(obj, ("scale", "location"), 'LINEAR')
    return True


def add_plane(scene, camera, frames: list[str], stored_first: str, name: str, distance: float,
              timing: TakeTiming, meta: dict, outside: str = HOLD):
    """A plane exactly filling ``camera``'s frame at ``distance``, parented to it (it follows the
    camera, and its zoom over the take), showing the frames as an image sequence timed by
    ``timing``; outside the take it holds the first/last frame or (``outside`` HIDE) is hidden."""
    data = camera.data
    distance = clamp_distance(distance, data.clip_start, data.clip_end)
    base = camera_params(scene, data)
    corners = frame_corners(base, distance)  # TR, BR, BL, TL
    mesh = bpy.data.meshes.new(name)
    # Wound counter-clockwise seen from the camera: the face looks back at it.
    mesh.from_pydata([corners[3], corners[2], corners[1], corners[0]], [], [(0, 1, 2, 3)])
    uv = mesh.uv_layers.new(name="UVMap")
    for loop, coord in zip(mesh.loops, ((0, 1), (0, 0), (1, 0), (1, 1))):
        uv.data[loop.index].uv = coord
    mesh.update()

    image = load_sequence(frames[0], stored_first, name)
    image.colorspace_settings.name = colorspace_for(scene)
    material = unlit_material(name, image, timing)
    mesh.materials.append(material)

    obj = bpy.data.objects.new(name, mesh)
    results_collection(scene).objects.link(obj)
    obj.parent = camera
    # The corners are in unscaled camera space: cancel a scale on the camera object.
    scale = camera.matrix_world.to_scale()
    if all(abs(s) > 1e-9 for s in scale):
        obj.matrix_parent_inverse = Matrix.Diagonal((1 / scale.x, 1 / scale.y, 1 / scale.z, 1.0))
    for ray in ("visible_diffuse", "visible_glossy", "visible_transmission", "visible_volume_scatter",
                "visible_shadow"):
        if hasattr(obj, ray):
            setattr(obj, ray, False)  # seen by the camera only: it neither lights nor shadows the set
    _tag(obj, {**meta, "distance": distance})
    obj["flash_distance"] = distance
    obj["flash_clip_fps"] = timing.clip_fps
    obj["flash_outside"] = outside
    if outside == HIDE:
        hide_outside(obj, timing)
    follow_camera(scene, camera, obj, base, distance, timing)
    return obj


def add_strip(scene, frames: list[str], stored_dir: str, name: str, timing: TakeTiming, meta: dict, context=None):
    """An image strip playing the frames as ``timing`` says (each element one scene frame, so a
    clip frame held for three scene frames is three elements), on the first channel free."""
    editor = scene.sequence_editor or scene.sequence_editor_create()
    occupied = [(s.channel, s.frame_final_start, s.frame_final_end) for s in editor.strips]
    channel = first_free_channel(occupied, timing.frame_start, timing.scene_frames)
    order = timing.sequence()
    # STRETCH: the clip has the camera's display aspect, so filling the render's pixels is
    # exact also at a non-square pixel aspect (FIT would keep the clip's pixels square).
    strip = editor.strips.new_image(name=name, filepath=frames[order[0]], channel=channel,
                                    frame_start=timing.frame_start, fit_method='STRETCH')
    for index in order[1:]:
        strip.elements.append(os.path.basename(frames[index]))
    strip.directory = stored_dir
    strip.colorspace_settings.name = colorspace_for(scene)
    _tag(strip, meta)
    shown_elsewhere = None
    workspace = getattr(context or bpy.context, "workspace", None)
    if workspace is not None and hasattr(workspace, "sequencer_scene") and workspace.sequencer_scene != scene:
        shown_elsewhere = workspace.sequencer_scene
        workspace.sequencer_scene = scene  # Blender 5: the sequencer shows its own scene, per workspace
    return strip, shown_elsewhere


def stored_path(path: str | Path, in_project: bool) -> str:
    """How Blender should store a path: ``//``-relative inside the project, else absolute."""
    return blend_relative(Path(path), bpy.data.filepath) if in_project else str(path)


def import_take(context, take: Take, result: TakeResult) -> tuple[str, list[str]]:
    """The take's plane and/or strip in its scene, as ``take.output`` asks. Returns the
    summary line and notes for the user (a camera gone, shading or sequencer changed)."""
    scene = bpy.data.scenes.get(take.scene)
    if scene is None:
        raise PlanError(f"scene '{take.scene}' is gone", "the frames are on disk: import them by hand")
    frames = [str(frame) for frame in result.frames]
    folder = stored_path(result.folder, take.in_project)
    name, made, notes = take.name, [], []
    tags = take.tags(folder)
    render = scene.render
    timing = TakeTiming(frame_start=take.frame_start, clip_frames=len(frames), clip_fps=result.fps,
                        scene_fps=scene_fps(render.fps, render.fps_base))
    with nothing_left_on_failure(scene):
        _add_outputs(context, scene, take, frames, folder, timing, tags, made, notes)
    base = " (base model only)" if take.base_model_only else ""
    message = (f"{name}: {timing.describe()}{base}, scene frames {timing.frame_start}-{timing.frame_end}, "
               f"as {' and '.join(made) or 'files only'}, in {folder}")
    return message, notes


def _add_outputs(context, scene, take: Take, frames: list[str], folder: str, timing: TakeTiming, tags: dict,
                 made: list[str], notes: list[str]) -> None:
    name = take.name
    if take.output in ('PLANE', 'BOTH'):
        camera = bpy.data.objects.get(take.camera)
        if camera is None or camera.type != 'CAMERA':
            notes.append(f"camera '{take.camera}' is gone: no plane for {name}")
        else:
            add_plane(scene, camera, frames, stored_path(frames[0], take.in_project), name, take.distance, timing,
                      tags, outside=take.outside)
            made.append("plane")
            if show_textures_in_solid(scene):
                notes.append("Solid shading now colours by Texture, so the take shows in the viewport and Workbench")
    if take.output in ('VSE', 'BOTH'):
        _, shown_elsewhere = add_strip(scene, frames, folder.rstrip("/\\") + "/", name, timing, tags, context)
        made.append("strip")
        if shown_elsewhere is not None:
            notes.append(f"the sequencer now shows scene '{scene.name}' (it showed '{shown_elsewhere.name}')")
