"""Which colourspace the take's images get, so the scene's view transform shows the PNG's
own values on the plane (the engine's pixels are already display-ready).

Pure Python (no bpy). The view transform maps scene-linear light to the display; reading
the frames *as that view's display encoding* makes Blender invert it on load, so the two
cancel. Blender's OCIO config has such a colourspace for the sRGB display's views; other
displays and views keep plain sRGB (documented in docs/blender.md). AgX cannot show every
saturated colour, so under AgX the plane is close, not exact.
"""

from __future__ import annotations

DEFAULT = "sRGB"
# (display device, view transform) -> the image colourspace that cancels that view.
CANCELLING = {
    ("sRGB", "Standard"): "sRGB",
    ("sRGB", "AgX"): "AgX Base sRGB",
    ("sRGB", "Filmic"): "Filmic sRGB",
    ("sRGB", "Khronos PBR Neutral"): "Khronos PBR Neutral sRGB",
    ("sRGB", "ACES 1.3"): "ACES 1.3 sRGB",
    ("sRGB", "ACES 2.0"): "ACES 2.0 sRGB",
    ("sRGB", "Raw"): "Non-Color",
}


def frame_colorspace(display_device: str, view_transform: str, available=None) -> str:
    """The colourspace for the take's frames under this display and view (``available``:
    the colourspace names this Blender knows; a missing one falls back to sRGB)."""
    name = CANCELLING.get((display_device, view_transform), DEFAULT)
    if available is not None and name not in available:
        return DEFAULT
    return name
