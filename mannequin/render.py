"""Render clip specs with Blender (the bpy wheel, background mode) and its Workbench engine.

One scene is built once per process (:func:`renderer`) and kept: a mannequin of 13 rigid
segments (ellipsoids and tapered capsules made with bmesh), a floor disc, a camera and a
world colour. A clip only changes object colours, the camera, the light and, per frame, the
segments' world matrices (from :func:`mannequin.actions.forward_kinematics`), then renders.

Workbench is the engine because it is the one that is fast headless: it draws with Blender's
OpenGL backend (software EGL here) in ~10–15 ms a frame (drawn at 128×128 with shadows). EEVEE needs the same backend
but compiles its shaders in software (tens of seconds a frame here) and Cycles is slower and
noisy at few samples; see ``mannequin/README.md`` for the measurements.

Frames come back through PNG files in a private temporary folder (under ``/dev/shm`` where
there is one): Blender's Render Result has no readable pixels from Python.

The scene is a separate ``bpy.data`` scene ("FlashMannequin"); nothing in the user's or
another caller's scenes is touched, and no factory reset is done.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mannequin import actions as A
from mannequin.camera import (FIELD_OF_VIEW, HEAD_ELLIPSOID_CENTRE, HEAD_ELLIPSOID_RADII, NEAR_CLIP, camera_matrix,
                              figure_transforms)
from mannequin.spec import ClipSpec

SCENE_NAME = "FlashMannequin"
FLOOR_RADIUS = 2.6
RIGHT_SIDE_SHADE = 0.8    # right-side limbs are a little darker than the left ones
FEET_SHADE = 0.55
AMBIENT = 0.32            # studio-light ambient (fixed: Blender's API has it read-only)
KEY_DIFFUSE = 0.95        # key light, times the spec's light_energy
KEY_SPECULAR = 0.12
FILL_DIFFUSE = 0.22
FILL_ELEVATION = 15.0
SHADOW_INTENSITY = 0.6
SUPERSAMPLE = 2           # frames are drawn at 2× the size without AA, then box-filtered down


def srgb_to_linear(c):
    c = np.asarray(c, dtype=float)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


# -- meshes ----------------------------------------------------------------------------------------

def _add_ellipsoid(bm, bmesh, radii, centre, segments=16, rings=10):
    result = bmesh.ops.create_uvsphere(bm, u_segments=segments, v_segments=rings, radius=1.0)
    for vert in result["verts"]:
        vert.co.x = vert.co.x * radii[0] + centre[0]
        vert.co.y = vert.co.y * radii[1] + centre[1]
        vert.co.z = vert.co.z * radii[2] + centre[2]


def _add_capsule(bm, bmesh, length, r_top, r_bottom, segments=14, rings=10):
    """A capsule from z = 0 (radius r_top) down to z = -length (radius r_bottom)."""
    result = bmesh.ops.create_uvsphere(bm, u_segments=segments, v_segments=rings, radius=1.0)
    for vert in result["verts"]:
        x, y, z = vert.co
        if z >= 0:
            vert.co.x, vert.co.y, vert.co.z = x * r_top, y * r_top, z * r_top
        else:
            vert.co.x, vert.co.y, vert.co.z = x * r_bottom, y * r_bottom, z * r_bottom - length


def _segment_shapes():
    """Segment name -> list of ("ellipsoid", radii, centre) / ("capsule", length, r_top, r_bottom)."""
    foot_len = A.FOOT_TOE + A.FOOT_HEEL
    foot = [("ellipsoid", (0.055, foot_len / 2 + 0.01, 0.045),
             (0.0, (A.FOOT_HEEL - A.FOOT_TOE) / 2, -A.FOOT_SOLE + 0.045))]
    shapes = {
        "pelvis": [("ellipsoid", (0.165, 0.11, 0.12), (0.0, 0.0, 0.0))],
        "torso": [("ellipsoid", (0.205, 0.125, 0.19), (0.0, 0.0, 0.27)),
                  ("ellipsoid", (0.15, 0.105, 0.14), (0.0, 0.0, 0.08))],
        "head": [("ellipsoid", (0.05, 0.05, 0.09), (0.0, 0.0, 0.02)),
                 ("ellipsoid", HEAD_ELLIPSOID_RADII, HEAD_ELLIPSOID_CENTRE)],
        "upper_arm": [("capsule", A.UPPER_ARM, 0.07, 0.058)],
        "forearm": [("capsule", A.FOREARM, 0.058, 0.048),
                    ("ellipsoid", (0.06, 0.05, 0.07), (0.0, 0.0, -A.FOREARM - 0.05))],
        "thigh": [("capsule", A.THIGH, 0.095, 0.072)],
        "shin": [("capsule", A.SHIN, 0.07, 0.056)],
        "foot": foot,
    }
    out = {}
    for name in A.SEGMENTS:
        key = name[2:] if name[:2] in ("l_", "r_") else name
        out[name] = shapes[key]
    return out


def _segment_colour(name: str, spec: ClipSpec):
    part = {"head": "head", "torso": "torso", "pelvis": "legs"}.get(name)
    if part is None:
        part = "arms" if "arm" in name else "legs"
    rgb = np.asarray(spec.body_colours[part], dtype=float)
    if name.endswith("foot"):
        rgb = rgb * FEET_SHADE
    elif name == "pelvis":
        rgb = rgb * 0.9
    if name.startswith("r_"):
        rgb = rgb * RIGHT_SIDE_SHADE
    return rgb


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter an (H·f, W·f, 3) uint8 image down by ``factor`` (rounded, deterministic)."""
    if factor == 1:
        return image
    height, width = image.shape[0] // factor, image.shape[1] // factor
    blocks = image.reshape(height, factor, width, factor, 3).astype(np.uint32).sum(axis=(1, 3))
    return ((blocks + factor * factor // 2) // (factor * factor)).astype(np.uint8)


def light_vector(azimuth: float, elevation: float) -> np.ndarray:
    """Unit vector towards a light at (azimuth, elevation), azimuth measured like the camera's."""
    az, el = math.radians(azimuth), math.radians(elevation)
    return np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])


