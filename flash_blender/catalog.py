"""The actions the panel offers: the running model's own, the shipped presets, the user's
trained actions.

Pure Python (no bpy). Presets come from ``flash_engine.presets`` (passed in as
``load_preset``, so this module does not import the engine); trained actions are folders
with an ``action.toml`` under the extension's user directory (``…/actions/<folder>/``, the
layout ``flash_engine.actions`` writes). An action without trained weights animates its
prompt with the base model: the dropdown says "base model only".

The listing is cached and re-read when either folder's modification time changes (a
preset or an action folder added, removed or renamed), so drawing the panel costs nothing.

A model with a model card (the built-in ``mannequin``) knows actions by the sentences it was
trained on: when the running engine reports them (``hello``'s ``model_actions``, see
``flash_engine.model_actions``), they come first (``model:<action>``, their sentence as the
prompt), and every action without trained weights is marked learned or not by that model.
A scene's ``model:`` choice waits, unlisted but usable, until some engine has reported.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from .bundled import engine_module

ACTION_MANIFEST = engine_module("layout").ACTION_MANIFEST
UNET_WEIGHTS = engine_module("layout").ACTION_UNET
TRAINED_PREFIX = "trained:"
MODEL_PREFIX = "model:"  # an action of the running model's own card
model_actions = engine_module("model_actions")


@dataclass(frozen=True)
class ActionInfo:
    id: str  # preset id (soccer_shoot), "trained:<folder name>" or "model:<card action>"
    name: str
    prompt: str
    source: str  # "preset", "trained" or "model"
    weights: str | None  # a trained action folder, or None: the base model animates the prompt
    path: str  # the preset file or the action folder
    frames: int | None = None
    steps: int | None = None
    guidance: float | None = None
    fps: float | None = None  # the speed a trained action learned (its clips' fps / stride)
    learned: bool | None = None  # without trained weights: whether the running model learned it (None: unknown)
    model_mark: str = ""  # how that model marks it ("learned by mannequin")

    @property
    def base_model_only(self) -> bool:
        return self.weights is None

    @property
    def slug(self) -> str:
        """The action part of take names."""
        return _slug(self.id)

    @property
    def label(self) -> str:
        kind = "trained" if not self.base_model_only else self.model_mark or "base model only"
        return f"{self.name} ({kind})"

    @property
    def description(self) -> str:
        if self.source == "model":
            if self.learned:
                return f"{self.model_mark}: \"{self.prompt}\", the sentence it was trained on"
            return (f"held out of the model's training ({self.model_mark}, or expect a guess): "
                    f"\"{self.prompt}\"")
        where = "preset" if self.source == "preset" else "your trained action"
        if not self.base_model_only:
            weights = f"trained weights in {self.weights}"
        else:
            weights = self.model_mark or "no trained weights: the base model animates the prompt"
        return f"{where}: \"{self.prompt}\" ({weights})"

    @property
    def note(self) -> str:
        """What the panel says under the dropdown (empty: nothing to say)."""
        if not self.base_model_only:
            return ""
        if self.learned is None:
            return "No trained weights: base model only"
        mark = self.model_mark[:1].upper() + self.model_mark[1:]
        return f"{mark}: the base model animates its sentence" if self.learned else mark

    def request_args(self) -> dict:
        """What tells the engine which action to animate (the prompt is sent separately)."""
        if self.source == "preset":
            return {"action": self.path}  # the preset file itself: unambiguous, wherever it lives
        if self.source == "model":
            # by its card's id: the engine fills in the sentence when no prompt is known yet
            # (a script's action="model:…" before any engine has reported its card)
            return {"action": _slug(self.id)}
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


def card_action_info(action, model) -> ActionInfo:
    """From a ``flash_engine.model_actions.ModelAction`` of ``model`` (its ``ModelActions``)."""
    return ActionInfo(id=MODEL_PREFIX + action.id, name=action.name, prompt=action.prompt, source="model",
                      weights=None, path="", learned=action.learned, model_mark=model.mark(action.learned))


def judged(action: ActionInfo, model) -> ActionInfo:
    """``action`` marked learned or not by ``model`` when it has no trained weights of its own."""
    if model is None or not action.base_model_only:
        return action
    learned = model.knows(action.prompt)
    return replace(action, learned=learned, model_mark=model.mark(learned))


def _slug(action_id: str) -> str:
    return action_id.removeprefix(TRAINED_PREFIX).removeprefix(MODEL_PREFIX)


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
    model: object = None  # the running model's own actions (flash_engine.model_actions.ModelActions), if any
    model_reported: bool = False  # whether any engine has said (until then, the model is unknown)
    actions: list[ActionInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line each: a bad preset or action folder
    _stamp: tuple | None = None

    def use_model(self, report) -> None:
        """What a running engine said of its model's own actions (``hello``'s ``model_actions``;
        None: a model without a card)."""
        self.model, self.model_reported = model_actions.from_report(report), True

    def refresh(self, force: bool = False) -> list[ActionInfo]:
        stamp = (_mtime(self.presets_dir), _mtime(self.actions_dir), self.model)
        if not force and stamp == self._stamp:
            return self.actions
        model = self.model
        actions = [card_action_info(a, model) for a in model.actions] if model else []
        problems = []
        if self.presets_dir and self.presets_dir.is_dir():
            for path in sorted(self.presets_dir.glob("*.toml")):
                try:
                    actions.append(judged(preset_info(self.load_preset(path)), model))
                except Exception as err:  # FlashError: one bad file must not hide the others
                    problems.append(str(err))
        if self.actions_dir and self.actions_dir.is_dir():
            for folder in sorted(p for p in self.actions_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if not (folder / ACTION_MANIFEST).is_file():
                    continue  # a folder still being trained or unrelated: not an action yet
                try:
                    actions.append(judged(read_trained_action(folder), model))
                except ValueError as err:
                    problems.append(str(err))
        self.actions, self.problems, self._stamp = actions, problems, stamp
        return actions

    def get(self, action_id: str) -> ActionInfo | None:
        found = next((a for a in self.refresh() if a.id == action_id), None)
        if found is None and self._waits(action_id):
            # the scene's prompt (filled with the sentence when it was picked) carries it
            return ActionInfo(id=action_id, name=model_actions.display_name(_slug(action_id)), prompt="",
                              source="model", weights=None, path="")
        return found

    def _waits(self, action_id: str) -> bool:
        """A model's own action, before any engine has said which model runs."""
        return action_id.startswith(MODEL_PREFIX) and not self.model_reported

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
            if self._waits(current):
                item = (f"{model_actions.display_name(_slug(current))} (the model's own)",
                        "an action of the model's own: listed with its sentence once the engine runs "
                        "(Animate starts it)")
            elif current.startswith(MODEL_PREFIX):
                item = (f"{_slug(current)} (missing)", "the running model has no such action of its own: pick another")
            else:
                item = (f"{_slug(current)} (missing)", "this action is gone (deleted or renamed): pick another")
            items.append((current, *item, len(actions)))
        return items

    def index(self, action_id: str) -> int:
        """The enum number of ``action_id``; a missing one is the extra item ``enum_items`` adds."""
        actions = self.refresh()
        for i, action in enumerate(actions):
            if action.id == action_id:
                return i
        return len(actions)
