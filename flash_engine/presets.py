"""Action presets: one TOML file per action in the repo's ``presets/`` folder.

Standard library only: the Blender add-on imports this module.

A preset file looks like::

    name = "Soccer shoot"
    prompt = "a person is shooting a soccer ball."
    frames = 16
    steps = 25
    guidance = 7.5
    # weights = "path/to/trained/action"   # optional; relative to this file

The preset id is the file name without ``.toml`` (``soccer_shoot``).
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from flash_engine.errors import FlashError
from flash_engine.requests import DEFAULT_FRAMES, DEFAULT_GUIDANCE, DEFAULT_STEPS, AnimateRequest, specs

__all__ = [
    "PRESETS_DIR",
    "DEFAULT_FRAMES",
    "DEFAULT_STEPS",
    "DEFAULT_GUIDANCE",
    "Preset",
    "load_preset",
    "list_presets",
    "find_preset",
]

#: The shipped presets; the Blender extension zip stages ``presets/`` beside ``flash_engine/``.
PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


_REQUIRED = ("name", "prompt")
_ALLOWED = ("name", "prompt", "frames", "steps", "guidance", "weights")

_BAD = "bad_preset"
_UNKNOWN = "unknown_preset"


@dataclass(frozen=True)
class Preset:
    """One validated action preset."""

    id: str
    name: str
    prompt: str
    frames: int
    steps: int
    guidance: float
    weights: Path | None  # absolute; resolved against the preset file's folder
    path: Path  # the preset file

    @property
    def has_weights(self) -> bool:
        return self.weights is not None

    def to_dict(self) -> dict:
        """JSON-friendly form (paths as strings, weights ``None`` when absent)."""
        return {
            "id": self.id,
            "name": self.name,
            "prompt": self.prompt,
            "frames": self.frames,
            "steps": self.steps,
            "guidance": self.guidance,
            "weights": str(self.weights) if self.weights is not None else None,
            "path": str(self.path),
        }


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _bad(path: Path, message: str, hint: str) -> FlashError:
    return FlashError(_one_line(f"preset file {path}: {message}"), _one_line(hint), code=_BAD)


def _type_name(value: object) -> str:
    return type(value).__name__


def _check_text(path: Path, data: dict, key: str, example: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise _bad(path, f"'{key}' must be a string, got {value!r} ({_type_name(value)})",
                   f'write it in quotes, e.g. {key} = "{example}"')
    value = value.strip()
    if not value:
        raise _bad(path, f"'{key}' is empty", f'write e.g. {key} = "{example}"')
    return value


def _check_setting(path: Path, data: dict, key: str, default):
    """A preset's frames/steps/guidance, within the request schema's limits (one place for them)."""
    value = data.get(key, default)
    try:
        return specs(AnimateRequest)[key].check(key, value)
    except FlashError as err:
        raise _bad(path, err.message, f"write e.g. {key} = {default}") from None


def _check_weights(path: Path, data: dict) -> Path | None:
    if "weights" not in data:
        return None
    value = data["weights"]
    if not isinstance(value, str) or not value.strip():
        raise _bad(path, f"'weights' must be a non-empty path string, got {value!r}",
                   'write e.g. weights = "trained/soccer_shoot" (relative to this file), or remove the line')
    weights = Path(value.strip()).expanduser()
    if not weights.is_absolute():
        weights = path.parent / weights
    weights = weights.resolve()
    if not weights.exists():
        raise _bad(path, f"'weights' path {weights} does not exist",
                   "train the action into that folder first, or remove the weights line to use the base model")
    return weights


def load_preset(path: str | os.PathLike) -> Preset:
    """Read and strictly validate one preset file; raise :class:`FlashError` (code ``bad_preset``)."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise _bad(path, "file not found", "check the path, or run `python -m flash_engine info` to list presets")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise _bad(path, f"not UTF-8 text ({err.reason} at byte {err.start})",
                   "save the file as UTF-8") from None
    except OSError as err:
        raise _bad(path, f"cannot read the file ({err.strerror or err})",
                   "check that it is a readable file, not a folder") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        # tomllib's message ends with "(at line N, column M)".
        raise _bad(path, f"TOML syntax error: {err}",
                   'fix that line; strings need double quotes, e.g. name = "Soccer shoot"') from None

    unknown = sorted(key for key in data if key not in _ALLOWED)
    if unknown:
        raise _bad(path, f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
                   f"allowed keys are {', '.join(_ALLOWED)}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise _bad(path, f"missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                   'add e.g. name = "Soccer shoot" and prompt = "a person is shooting a soccer ball."')

    name = _check_text(path, data, "name", "Soccer shoot")
    prompt = _check_text(path, data, "prompt", "a person is shooting a soccer ball.")
    frames = _check_setting(path, data, "frames", DEFAULT_FRAMES)
    steps = _check_setting(path, data, "steps", DEFAULT_STEPS)
    guidance = _check_setting(path, data, "guidance", DEFAULT_GUIDANCE)
    weights = _check_weights(path, data)
    return Preset(id=path.stem, name=name, prompt=prompt, frames=frames, steps=steps,
                  guidance=guidance, weights=weights, path=path)