def _to_studio_space(world) -> tuple[float, float, float]:
    """World direction → the frame Workbench's world-space studio lights and shadows use.

    Measured: a studio light vector (x, y, z) lights world (x, -z, y) (y is up, z is "front").
    """
    x, y, z = (float(v) for v in world)
    return (x, z, -y)


@contextlib.contextmanager
def _quiet():
    """Silence Blender's C-level chatter during a render: the per-frame "Fra:/Saved:" lines
    and, on the first render, the EGL probing messages. Python exceptions are unaffected."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
    except (OSError, ValueError, AttributeError):   # no real stdout/stderr: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _private_tmp() -> Path:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="flash-mannequin-", dir=base))


def _load_studio_light(bpy, folder: Path):
    """A studio light of our own (ambient + 4 lights, the last two off), edited per clip."""
    lines = ["version 1"] + [f"light_ambient.{c} {AMBIENT:.6f}" for c in "xyz"]
    for index in range(4):
        lines += [f"light[{index}].flag {1 if index < 2 else 0}", f"light[{index}].smooth 0.25"]
        lines += [f"light[{index}].{key}.{c} 0.000000" for key in ("col", "spec") for c in "xyz"]
        lines += [f"light[{index}].vec.x 0.000000", f"light[{index}].vec.y 1.000000", f"light[{index}].vec.z 0.000000"]
    path = folder / f"{folder.name}.sl"   # a unique name: the scene selects its light by name
    path.write_text("\n".join(lines) + "\n")
    return bpy.context.preferences.studio_lights.load(str(path), "STUDIO")


# -- the renderer ----------------------------------------------------------------------------------

class Renderer:
    """One Blender scene, kept alive; :meth:`render` draws a spec's frames."""

    def __init__(self):
        import bpy  # noqa: I001 - bpy first: it makes bmesh importable
        import bmesh

        self.bpy = bpy
        self._lock = threading.Lock()
        old = bpy.data.scenes.get(SCENE_NAME)
        if old is not None:
            bpy.data.scenes.remove(old)
        scene = bpy.data.scenes.new(SCENE_NAME)
        self.scene = scene
        render = scene.render
        render.engine = "BLENDER_WORKBENCH"
        render.resolution_percentage = 100
        render.film_transparent = False
        render.dither_intensity = 0.0
        render.use_compositing = False
        render.use_sequencer = False
        scene.display.render_aa = "OFF"
        shading = scene.display.shading
        shading.light = "STUDIO"
        self.tmp = _private_tmp()
        self.studio_light = _load_studio_light(bpy, self.tmp)
        shading.studio_light = self.studio_light.name
        shading.studiolight_rotate_z = 0.0
        shading.color_type = "OBJECT"
        shading.use_world_space_lighting = True
        shading.shadow_intensity = SHADOW_INTENSITY
        self._output("colour")
        shading.show_cavity = False
        shading.show_specular_highlight = True
        shading.show_object_outline = False
        scene.view_settings.view_transform = "Standard"
        scene.view_settings.look = "None"
        scene.view_settings.exposure = 0.0
        scene.view_settings.gamma = 1.0
        scene.world = bpy.data.worlds.new(SCENE_NAME)

        self.objects = {}
        for name, shapes in _segment_shapes().items():
            bm = bmesh.new()
            for shape in shapes:
                if shape[0] == "ellipsoid":
                    _add_ellipsoid(bm, bmesh, shape[1], shape[2])
                else:
                    _add_capsule(bm, bmesh, *shape[1:])
            for face in bm.faces:
                face.smooth = True
            mesh = bpy.data.meshes.new(f"{SCENE_NAME}.{name}")
            bm.to_mesh(mesh)
            bm.free()
            obj = bpy.data.objects.new(f"{SCENE_NAME}.{name}", mesh)
            scene.collection.objects.link(obj)
            self.objects[name] = obj

        bm = bmesh.new()
        bmesh.ops.create_circle(bm, cap_ends=True, segments=64, radius=FLOOR_RADIUS)
        floor_mesh = bpy.data.meshes.new(f"{SCENE_NAME}.floor")
        bm.to_mesh(floor_mesh)
        bm.free()
        self.floor = bpy.data.objects.new(f"{SCENE_NAME}.floor", floor_mesh)
        scene.collection.objects.link(self.floor)

        camera = bpy.data.cameras.new(f"{SCENE_NAME}.camera")
        camera.sensor_fit = "VERTICAL"
        camera.angle = math.radians(FIELD_OF_VIEW)
        camera.clip_start = NEAR_CLIP
        camera.clip_end = 100.0
        self.camera = bpy.data.objects.new(f"{SCENE_NAME}.camera", camera)
        scene.collection.objects.link(self.camera)
        scene.camera = self.camera


    def is_alive(self) -> bool:
        try:
            return (self.bpy.data.scenes.get(SCENE_NAME) == self.scene
                    and all(obj.name in self.scene.objects for obj in self.objects.values())
                    and self.studio_light.name in self.bpy.context.preferences.studio_lights)
        except ReferenceError:   # the Blender data behind our Python handles was freed
            return False

    def close(self):
        """Remove the scene, its data and the studio light (the renderer is unusable after)."""
        bpy = self.bpy
        for obj in [*self.objects.values(), self.floor, self.camera]:
            data = obj.data
            bpy.data.objects.remove(obj)
            if isinstance(data, bpy.types.Mesh):
                bpy.data.meshes.remove(data)
            else:
                bpy.data.cameras.remove(data)
        bpy.data.worlds.remove(self.scene.world)
        bpy.data.scenes.remove(self.scene)
        bpy.context.preferences.studio_lights.remove(self.studio_light)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- per clip --------------------------------------------------------------------------------

    def _set_appearance(self, spec: ClipSpec):
        from mathutils import Matrix

        scene = self.scene
        scene.render.resolution_x = spec.size * SUPERSAMPLE
        scene.render.resolution_y = spec.size * SUPERSAMPLE
        for name, obj in self.objects.items():
            obj.color = (*srgb_to_linear(_segment_colour(name, spec)).tolist(), 1.0)
        self.floor.color = (*srgb_to_linear(spec.ground_colour).tolist(), 1.0)
        scene.world.color = srgb_to_linear(spec.background_colour).tolist()

        # Light: a key light from (light_azimuth, light_elevation), a weak fill from the other side
        # and the studio light's ambient; the Workbench shadows are cast from the key's direction.
        key = light_vector(spec.light_azimuth, spec.light_elevation)
        fill = light_vector(spec.light_azimuth + 180.0, FILL_ELEVATION)
        energy = spec.light_energy
        lights = self.studio_light.solid_lights
        lights[0].direction = _to_studio_space(key)
        lights[0].diffuse_color = (KEY_DIFFUSE * energy,) * 3
        lights[0].specular_color = (KEY_SPECULAR * energy,) * 3
        lights[1].direction = _to_studio_space(fill)
        lights[1].diffuse_color = (FILL_DIFFUSE * energy,) * 3
        lights[1].specular_color = (0.0, 0.0, 0.0)
        scene.display.light_direction = _to_studio_space(key)

        # Camera on a sphere about the look-at point; azimuth 0 = facing the figure.
        self.camera.matrix_world = Matrix(camera_matrix(spec.camera_azimuth, spec.camera_elevation,
                                                        spec.camera_distance).tolist())

    def _output(self, kind: str) -> None:
        """What a render writes: "colour" (8-bit RGB PNG frames, with shadows) or "depth" (the Z
        pass, float, in an uncompressed single-part EXR that :func:`mannequin.exr.read_exr` reads)."""
        settings = self.scene.render.image_settings
        depth = kind == "depth"
        self.scene.view_layers[0].use_pass_z = depth
        self.scene.display.shading.show_shadows = not depth   # shadows change no depth; they cost time
        if depth:
            settings.media_type = "MULTI_LAYER_IMAGE"
            settings.file_format = "OPEN_EXR_MULTILAYER"
            settings.color_depth = "32"
            settings.exr_codec = "NONE"
            settings.use_exr_interleave = True
        else:
            settings.media_type = "IMAGE"
            settings.file_format = "PNG"
            settings.color_mode = "RGB"
            settings.color_depth = "8"
            settings.compression = 0

    def _render_animation(self, spec: ClipSpec, kind: str) -> list[Path]:
        """Render every frame of ``spec`` to files in the private folder; returns them in order.

        One animation render per clip: a frame-change handler poses the segments for each
        frame (a third faster than one still render per frame; the pixels are identical).
        The caller holds the lock.
        """
        from mathutils import Matrix

        bpy = self.bpy
        scene = self.scene
        self._output(kind)
        self._set_appearance(spec)
        matrices = [[Matrix(m.tolist()) for m in frame] for frame in figure_transforms(spec)]
        objects = [self.objects[name] for name in A.SEGMENTS]

        def pose_frame(changed_scene, *_):
            if changed_scene is scene:
                index = min(max(changed_scene.frame_current - 1, 0), len(matrices) - 1)
                for obj, matrix in zip(objects, matrices[index]):
                    obj.matrix_world = matrix

        prefix, suffix = ("frame_", ".png") if kind == "colour" else ("depth_", ".exr")
        for old in self.tmp.glob(f"{prefix}*{suffix}"):
            old.unlink()
        scene.frame_start, scene.frame_end = 1, spec.num_frames
        scene.frame_set(1)
        scene.render.filepath = str(self.tmp / prefix)
        bpy.app.handlers.frame_change_pre.append(pose_frame)
        try:
            pose_frame(scene)
            with _quiet():
                bpy.ops.render.render(animation=True, scene=scene.name)
        finally:
            bpy.app.handlers.frame_change_pre.remove(pose_frame)
        return [self.tmp / f"{prefix}{index + 1:04d}{suffix}" for index in range(spec.num_frames)]

    def render(self, spec: ClipSpec) -> np.ndarray:
        """The clip's frames, uint8 (F, H, W, 3)."""
        from PIL import Image

        with self._lock:
            paths = self._render_animation(spec, "colour")
            frames = np.empty((spec.num_frames, spec.size, spec.size, 3), dtype=np.uint8)
            for index, path in enumerate(paths):
                with Image.open(path) as image:
                    frames[index] = _downsample(np.asarray(image.convert("RGB")), SUPERSAMPLE)
            return frames

    def render_z(self, spec: ClipSpec) -> np.ndarray:
        """The clip's Z pass at the supersampled size: float32 (F, H·s, W·s), metres along the
        camera's view axis (what :func:`mannequin.camera.project_with_depth` gives), 1e10 where
        no geometry is."""
        from mannequin.exr import read_exr

        with self._lock:
            paths = self._render_animation(spec, "depth")
            planes = []
            for path in paths:
                channels = read_exr(path)
                planes.append(next(plane for name, plane in channels.items() if name.endswith("Depth.Z")))
            return np.stack(planes)


