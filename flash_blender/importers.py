"""Bring a finished take into the scene: a camera plane and/or a sequencer strip."""

from __future__ import annotations

import os
from pathlib import Path

import bpy
from mathutils import Matrix

from .camera_frame import CameraParams, clamp_distance, frame_corners
from .jobs import blend_relative, first_free_channel
from .reference import TAKE_PROPERTY

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


def _tag(id_block, meta: dict) -> None:
    id_block[TAKE_PROPERTY] = meta["take"]
    for key in ("action", "camera", "seed", "prompt", "folder"):
        if key in meta:
            id_block[f"flash_{key}"] = meta[key]


def load_sequence(first_frame: str, stored_path: str, name: str):
    image = bpy.data.images.load(first_frame, check_existing=False)
    image.source = 'SEQUENCE'
    image.name = name
    image.filepath = stored_path
    return image


def unlit_material(name: str, image, frame_count: int, frame_start: int):
    """Emission from the image sequence: the clip's pixels, unaffected by the scene's lights."""
    material = bpy.data.materials.new(name)
    tree = material.node_tree
    tree.nodes.clear()
    texture = tree.nodes.new("ShaderNodeTexImage")
    texture.location = (-500, 0)
    texture.image = image
    texture.extension = 'CLIP'
    user = texture.image_user
    user.frame_duration = frame_count
    user.frame_start = frame_start
    user.frame_offset = 0
    user.use_cyclic = False
    user.use_auto_refresh = True
    emission = tree.nodes.new("ShaderNodeEmission")
    emission.location = (-200, 0)
    emission.inputs["Strength"].default_value = 1.0
    output = tree.nodes.new("ShaderNodeOutputMaterial")
    output.location = (100, 0)
    tree.links.new(texture.outputs["Color"], emission.inputs["Color"])
    tree.links.new(emission.outputs["Emission"], output.inputs["Surface"])
    return material


def add_plane(scene, camera, frames: list[str], stored_first: str, name: str, distance: float,
              frame_start: int, meta: dict):
    """A plane exactly filling ``camera``'s frame at ``distance``, parented to it (it follows the
    camera), showing the frames as an image sequence that starts at ``frame_start``."""
    data = camera.data
    distance = clamp_distance(distance, data.clip_start, data.clip_end)
    corners = frame_corners(camera_params(scene, data), distance)  # TR, BR, BL, TL
    mesh = bpy.data.meshes.new(name)
    # Wound counter-clockwise seen from the camera: the face looks back at it.
    mesh.from_pydata([corners[3], corners[2], corners[1], corners[0]], [], [(0, 1, 2, 3)])
    uv = mesh.uv_layers.new(name="UVMap")
    for loop, coord in zip(mesh.loops, ((0, 1), (0, 0), (1, 0), (1, 1))):
        uv.data[loop.index].uv = coord
    mesh.update()

    image = load_sequence(frames[0], stored_first, name)
    material = unlit_material(name, image, len(frames), frame_start)
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
    return obj


def add_strip(scene, frames: list[str], stored_dir: str, name: str, frame_start: int, meta: dict, context=None):
    """An image strip holding every frame, on the first channel free at ``frame_start``."""
    editor = scene.sequence_editor or scene.sequence_editor_create()
    occupied = [(s.channel, s.frame_final_start, s.frame_final_end) for s in editor.strips]
    channel = first_free_channel(occupied, frame_start, len(frames))
    strip = editor.strips.new_image(name=name, filepath=frames[0], channel=channel, frame_start=frame_start,
                                    fit_method='FIT')
    for frame in frames[1:]:
        strip.elements.append(os.path.basename(frame))
    strip.directory = stored_dir
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
