"""A model's own actions, read from its model card (``mannequin.json``): what the base learned,
with the exact sentences it was trained on, and what was held out of its training."""

from __future__ import annotations

import json

import pytest

from flash_engine.errors import FlashError
from flash_engine.model_actions import from_card, from_report
from flash_engine.models.loading import MANNEQUIN_CARD, MANNEQUIN_DIR, model_card_actions

TOY = {"name": "toy", "train_actions": ["wave", "hop"], "held_out_actions": ["kick"],
       "prompts": {"wave": "a person waves.", "hop": "a person hops.", "kick": "a person kicks.", "spare": "x."}}


def test_a_cards_actions_keep_its_order_and_its_sentences():
    actions = from_card(TOY, "toy", "toy/mannequin.json")
    assert actions.model == "toy"
    assert [(a.id, a.name, a.prompt, a.learned) for a in actions.actions] == [
        ("wave", "Wave", "a person waves.", True), ("hop", "Hop", "a person hops.", True),
        ("kick", "Kick", "a person kicks.", False)]
    assert actions.knows("A person  waves.")  # the same sentence, spacing and case aside
    assert not actions.knows("a person is waving.") and not actions.knows("a person kicks.")  # held out
    # the engine's hello carries it as JSON; the add-on reads it back
    assert from_report(json.loads(json.dumps(actions.to_report()))) == actions


def test_a_card_that_names_no_actions_offers_none():
    assert from_card({"name": "sd", "resolution": [512, 512]}, "sd", "card.json") is None


@pytest.mark.parametrize("change,words", [
    ({"train_actions": "wave"}, ["'train_actions' must be a list"]),
    ({"held_out_actions": [3]}, ["'held_out_actions'", "3"]),
    ({"prompts": {"wave": "a person waves.", "hop": "a person hops."}}, ["'kick' has no sentence in 'prompts'"]),
    ({"prompts": {"wave": "", "hop": "h.", "kick": "k."}}, ["'wave' has no sentence"]),
    ({"held_out_actions": ["wave"]}, ["'wave' is both learned and held out"]),
])
def test_a_malformed_card_is_one_line_naming_the_fix(change, words):
    with pytest.raises(FlashError) as info:
        from_card({**TOY, **change}, "toy", "toy/mannequin.json")
    text = str(info.value)
    assert "\n" not in text and "toy/mannequin.json" in text and "retrain" in text, text
    for word in words:
        assert word in text, text


@pytest.mark.parametrize("report", [None, "x", {}, {"model": "m", "learned": "x"},
                                    {"model": "m", "learned": [{"id": "a"}], "held_out": []}])
def test_a_report_the_add_on_cannot_read_offers_nothing(report):
    assert from_report(report) is None  # the dropdown must still draw


def test_the_built_in_mannequin_offers_its_cards_actions():
    card = json.loads((MANNEQUIN_DIR / MANNEQUIN_CARD).read_text(encoding="utf-8"))
    actions = model_card_actions("mannequin")
    assert actions.model == "mannequin"
    learned = {a.id: a.prompt for a in actions.actions if a.learned}
    held_out = {a.id: a.prompt for a in actions.actions if not a.learned}
    assert list(learned) == card["train_actions"] and list(held_out) == card["held_out_actions"]
    assert learned["arm_wave"] == card["prompts"]["arm_wave"] == "a person is waving an arm."


def test_models_without_a_card_offer_no_actions_of_their_own(tmp_path):
    assert model_card_actions("tiny") is None
    assert model_card_actions(tmp_path) is None  # a folder without a card: SD 1.5
    (tmp_path / MANNEQUIN_CARD).write_text(json.dumps(TOY))
    assert [a.id for a in model_card_actions(tmp_path).actions] == ["wave", "hop", "kick"]
    (tmp_path / MANNEQUIN_CARD).write_text("{not json")
    with pytest.raises(FlashError, match="unreadable model card"):
        model_card_actions(tmp_path)
