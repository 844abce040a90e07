"""The actions the panel offers: the shipped presets plus the user's trained actions.

Pure Python (no bpy). Presets come from ``flash_engine.presets`` (passed in as
``load_preset``, so this module does not import the engine); trained actions are folders
with an ``action.toml`` under the extension's user directory (``…/actions/<folder>/``, the
layout ``flash_engine.actions`` writes). An action without trained weights animates its
prompt with the base model: the dropdown says "base model only".

The listing is cached and re-read when either folder's modification time changes (a
preset or an action folder added, removed or renamed), so drawing the panel costs nothing.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .bundled import engine_module

ACTION_MANIFEST = engine_module("layout").ACTION_MANIFEST
UNET_WEIGHTS = engine_module("layout").ACTION_UNET
TRAINED_PREFIX = "trained:"


@dataclass(frozen=True)
class ActionInfo:
    id: str  # preset id (soccer_shoot) or "trained:<folder name>"
    name: str
    prompt: str
    source: str  # "preset" or "trained"
    weights: str | None  # a trained action folder, or None: the base model animates the prompt
    path: str  # the preset file or the action folder
    frames: int | None = None
    steps: int | None = None
    guidance: float | None = None
    fps: float | None = None  # the speed a trained action learned (its clips' fps / stride)

    @property
    def base_model_only(self) -> bool:
        return self.weights is None

    @property
    def slug(self) -> str:
        """The action part of take names."""
        return self.id.removeprefix(TRAINED_PREFIX)

    @property
    def label(self) -> str:
        kind = "base model only" if self.base_model_only else "trained"
        return f"{self.name} ({kind})"

    @property
    def description(self) -> str:
        where = "preset" if self.source == "preset" else "your trained action"
        weights = ("no trained weights: the base model animates the prompt" if self.base_model_only
                   else f"trained weights in {self.weights}")
        return f"{where}: \"{self.prompt}\" ({weights})"

    def request_args(self) -> dict:
        """What tells the engine which action to animate (the prompt is sent separately)."""
        if self.source == "preset":
            return {"action": self.path}  # the preset file itself: unambiguous, wherever it lives
        return {"weights": self.weights} if self.weights else {}


def read_trained_action(folder: Path) -> ActionInfo:
    """One action folder; raises ValueError (one line, with the fix) when it is unusable."""
    manifest = folder / ACTION_MANIFEST
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"{manifest}: unreadable ({err}); re-run the training to rewrite it") from None
    name, prompt = data.get("name"), data.get("prompt")
    if not isinstance(name, str) or not isinstance(prompt, str) or not name.strip():
        raise ValueError(f"{manifest}: needs a name and a prompt; re-run the training to rewrite it")
    weights = str(folder) if (folder / UNET_WEIGHTS).is_file() else None
    fps = data.get("fps")
    fps = float(fps) if isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0 else None
    return ActionInfo(id=TRAINED_PREFIX + folder.name, name=name.strip(), prompt=prompt.strip(), source="trained",
                      weights=weights, path=str(folder), fps=fps)


def preset_info(preset) -> ActionInfo:
    """From a ``flash_engine.presets.Preset``."""
    return ActionInfo(id=preset.id, name=preset.name, prompt=preset.prompt, source="preset",
                      weights=str(preset.weights) if preset.weights else None, path=str(preset.path),
                      frames=preset.frames, steps=preset.steps, guidance=preset.guidance)


def _norm(text: str) -> str:
    return re.sub(r"[\s\-_]+", "_", text.strip().lower()).strip("_")


def _mtime(folder: Path | None) -> float | None:
    try:
        return os.stat(folder).st_mtime_ns if folder else None
    except OSError:
        return None


@dataclass
class Catalog:
    presets_dir: Path | None
    actions_dir: Path | None
    load_preset: Callable[[Path], object]  # flash_engine.presets.load_preset
    actions: list[ActionInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line each: a bad preset or action folder
    _stamp: tuple | None = None

    def refresh(self, force: bool = False) -> list[ActionInfo]:
        stamp = (_mtime(self.presets_dir), _mtime(self.actions_dir))
        if not force and stamp == self._stamp:
            return self.actions
        actions, problems = [], []
        if self.presets_dir and self.presets_dir.is_dir():
            for path in sorted(self.presets_dir.glob("*.toml")):
                try:
                    actions.append(preset_info(self.load_preset(path)))
                except Exception as err:  # FlashError: one bad file must not hide the others
                    problems.append(str(err))
        if self.actions_dir and self.actions_dir.is_dir():
            for folder in sorted(p for p in self.actions_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if not (folder / ACTION_MANIFEST).is_file():
                    continue  # a folder still being trained or unrelated: not an action yet
                try:
                    actions.append(read_trained_action(folder))
                except ValueError as err:
                    problems.append(str(err))
        self.actions, self.problems, self._stamp = actions, problems, stamp
        return actions

    def get(self, action_id: str) -> ActionInfo | None:
        return next((a for a in self.refresh() if a.id == action_id), None)

    def find(self, key: str) -> ActionInfo:
        """By id, trained folder name or display name (case-insensitive, spaces = underscores).
        Raises KeyError with a suggestion."""
        actions = self.refresh()
        exact = self.get(key)
        if exact:
            return exact
        wanted = _norm(key.removeprefix(TRAINED_PREFIX))
        for match in (lambda a: _norm(a.slug) == wanted, lambda a: _norm(a.name) == wanted):
            found = [a for a in actions if match(a)]
            if found:
                return found[0]
        near = [a.id for a in actions if wanted and wanted in _norm(a.id)][:3]
        hint = f"did you mean {', '.join(near)}?" if near else "pick one from the FLASH panel's Action list"
        raise KeyError(f"unknown action {key!r} ({hint})")

    def enum_items(self, current: str | None = None) -> list[tuple[str, str, str, int]]:
        """``(identifier, label, description, number)`` for a bpy EnumProperty. A ``current``
        choice that no longer exists (a deleted trained action) stays listed, last, as
        missing: the dropdown shows what the scene asks for, not some other action."""
        actions = self.refresh()
        items = [(a.id, a.label, a.description, i) for i, a in enumerate(actions)]
        if current and not any(a.id == current for a in actions):
            items.append((current, f"{current.removeprefix(TRAINED_PREFIX)} (missing)",
                          "this action is gone (deleted or renamed): pick another", len(actions)))
        return items

    def index(self, action_id: str) -> int:
        """The enum number of ``action_id``; a missing one is the extra item ``enum_items`` adds."""
        actions = self.refresh()
        for i, action in enumerate(actions):
            if action.id == action_id:
                return i
        return len(actions)