def list_presets(directory: str | os.PathLike = PRESETS_DIR) -> list[Preset]:
    """All presets in ``directory``, sorted by id. A bad file raises; nothing is skipped."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FlashError(f"preset folder {directory} not found",
                         "reinstall the add-on/engine, or pass an existing folder", code=_BAD)
    presets = [load_preset(p) for p in directory.glob("*.toml") if p.is_file()]
    return sorted(presets, key=lambda p: p.id)


def _norm(text: str) -> str:
    """Lower-case; spaces and hyphens count as underscores (``"Push-up"`` -> ``push_up``)."""
    return re.sub(r"[\s\-_]+", "_", text.strip().lower()).strip("_")


def _looks_like_path(key: str | os.PathLike) -> bool:
    if isinstance(key, os.PathLike):
        return True
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return key.strip().lower().endswith(".toml") or any(s in key for s in seps)


def find_preset(key: str | os.PathLike, directory: str | os.PathLike = PRESETS_DIR) -> Preset:
    """Look a preset up by id or display name (case-insensitive; spaces/hyphens = underscores),
    or load ``key`` directly when it is a path to a ``.toml`` file (a user's own preset)."""
    if _looks_like_path(key):
        return load_preset(key)
    wanted = _norm(str(key))
    directory = Path(directory).expanduser()
    if wanted:
        # Fast path: the id names the file, so load only that one.
        direct = directory / f"{wanted}.toml"
        if direct.is_file():
            return load_preset(direct)
    presets = list_presets(directory)
    if wanted:
        by_id = [p for p in presets if _norm(p.id) == wanted]
        if by_id:
            return by_id[0]
        by_name = [p for p in presets if _norm(p.name) == wanted]
        if len(by_name) == 1:
            return by_name[0]
        if len(by_name) > 1:
            ids = ", ".join(p.id for p in by_name)
            raise FlashError(f"preset name {str(key)!r} is ambiguous: it matches {ids}",
                             "use the preset id instead", code=_UNKNOWN)
    candidates: dict[str, str] = {}
    for p in presets:
        candidates.setdefault(_norm(p.id), p.id)
        candidates.setdefault(_norm(p.name), p.id)
    near: list[str] = []
    matches = difflib.get_close_matches(wanted, list(candidates), n=6, cutoff=0.5)
    if len(wanted) >= 3:  # "hug" -> hugging_human, "bucket" -> ice_bucket_challenge
        matches += sorted(c for c in candidates if wanted in c)
    for match in matches:
        if candidates[match] not in near:
            near.append(candidates[match])
    hint = f"did you mean {', '.join(near[:3])}? " if near else ""
    hint += "`python -m flash_engine info` lists them all"
    raise FlashError(f"unknown preset {str(key)!r}", hint, code=_UNKNOWN)
