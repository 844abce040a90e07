"""What registering the add-on adds, and what unregistering takes away again (all of it:
classes, the scene property, the load handler, timers, the engine process, the bundled
engine modules)."""

from __future__ import annotations

import threading
import traceback

import bpy
from bpy.app.handlers import persistent

from . import bundled, importers, operators, panels, preferences, properties, services
from .engine import MANAGER
from .operators.animate import abandon_running_job
from .operators.modal import remove_all_timers
from .operators.training import abandon_training
from .progress import STATUS

classes = (
    preferences.FlashClipFile,  # before the preferences and operators that hold it
    preferences.FLASH_AddonPreferences,
    properties.FlashBonePoint,  # before the settings that hold it
    properties.FlashSceneSettings,
    *operators.classes,
    *panels.classes,
)

_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


@persistent
def _cancel_on_load(*_args) -> None:
    """A new file replaces the scene the running job would import into: stop the job. Its
    scenes are new too: what was seen of the old file's views says nothing about them."""
    abandon_running_job("another file was opened")
    _seen_views.clear()


_seen_views: dict[str, tuple[str, str]] = {}


@persistent
def _follow_view_transform(scene, *_args) -> None:
    """The takes' colourspace cancels the view transform: follow it when the user changes it.
    Only on the main thread (an F12 render calls render_pre from its own; the change was
    already seen by depsgraph_update_post), and never letting an error out of a handler."""
    if threading.current_thread() is not threading.main_thread():
        return
    view = (scene.display_settings.display_device, scene.view_settings.view_transform)
    if _seen_views.get(scene.name) != view:
        _seen_views[scene.name] = view
        try:
            importers.sync_colorspaces(scene)
        except Exception:  # a handler that raises would do so on every change
            traceback.print_exc()


HANDLERS = ((bpy.app.handlers.load_pre, _cancel_on_load), (bpy.app.handlers.depsgraph_update_post,
            _follow_view_transform), (bpy.app.handlers.render_pre, _follow_view_transform))


def register() -> None:
    _register_classes()
    properties.register()
    for handlers, handler in HANDLERS:
        handlers.append(handler)


def unregister() -> None:
    for handlers, handler in HANDLERS:
        if handler in handlers:
            handlers.remove(handler)
    _seen_views.clear()
    abandon_running_job("the add-on was disabled")
    abandon_training("the add-on was disabled")  # the engine keeps a checkpoint: Resume continues
    if STATUS.setup is not None:
        STATUS.setup.stop()
    if STATUS.download is not None:
        STATUS.download.cancel()  # what it got stays: the next Download resumes
    MANAGER.shutdown()
    remove_all_timers()
    properties.unregister()
    _unregister_classes()
    STATUS.job, STATUS.setup, STATUS.training, STATUS.download = None, None, None, None
    STATUS.clear_messages()
    STATUS.clear_train_messages()
    services.forget_catalog()
    bundled.unload_engine()
