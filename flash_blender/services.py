"""The add-on's services, shared by its operators, panels and preferences: its package name
and preferences, its user directory, the action catalog, the engine's interpreter and the
model it is started with, the light check of the clips chosen for training.

Blender-facing (``bpy.utils`` for the user directory), but no UI: the preferences class
(``preferences.py``) only stores and draws what these read.
"""

from __future__ import annotations

import os
from pathlib import Path

import bpy

from . import bundled, engine
from .catalog import Catalog
from .clipcheck import CheckCache, ClipCheck
from .errors import PlanError

ADDON = __package__  # "bl_ext.<repository>.flash_previs" when installed as an extension
ENGINE_ENV = "engine-env"
ACTIONS = "actions"
WEIGHTS = "weights"  # "Download base weights" puts them here

_catalog: Catalog | None = None


def user_dir(*parts: str, create: bool = True) -> Path:
    """The extension's user directory (kept across updates), or a sub-folder of it (created
    unless ``create`` is false)."""
    path = "/".join(parts)
    try:
        base = bpy.utils.extension_path_user(ADDON, path=path, create=create)
    except ValueError:  # loaded as a plain add-on from a source checkout (development)
        base = bpy.utils.user_resource('DATAFILES', path="/".join(("flash_previs",) + parts), create=create)
    return Path(base)


def get_prefs(context=None):
    """The add-on's preferences (``preferences.FLASH_AddonPreferences``)."""
    context = context or bpy.context
    return context.preferences.addons[ADDON].preferences


def get_catalog() -> Catalog:
    """The running model's own actions + presets shipped with the engine + trained actions in
    the user directory."""
    global _catalog
    if _catalog is None:
        presets = bundled.engine_module("presets")
        _catalog = Catalog(presets_dir=Path(presets.PRESETS_DIR), actions_dir=user_dir(ACTIONS),
                           load_preset=presets.load_preset)
    hello = engine.MANAGER.hello()
    if hello is not None:  # while none runs, the last engine's word stands
        _catalog.use_model(hello.get("model_actions"))
    return _catalog


def forget_catalog() -> None:
    global _catalog
    _catalog = None


def actions_dir() -> Path:
    """Trained actions live here (never in the add-on's own folder: they survive updates)."""
    return user_dir(ACTIONS)


_clip_checks = CheckCache()


def chosen_clip_files(prefs) -> list[str]:
    return [_absolute(item.path) for item in prefs.train_files if item.path]


def chosen_clips_folder(prefs) -> str:
    return _absolute(prefs.train_folder.strip())


def clip_check(prefs) -> ClipCheck:
    """The light clip check of the clips chosen in "Custom actions" (cached: it is drawn)."""
    frames, stride = prefs.train_frames, prefs.train_stride
    if prefs.train_source == 'FILES':
        return _clip_checks.files(chosen_clip_files(prefs), frames, stride)
    return _clip_checks.folder(chosen_clips_folder(prefs), frames, stride)


def _absolute(path: str) -> str:
    return bpy.path.abspath(path) if path else ""


def managed_env_dir() -> Path:
    """Never created here: only the setup makes it, so "not set up" stays true until it runs."""
    return user_dir(ENGINE_ENV, create=False)


def weights_dir() -> Path:
    """Where the Preferences' download puts the base weights (made by the download itself)."""
    return user_dir(WEIGHTS, create=False)


def weights_state() -> dict:
    """How far the download into ``weights_dir()`` got (``flash_engine.weights.download_state``)."""
    return bundled.engine_module("weights").download_state(weights_dir())


def engine_python(prefs) -> str:
    """The engine's interpreter, or PlanError saying how to get one."""
    setup = bundled.engine_module("setup")
    if prefs.engine_source == 'CUSTOM':
        raw = _absolute(prefs.python_path.strip())
        if not raw:
            raise PlanError("no engine Python chosen",
                            "Preferences > Add-ons > FLASH Previs: pick the python executable, or use Managed")
        path = Path(raw)
        if path.is_dir():  # an environment folder: its interpreter
            path = setup.env_python(path)
        if not path.is_file():
            raise PlanError(f"engine Python not found: {path}",
                            "Preferences > Add-ons > FLASH Previs: pick an existing python executable")
        return str(path)
    status = setup.env_status(managed_env_dir())
    if not status["ready"]:
        reason = status["reason"]
        raise PlanError("the engine is not set up" if reason == "not set up" else f"the engine is not ready: {reason}",
                        "Preferences > Add-ons > FLASH Previs: press Set up engine, or choose an existing Python")
    return status["python"]


def model_argument(prefs) -> str:
    if prefs.model_source == 'TINY':
        return "tiny"
    if prefs.model_source == 'FOLDER':
        folder = _absolute(prefs.model_folder.strip())
        if not folder or not Path(folder).is_dir():
            raise PlanError(f"model weights folder not found: {folder or '(none chosen)'}",
                            "Preferences > Add-ons > FLASH Previs: choose a folder with unet/ vae/ text_encoder/ "
                            "tokenizer/ scheduler/ motion_adapter/, or use the built-in model")
        return folder
    if not os.environ.get("FLASH_MODEL") and weights_state()["state"] == "complete":
        return str(weights_dir())  # the weights the Preferences downloaded
    return "default"


def engine_config(prefs, device: str | None = None, number: int = 1) -> engine.EngineConfig:
    """What the engine process is started with (on ``device``, else the preferences'; a
    batch's engine ``number`` logs to its own file); PlanError when it cannot be."""
    root = bundled.engine_root()
    home = user_dir()
    return engine.EngineConfig(
        python=engine_python(prefs),
        serve_args=engine.serve_args(model_argument(prefs), device or prefs.device, prefs.precision, prefs.offload),
        engine_path=str(root), cwd=str(home), log_path=str(engine.log_file(home, number)),
        client_name=f"flash_blender (Blender {bpy.app.version_string})",
    )
