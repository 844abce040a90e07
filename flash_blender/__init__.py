"""FLASH Previs Blender add-on.

Runs in Blender's Python and never imports torch: it talks to ``flash_engine`` running in
its own environment. The sidebar panel and operators arrive with the add-on issue; for now
the package registers nothing.
"""

import bpy

classes = ()

register, unregister = bpy.utils.register_classes_factory(classes)
