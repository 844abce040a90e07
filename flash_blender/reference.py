"""Render the active camera's view as the reference frame, then put the user's settings back.

The reference is what the shot's camera sees: whatever timeline markers bound to cameras
say (Blender's render would switch to the marker's camera), and on the world colour also
when Film > Transparent is on (the engine needs the picture, not an alpha cut-out)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import bpy

from .errors import PlanError

# The render settings the reference render changes, restored afterwards in this order
# (media type before file format: the format's choices depend on it).
RENDER_ATTRS = ("engine", "resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x",
                "pixel_aspect_y", "filepath", "use_border", "use_crop_to_border", "use_sequencer",
                "use_file_extension", "film_transparent")
IMAGE_ATTRS = ("media_type", "file_format", "color_mode", "color_depth", "compression")
TAKE_PROPERTY = "flash_take"  # marks the objects a take created


def snapshot(scene) -> dict:
    render = scene.render
    state = {("render", name): getattr(render, name) for name in RENDER_ATTRS if hasattr(render, name)}
    state.update({("image", name): getattr(render.image_settings, name)
                  for name in IMAGE_ATTRS if hasattr(render.image_settings, name)})
    state[("scene", "camera")] = scene.camera
    return state


def restore(scene, state: dict) -> list[str]:
    """Put every value back; returns the names that would not go back (should be none)."""
    failed = []
    targets = {"render": scene.render, "image": scene.render.image_settings, "scene": scene}
    for (where, name), value in state.items():
        try:
            if getattr(targets[where], name) != value:
                setattr(targets[where], name, value)
        except (AttributeError, TypeError, ValueError, ReferenceError):
            failed.append(f"{where}.{name}")
    return failed


@contextlib.contextmanager
def preserved_render_settings(scene):
    state = snapshot(scene)
    try:
        yield state
    finally:
        failed = restore(scene, state)
        if failed:
            print(f"FLASH: could not restore {', '.join(failed)}")


@contextlib.contextmanager
def markers_unbound(scene):
    """A render switches to the camera of the marker at (or before) the frame: unbind the
    markers' cameras meanwhile so the active camera renders; bind them again afterwards.
    (Binding or unbinding a marker lets Blender switch the active camera too: put it back.)"""
    camera = scene.camera
    bound = [(marker, marker.camera) for marker in scene.timeline_markers if marker.camera is not None]
    for marker, _camera in bound:
        marker.camera = None
    if scene.camera != camera:
        scene.camera = camera
    try:
        yield
    finally:
        for marker, bound_camera in bound:
            with contextlib.suppress(ReferenceError):
                marker.camera = bound_camera
        if scene.camera != camera:
            scene.camera = camera


@contextlib.contextmanager
def camera_kept(scene):
    """Put back the current frame, then the active camera (a frame change lets markers bound
    to cameras switch it)."""
    camera, frame, subframe = scene.camera, scene.frame_current, scene.frame_subframe
    try:
        yield
    finally:
        if (scene.frame_current, scene.frame_subframe) != (frame, subframe):
            scene.frame_set(frame, subframe=subframe)
        if scene.camera != camera:
            scene.camera = camera


def fcurves(id_block):
    """The F-curves of ``id_block``'s action (Blender 5: layers > strips > channel bags)."""
    action = id_block.animation_data.action if id_block.animation_data else None
    if action is None:
        return []
    return [fcurve for layer in action.layers for strip in layer.strips for bag in strip.channelbags
            for fcurve in bag.fcurves]


@contextlib.contextmanager
def takes_hidden_from_render(scene):
    """Earlier takes' planes sit in front of the camera: keep them out of the reference.
    A take hidden outside its frames has keyed visibility, which the render would evaluate
    again: those keys are muted for the render and unmuted after."""
    takes = [obj for obj in scene.objects if TAKE_PROPERTY in obj]
    before = [(obj, obj.hide_render) for obj in takes]
    muted = [curve for obj in takes for curve in fcurves(obj)
             if curve.data_path == "hide_render" and not curve.mute]
    for curve in muted:
        curve.mute = True
    for obj in takes:
        obj.hide_render = True
    try:
        yield
    finally:
        for curve in muted:
            with contextlib.suppress(ReferenceError):
                curve.mute = False
        for obj, value in before:
            with contextlib.suppress(ReferenceError):
                obj.hide_render = value


def render_reference(scene, path: Path, width: int, height: int) -> Path:
    """Render ``scene`` from its active camera with its own render engine at ``width`` ×
    ``height`` into a PNG at ``path``. The user's render settings are restored afterwards,
    also when the render fails."""
    if scene.camera is None:
        raise PlanError(f"scene '{scene.name}' has no active camera",
                        "add a camera and make it active: select it and press Ctrl+Numpad 0")
    path = Path(path)
    with preserved_render_settings(scene), takes_hidden_from_render(scene), markers_unbound(scene):
        render = scene.render
        render.film_transparent = False
        render.resolution_x, render.resolution_y = width, height
        render.resolution_percentage = 100
        render.pixel_aspect_x = render.pixel_aspect_y = 1.0
        render.use_border = False
        render.use_sequencer = False  # earlier takes' strips must not replace the camera's view
        settings = render.image_settings
        if hasattr(settings, "media_type"):
            settings.media_type = 'IMAGE'
        settings.file_format = 'PNG'
        settings.color_mode = 'RGB'
        settings.color_depth = '8'
        render.filepath = str(path)
        try:
            result = bpy.ops.render.render(write_still=False, scene=scene.name)
        except RuntimeError as err:
            raise PlanError(f"the reference render failed: {' '.join(str(err).split())}",
                            "check that the scene renders (F12) with its render engine") from None
        if 'FINISHED' not in result:
            raise PlanError("the reference render was cancelled", "render again when Blender is not rendering")
        image = bpy.data.images.get("Render Result")
        if image is None:
            raise PlanError("the reference render produced no image", "check that the scene renders (F12)")
        image.save_render(filepath=str(path), scene=scene)
    if not path.is_file() or path.stat().st_size == 0:
        raise PlanError(f"the reference frame was not written to {path}", "check that the folder is writable")
    return path
