"""A model's own actions, as its model card names them.

Standard library only: the Blender add-on imports this module (it gets a model's actions from
the engine's ``hello``, in the form :meth:`ModelActions.to_report` writes).

A model card (``mannequin.json`` beside the weights, written by ``mannequin.train_base``)
names ``train_actions`` (what the base learned), ``held_out_actions`` (kept out of its
training, to be taught few-shot) and ``prompts`` (action → the exact sentence it was trained
with, or would be). Such a model knows an action by that sentence only: a preset whose
sentence is not one it learned means nothing to it, and is marked so (:meth:`ModelActions.mark`).
"""

from __future__ import annotations

from dataclasses import dataclass

from flash_engine.errors import FlashError

__all__ = ["ModelAction", "ModelActions", "display_name", "from_card", "from_report"]

_BAD_CARD = "weights_incomplete"
_CARD_FIX = "fix the card, or retrain the model (mannequin.train_base writes it)"


def display_name(action_id: str) -> str:
    """``arm_wave`` → ``Arm wave``."""
    return action_id.replace("_", " ").strip().capitalize()


def _same_sentence(text: str) -> str:
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class ModelAction:
    id: str
    prompt: str  # the sentence the model was trained on (held out: the one it would be)
    learned: bool  # False: held out of the model's training

    @property
    def name(self) -> str:
        return display_name(self.id)


@dataclass(frozen=True)
class ModelActions:
    model: str  # the model's name, for marks ("learned by mannequin")
    actions: tuple[ModelAction, ...]  # the learned ones first, in the card's order

    def get(self, action_id: str) -> ModelAction | None:
        return next((a for a in self.actions if a.id == action_id), None)

    def knows(self, prompt: str) -> bool:
        """Whether ``prompt`` is a sentence the model learned."""
        wanted = _same_sentence(prompt)
        return any(a.learned and _same_sentence(a.prompt) == wanted for a in self.actions)

    def mark(self, learned: bool) -> str:
        """How the CLI and the add-on mark an action for this model."""
        return f"learned by {self.model}" if learned else f"not learned by {self.model}: train it first"

    def to_report(self) -> dict:
        """JSON-friendly form (the engine's ``hello`` and ``info --json``)."""
        return {"model": self.model,
                "learned": [{"id": a.id, "prompt": a.prompt} for a in self.actions if a.learned],
                "held_out": [{"id": a.id, "prompt": a.prompt} for a in self.actions if not a.learned]}


def _action_ids(card: dict, key: str, where: str) -> list[str]:
    ids = card.get(key, [])
    if not isinstance(ids, list) or not all(isinstance(i, str) and i.strip() for i in ids):
        raise FlashError(f"model card {where}: '{key}' must be a list of action names, got {ids!r}", _CARD_FIX,
                         code=_BAD_CARD)
    return [i.strip() for i in ids]


def from_card(card: dict, model: str, where: str) -> ModelActions | None:
    """The actions a model card names (``where``: the card's path, for errors); None when it
    names none. A malformed card raises a one-line :class:`FlashError`."""
    if not isinstance(card, dict):
        raise FlashError(f"model card {where}: not a JSON object", _CARD_FIX, code=_BAD_CARD)
    if "train_actions" not in card:
        return None
    learned = _action_ids(card, "train_actions", where)
    held_out = _action_ids(card, "held_out_actions", where)
    both = sorted(set(learned) & set(held_out))
    if both:
        raise FlashError(f"model card {where}: '{both[0]}' is both learned and held out", _CARD_FIX, code=_BAD_CARD)
    prompts = card.get("prompts")
    prompts = prompts if isinstance(prompts, dict) else {}
    actions = []
    for action_id in learned + held_out:
        prompt = prompts.get(action_id)
        if not isinstance(prompt, str) or not prompt.strip():
            raise FlashError(f"model card {where}: action '{action_id}' has no sentence in 'prompts'", _CARD_FIX,
                             code=_BAD_CARD)
        actions.append(ModelAction(action_id, " ".join(prompt.split()), learned=action_id in learned))
    return ModelActions(model, tuple(actions))


def from_report(report) -> ModelActions | None:
    """Back from :meth:`ModelActions.to_report`; None when absent or unreadable (the add-on
    still lists its presets)."""
    if not isinstance(report, dict) or not isinstance(report.get("model"), str):
        return None
    actions = []
    for key, learned in (("learned", True), ("held_out", False)):
        entries = report.get(key)
        if not isinstance(entries, list):
            return None
        for entry in entries:
            if not (isinstance(entry, dict) and isinstance(entry.get("id"), str)
                    and isinstance(entry.get("prompt"), str)):
                return None
            actions.append(ModelAction(entry["id"], entry["prompt"], learned))
    return ModelActions(report["model"], tuple(actions))
