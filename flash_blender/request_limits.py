"""The limits and defaults of the add-on's settings, taken from the engine's request schema.

Pure Python (no bpy). ``flash_engine/requests.py`` (bundled with the add-on, stdlib-only)
holds every field of ``animate`` and ``train`` once, with its limits and default; the
scene's FLASH settings and the operators' overrides spread these keyword arguments into
their ``IntProperty``/``FloatProperty``, so a limit changes in one place only. What the
schema leaves to the preset or the model (frames, steps, guidance) defaults to its
``DEFAULT_*`` constants, as the engine does.
"""

from __future__ import annotations

from . import bundled
from .errors import PlanError

BLENDER_INT_MAX = 2**31 - 1  # IntProperty is 32-bit: seed's 64-bit range is clamped to it
# The schema's default for fields it leaves to the preset (the engine falls back on these).
_FALLBACK_DEFAULTS = {"frames": "DEFAULT_FRAMES", "steps": "DEFAULT_STEPS", "guidance": "DEFAULT_GUIDANCE",
                      "pose_strength": "DEFAULT_CONTROL_STRENGTH", "depth_strength": "DEFAULT_CONTROL_STRENGTH"}


def schema():
    """``flash_engine.requests`` from the bundled engine."""
    return bundled.engine_module("requests")


def _request_class(kind: str):
    return schema().REQUESTS[kind]


def limits(name: str, kind: str = "animate") -> dict:
    """``min``/``max`` of field ``name`` of the ``kind`` request, as a Blender property takes them."""
    field_spec = schema().specs(_request_class(kind))[name]
    convert = float if field_spec.kind is float else int
    options = {}
    if field_spec.minimum is not None:
        options["min"] = convert(field_spec.minimum)
    if field_spec.maximum is not None:
        options["max"] = convert(field_spec.maximum)
        if convert is int:
            options["max"] = min(options["max"], BLENDER_INT_MAX)
    return options


def default(name: str, kind: str = "animate"):
    """The field's default: the schema's, else the engine's fallback constant (None: neither)."""
    value = schema().default(_request_class(kind), name)
    if value is None and kind == "animate" and name in _FALLBACK_DEFAULTS:
        value = getattr(schema(), _FALLBACK_DEFAULTS[name])
    return value


def options(name: str, kind: str = "animate") -> dict:
    """``min``, ``max`` and (where there is one) ``default`` for ``IntProperty(**options(...))``."""
    result = limits(name, kind)
    value = default(name, kind)
    if value is not None:
        result["default"] = value
    return result


def check_request(kind: str, args: dict) -> None:
    """PlanError (one line with the fix) when the engine's schema would refuse ``args``:
    caught before the job, as the service would refuse it."""
    flash_error = bundled.engine_module("errors").FlashError
    try:
        schema().parse(kind, args)
    except flash_error as err:
        raise PlanError(err.message, err.hint) from None
