"""Small operators behind the panel's buttons."""

from __future__ import annotations

import random

from bpy.types import Operator

from ..engine import MANAGER
from ..services import get_catalog
from ..progress import STATUS
from ..properties import current_action


class FLASH_OT_randomize_seed(Operator):
    bl_idname = "flash.randomize_seed"
    bl_label = "Randomize Seed"
    bl_description = "Pick a new random seed"
    bl_options = {'REGISTER', 'UNDO'}

    def execute(self, context):
        context.scene.flash.seed = random.SystemRandom().randrange(2**31 - 1)
        return {'FINISHED'}


class FLASH_OT_reset_prompt(Operator):
    bl_idname = "flash.reset_prompt"
    bl_label = "Reset Prompt"
    bl_description = "Use the action's own prompt again"
    bl_options = {'REGISTER', 'UNDO'}

    def execute(self, context):
        action = current_action(context.scene.flash)
        context.scene.flash.prompt = action.prompt if action else ""
        return {'FINISHED'}


class FLASH_OT_refresh_actions(Operator):
    bl_idname = "flash.refresh_actions"
    bl_label = "Refresh Actions"
    bl_description = "Read the presets and trained actions again"

    def execute(self, context):
        catalog = get_catalog()
        catalog.refresh(force=True)
        for problem in catalog.problems:
            self.report({'WARNING'}, f"FLASH: {problem}")
        return {'FINISHED'}


class FLASH_OT_stop_engine(Operator):
    bl_idname = "flash.stop_engine"
    bl_label = "Stop Engine"
    bl_description = "Stop the engine process and free its memory (the next job starts it again)"

    @classmethod
    def poll(cls, context):
        if STATUS.engine_busy:
            cls.poll_message_set("A FLASH job or training is running: cancel it first")
            return False
        return MANAGER.client is not None

    def execute(self, context):
        MANAGER.shutdown()
        return {'FINISHED'}


classes = (FLASH_OT_randomize_seed, FLASH_OT_reset_prompt, FLASH_OT_refresh_actions, FLASH_OT_stop_engine)