_RENDERER: Renderer | None = None
_RENDERER_LOCK = threading.Lock()


def renderer() -> Renderer:
    """The process's renderer, built on first use (a second or two: bpy import, scene, shaders).

    It is rebuilt if its scene has gone (another caller loaded a file or reset Blender)."""
    global _RENDERER
    with _RENDERER_LOCK:
        if _RENDERER is not None and not _RENDERER.is_alive():
            shutil.rmtree(_RENDERER.tmp, ignore_errors=True)
            _RENDERER = None
        if _RENDERER is None:
            _RENDERER = Renderer()
            atexit.register(shutil.rmtree, _RENDERER.tmp, True)   # its frame files are in RAM (/dev/shm)
        return _RENDERER


class StagedScene(NamedTuple):
    """A renderer's scene handed over to a caller (:func:`hand_over_scene`)."""

    scene: object
    segments: dict   # segment name -> mesh object
    floor: object
    camera: object


def hand_over_scene(spec: ClipSpec, name: str) -> StagedScene:
    """The process's renderer's scene set up for ``spec`` (colours, light, camera, the figure
    in the pose of its first frame), renamed ``name`` and given to the caller to build a shot
    on (``mannequin.rig_scene``). The next render builds a new scene of its own, so renders
    and the caller's changes never meet."""
    global _RENDERER
    staged = renderer()
    with _RENDERER_LOCK, staged._lock:
        from mathutils import Matrix

        staged._output("colour")
        staged._set_appearance(spec)
        for segment, matrix in zip(A.SEGMENTS, figure_transforms(spec)[0]):
            staged.objects[segment].matrix_world = Matrix(matrix.tolist())
        staged.scene.name = name
        if _RENDERER is staged:
            _RENDERER = None
    return StagedScene(staged.scene, dict(staged.objects), staged.floor, staged.camera)


