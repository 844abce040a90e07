"""Where a take goes and what it is called: folders, take numbers, sizes, timeline slots.

Pure Python (no bpy): the operator passes in what it read from Blender.

A take is ``ROOT/<scene>_<camera>_<action>_<NNN>/``; ROOT is ``//flash/`` beside the saved
.blend (or the preferences' override, or a folder in the extension's user directory for an
unsaved file). NNN is the next number no file or folder of that take prefix uses yet —
including the engine's hidden staging folders and the reference render, which is written
as ``ROOT/<take>.reference.png`` before the job starts and so reserves the number.
Nothing is ever overwritten.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .bundled import engine_module
from .errors import PlanError

DEFAULT_FOLDER = "flash"
REFERENCE_SUFFIX = ".reference.png"
TAKE_DIGITS = 3
_SCHEMA = engine_module("requests")
DEFAULT_SIZE_MULTIPLE = _SCHEMA.DEFAULT_SIZE_MULTIPLE  # Stable Diffusion's, until the engine says its model's
OUTPUT_FIX = "choose a writable Output Folder in Preferences > Add-ons > FLASH Previs, or make this one writable"


def safe_name(text: str, fallback: str = "untitled") -> str:
    """A file-name-safe version of a Blender name: letters, digits, ``-`` and ``.`` kept
    (any script), everything else one ``_``."""
    cleaned = re.sub(r"[^\w.\-]+", "_", str(text), flags=re.UNICODE).strip("._")
    return cleaned[:60] or fallback


def take_prefix(scene: str, camera: str, action: str) -> str:
    return "_".join(safe_name(part) for part in (scene, camera, action))


def used_take_numbers(folder: Path, prefix: str) -> set[int]:
    """Take numbers already used in ``folder`` by anything named after ``prefix``: finished
    takes, hidden staging folders (``.<take>.partial-…``) and reference renders."""
    pattern = re.compile(rf"^\.?{re.escape(prefix)}_(\d+)(?:$|[.\-_])")
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return set()
    return {int(match.group(1)) for name in names if (match := pattern.match(name))}


def next_take_number(folder: Path, prefix: str, reserved: Iterable[str] = ()) -> int:
    """The lowest number above every used one (gaps are not reused: take 2 stays take 2)."""
    used = used_take_numbers(folder, prefix)
    for name in reserved:
        match = re.match(rf"^{re.escape(prefix)}_(\d+)$", name)
        if match:
            used.add(int(match.group(1)))
    return max(used, default=0) + 1


@dataclass(frozen=True)
class TakePlan:
    name: str  # <scene>_<camera>_<action>_<NNN>
    number: int
    root: Path
    folder: Path  # the engine's --out: must not exist yet
    reference: Path  # the rendered reference frame


def plan_take(root: Path, scene: str, camera: str, action: str, reserved: Iterable[str] = ()) -> TakePlan:
    """Pick the take's name and paths (creates nothing)."""
    prefix = take_prefix(scene, camera, action)
    number = next_take_number(root, prefix, reserved)
    name = f"{prefix}_{number:0{TAKE_DIGITS}d}"
    return TakePlan(name=name, number=number, root=root, folder=root / name, reference=root / (name + REFERENCE_SUFFIX))


def check_writable(folder: Path, hint: str = OUTPUT_FIX) -> None:
    """Takes can be written in ``folder`` (created as a take would create it), else PlanError
    with the fix. Called before the engine starts, so a read-only folder costs no model load.
    A real write is tried: permissions alone miss read-only mounts and system folders."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PlanError(f"the output folder {folder} is a file, not a folder", hint)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # nameless where the OS allows: nothing to clean up
            pass
    except OSError as err:
        raise PlanError(f"cannot write takes to {folder}: {err.strerror or err}", hint) from None


def reserve_reference(plan: TakePlan) -> None:
    """Create the take root and claim the reference file (fails if someone took the name)."""
    try:
        plan.root.mkdir(parents=True, exist_ok=True)
        with open(plan.reference, "xb"):
            pass
    except FileExistsError:
        raise PlanError(f"{plan.reference.name} appeared while planning the take", "run again") from None
    except OSError as err:
        raise PlanError(f"cannot write takes to {plan.root}: {err.strerror or err}", OUTPUT_FIX) from None


def remove_dead_staging(plan: TakePlan) -> list[Path]:
    """After an engine died mid-job: the hidden staging folders it left beside the take. The
    engine's own rule decides (``output.remove_stale_partials``): only folders whose owner
    process is gone, and in them only the files the engine writes; a live engine's stay."""
    if not plan.root.is_dir():
        return []
    return engine_module("output").remove_stale_partials(plan.root)


