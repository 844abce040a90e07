"""Add-on preferences: the engine's interpreter, model source, device, output folder, and
the "Custom actions" training fields. What reads them lives in ``services.py``."""

from __future__ import annotations

from bpy.props import BoolProperty, CollectionProperty, EnumProperty, IntProperty, StringProperty
from bpy.types import AddonPreferences, PropertyGroup

from . import bundled, downloads, engine, training
from .progress import STATUS
from .request_limits import limits
from .services import ADDON, managed_env_dir, weights_state
from .training_ui import draw_custom_actions


class FlashClipFile(PropertyGroup):
    """One clip file chosen for training."""

    path: StringProperty(name="Path", subtype='FILE_PATH')


class FLASH_AddonPreferences(AddonPreferences):
    bl_idname = ADDON

    engine_source: EnumProperty(
        name="Engine",
        items=[
            ('MANAGED', "Managed environment", "The Python environment 'Set up engine' creates in the extension's "
                                              "user folder (PyTorch and diffusers, about 5 GB)"),
            ('CUSTOM', "Existing Python", "A Python interpreter that already has the engine's requirements"),
        ],
        default='MANAGED',
    )
    python_path: StringProperty(name="Python", subtype='FILE_PATH',
                                description="The python executable (or environment folder) that runs the engine")
    model_source: EnumProperty(
        name="Model",
        items=[
            ('DEFAULT', "Built-in default", "$FLASH_MODEL, else the base weights downloaded here (Download "
                                            "base weights) or with python -m flash_engine weights fetch, else "
                                            "the built-in mannequin model (64x64)"),
            ('FOLDER', "Local weights folder", "A diffusers-layout Stable Diffusion 1.5 folder with motion_adapter/"),
            ('TINY', "Tiny test model", "Random weights at toy size (plumbing only): checks the setup in "
                                        "seconds; the clips show no real motion"),
        ],
        default='DEFAULT',
    )
    model_folder: StringProperty(name="Weights Folder", subtype='DIR_PATH')
    device: EnumProperty(
        name="Device",
        items=[('auto', "Auto", "CUDA, else Apple Metal, else CPU"), ('cuda', "CUDA", "NVIDIA GPU"),
               ('mps', "Metal", "Apple silicon GPU"), ('cpu', "CPU", "Slow, but always there")],
        default='auto',
    )
    precision: EnumProperty(
        name="Precision",
        items=[('auto', "Auto", "bf16 on CUDA where supported, else fp16; fp32 on CPU"),
               ('fp16', "FP16", ""), ('bf16', "BF16", ""), ('fp32', "FP32", "Full precision: most memory")],
        default='auto',
    )
    offload: BoolProperty(name="Offload to CPU", default=False,
                          description="Keep model parts in system memory until used: less GPU memory, slower")
    output_root: StringProperty(
        name="Output Folder", subtype='DIR_PATH', default="",
        description="Where takes go instead of //flash/ beside the .blend (// paths are relative to the .blend)")

    # Custom actions: training from clips
    train_name: StringProperty(name="Action Name", description="How the action is listed (its folder: lower "
                                                               "case, underscores)")
    train_prompt: StringProperty(name="Prompt", description="The sentence the action is animated with, e.g. "
                                                            "'a person is swinging a golf club.'")
    train_source: EnumProperty(
        name="Clips",
        items=[('FOLDER', "Folder", "A folder of clips: video files and/or folders of numbered frames"),
               ('FILES', "Files", "Clip files chosen one by one (images of one folder make one clip)")],
        default='FOLDER')
    train_folder: StringProperty(name="Clips Folder", subtype='DIR_PATH',
                                 description="Video files (mp4/mov/webm/gif/avi) and folders of frame images")
    train_files: CollectionProperty(type=FlashClipFile)
    # (limits: the engine's train request schema; defaults: its training config's)
    train_steps: IntProperty(name="UNet Steps", **limits("steps", "train"), default=training.DEFAULT_STEPS,
                             description="Training steps of the motion modules (the paper: 20000)")
    train_decoder_steps: IntProperty(name="Decoder Steps", **limits("decoder_steps", "train"),
                                     default=training.DEFAULT_DECODER_STEPS,
                                     description="Training steps of the Detail Enhancement Decoder (the paper: "
                                                 "10000; 0 skips it)")
    train_resolution: IntProperty(name="Resolution", min=training.NATIVE_RESOLUTION, max=4096,
                                  default=training.NATIVE_RESOLUTION, step=8, subtype='PIXEL',
                                  description="Square training size in pixels, a multiple of the model's size "
                                              "step (its VAE's scale, 8 for SD 1.5); 0: the base model's native "
                                              "size (64 for the built-in model, 512 for SD 1.5)")
    train_frames: IntProperty(name="Frames", **limits("frames", "train"), default=training.DEFAULT_FRAMES,
                              description="Frames per training sample")
    train_stride: IntProperty(name="Stride", **limits("stride", "train"), default=training.DEFAULT_STRIDE,
                              description="Source frames between sampled frames: a clip needs "
                                          "(frames - 1) x stride + 1 frames")

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False

        box = layout.box()
        box.label(text="Engine", icon='SYSTEM')
        box.prop(self, "engine_source")
        if self.engine_source == 'CUSTOM':
            box.prop(self, "python_path")
        else:
            self._draw_managed(box)
        row = box.row()
        row.label(text=f"Engine process: {engine.MANAGER.describe()}")
        row.operator("flash.stop_engine", text="Stop", icon='X')

        box = layout.box()
        box.label(text="Model", icon='NODE_MATERIAL')
        box.prop(self, "model_source")
        if self.model_source == 'FOLDER':
            box.prop(self, "model_folder")
        elif self.model_source == 'DEFAULT':
            self._draw_weights(box)
        box.prop(self, "device")
        box.prop(self, "precision")
        box.prop(self, "offload")

        box = layout.box()
        box.label(text="Output", icon='FILE_FOLDER')
        box.prop(self, "output_root", placeholder="//flash/")

        draw_custom_actions(self, layout.box(), context)

    def _draw_weights(self, layout):
        """The base weights: their state and size, the download's progress bar and Cancel."""
        run = STATUS.download
        if run is not None and not run.finished:
            layout.progress(factor=run.factor, type='BAR', text=run.text)
            layout.operator("flash.cancel_download", text="Cancel", icon='CANCEL')
            return
        try:
            state = weights_state()
        except Exception as err:  # a broken bundle: say so instead of failing to draw
            layout.label(text=f"cannot read the weights folder: {err}", icon='ERROR')
            return
        row = layout.row()
        row.label(text=downloads.state_text(state), icon='CHECKMARK' if state["state"] == "complete" else 'INFO')
        if state["state"] != "complete":
            row.operator("flash.download_weights", icon='IMPORT',
                         text="Resume download" if state["state"] == "partial" else "Download base weights")
        if run is not None and not run.ok:
            layout.label(text=run.text, icon='INFO' if run.cancelled else 'ERROR')

    def _draw_managed(self, layout):
        env_dir = managed_env_dir()
        try:
            status = bundled.engine_module("setup").env_status(env_dir)
        except Exception as err:  # a broken bundle: say so instead of failing to draw
            layout.label(text=f"cannot read the engine setup: {err}", icon='ERROR')
            return
        run = STATUS.setup
        if run is not None and not run.finished:
            layout.progress(factor=run.factor, type='BAR', text=run.text)
            for line in run.tail(6):
                layout.label(text=line)
            return
        row = layout.row()
        row.label(text=f"Environment: {status['reason']}", icon='CHECKMARK' if status["ready"] else 'INFO')
        row.operator("flash.setup_engine", text="Update" if status["ready"] else "Set up engine", icon='IMPORT')
        layout.label(text=str(env_dir))
        if run is not None and run.finished and not run.ok:
            layout.label(text=run.text, icon='ERROR')