def render_clip(spec: ClipSpec) -> np.ndarray:
    """Render ``spec``: uint8 (num_frames, size, size, 3). The same spec gives the same pixels."""
    return renderer().render(spec)


class DepthClip(NamedTuple):
    """A clip's depth images (see :mod:`mannequin.depth`): uint16 (F, H, W), near = bright,
    and the nearest and farthest geometry of the clip in metres (the normalisation's range)."""

    images: np.ndarray
    near: float
    far: float


def render_depth(spec: ClipSpec) -> DepthClip:
    """Render ``spec``'s depth through the same camera: 16-bit images, near = bright, background 0.
    ``render_clip(spec)`` is unchanged by it (a separate render of the Z pass)."""
    from mannequin.depth import depth_images

    return DepthClip(*depth_images(renderer().render_z(spec), SUPERSAMPLE))


def ground_truth(spec: ClipSpec) -> np.ndarray:
    """The ground-truth continuation of ``reference_frame(spec)``: the whole clip, frame 0 included."""
    return render_clip(spec)


def reference_frame(spec: ClipSpec) -> np.ndarray:
    """The clip's first frame, uint8 (size, size, 3): what the model is given to animate."""
    return render_clip(spec.replace(num_frames=1))[0] if spec.num_frames > 1 else render_clip(spec)[0]