@dataclass(frozen=True)
class OutputRoot:
    folder: Path
    in_project: bool  # beside the saved .blend: paths stored relative (//)
    warning: str | None = None


def output_root(blend_filepath: str, override: str, user_dir: Path) -> OutputRoot:
    """Where takes go.

    ``override`` (preferences) may be absolute or blend-relative (``//…``); empty means
    ``//flash/``. An unsaved file has no ``//``: its takes go under ``user_dir`` with a
    warning that they live outside the project.
    """
    override = (override or "").strip()
    blend_dir = Path(blend_filepath).parent if blend_filepath else None
    if override and not override.startswith("//"):
        return OutputRoot(Path(override).expanduser(), in_project=False)
    relative = override[2:] if override else DEFAULT_FOLDER
    if blend_dir is None:
        folder = user_dir / "takes"
        return OutputRoot(folder, in_project=False, warning=(
            f"the file is not saved: frames go to {folder}, outside the project "
            "(save the .blend first to keep them in //flash/ beside it)"))
    return OutputRoot(blend_dir / relative, in_project=True)


def blend_relative(path: Path, blend_filepath: str) -> str:
    """``//``-relative form of ``path`` when it lies under the .blend's folder, else absolute."""
    path = Path(path)
    if blend_filepath:
        base = Path(blend_filepath).parent
        # as given, else both resolved: the engine reports resolved paths, which may differ
        # by a symlink from the .blend's folder as Blender names it
        for inside, folder in ((path, base), (path.resolve(), base.resolve())):
            try:
                return "//" + inside.relative_to(folder).as_posix()
            except ValueError:
                pass
    return str(path)


def size_multiple(model_limits: dict | None) -> int:
    """The step the model's sizes go in (``hello``'s ``model_limits``: its VAE's scale), else
    DEFAULT_SIZE_MULTIPLE while it is not known."""
    step = (model_limits or {}).get("size_multiple")
    return step if isinstance(step, int) and step > 0 else DEFAULT_SIZE_MULTIPLE


def model_size(resolution_x: int, resolution_y: int, long_side: int,
               pixel_aspect_x: float = 1.0, pixel_aspect_y: float = 1.0,
               multiple: int = DEFAULT_SIZE_MULTIPLE) -> tuple[int, int]:
    """Model width and height: the camera frame's aspect (pixels × pixel aspect), the long
    side ``long_side``, both multiples of ``multiple`` (the model's size step)."""
    width, height = resolution_x * pixel_aspect_x, resolution_y * pixel_aspect_y
    if width <= 0 or height <= 0:
        raise PlanError("the scene's render resolution is zero", "set Output > Format > Resolution")
    long_side = _SCHEMA.round_side(long_side, multiple)
    if width >= height:
        return long_side, _SCHEMA.round_side(long_side * height / width, multiple)
    return _SCHEMA.round_side(long_side * width / height, multiple), long_side


def first_free_channel(occupied: Iterable[tuple[int, int, int]], start: int, length: int,
                       max_channel: int = 128) -> int:
    """Lowest sequencer channel with nothing in ``[start, start+length)``; ``occupied`` holds
    ``(channel, frame_final_start, frame_final_end)`` of the existing strips."""
    end = start + length
    busy = {channel for channel, s, e in occupied if s < end and e > start}
    for channel in range(1, max_channel + 1):
        if channel not in busy:
            return channel
    raise PlanError("every sequencer channel is busy at the current frame",
                    "move to another frame or free a channel")
