"""The one request schema: the CLI is built from it, and it checks what the service gets."""

import math
from dataclasses import fields

import pytest

from flash_engine import requests as R
from flash_engine.cli import build_parser
from flash_engine.errors import FlashError


def subparser(name):
    parser = build_parser()
    return next(a for a in parser._subparsers._group_actions if a.dest == "command").choices[name]


@pytest.mark.parametrize("kind", ["animate", "train"])
def test_the_cli_has_every_field_with_the_schemas_default_and_help(kind):
    actions = {a.dest: a for a in subparser(kind)._actions}
    for field in fields(R.REQUESTS[kind]):
        spec = field.metadata["spec"]
        if not spec.cli:
            assert field.name not in actions
            continue
        action = actions[field.name]
        assert action.help == spec.help and action.required == spec.required, field.name
        if not spec.required:
            assert action.default == R.default(R.REQUESTS[kind], field.name), field.name


def test_a_parsed_command_line_is_the_request_the_service_would_get():
    args = subparser("animate").parse_args(["--image", "a.png", "--out", "o", "--frames", "8", "--guidance", "3"])
    assert R.from_namespace("animate", args) == R.parse("animate", {"image": "a.png", "out": "o", "frames": 8,
                                                                    "guidance": 3})


@pytest.mark.parametrize("args,words", [
    ({"image": "a.png"}, "'out' is required"),
    ({"image": "a.png", "out": "o", "fames": 3}, "unknown animate argument(s): fames"),
    ({"image": "a.png", "out": "o", "frames": True}, "whole number"),
    ({"image": "a.png", "out": "o", "guidance": math.inf}, "finite"),
    ({"image": "a.png", "out": "o", "guidance": 31}, "between 0 and 30"),
    ({"image": "a.png", "out": "o", "width": 4}, "'width' must be between 8 and 4096"),
    ({"image": "a.png", "out": "o", "precision": "fp8"}, "one of auto, fp32"),
    ({"image": "a.png", "out": "o", "seed": 2**64}, "2^64-1"),
])
def test_what_the_schema_refuses(args, words):
    with pytest.raises(FlashError) as caught:
        R.parse("animate", args)
    assert words in str(caught.value) and caught.value.code == R.BAD_ARGUMENT and "\n" not in str(caught.value)


def test_the_size_step_is_the_models_not_the_schemas():
    """A 4x VAE takes 36: the schema leaves the step to the model (checked when the request is resolved)."""
    assert R.parse("animate", {"image": "a.png", "out": "o", "width": 36, "height": 100}).width == 36


def test_a_request_made_in_code_is_checked_the_same_way():
    request = R.AnimateRequest(image="a.png", out="o", steps=0)
    with pytest.raises(FlashError, match="'steps' must be between 1 and 1000"):
        R.validate(request)
    assert R.parse("train", {"clips": "c", "action": "a", "prompt": "p", "out": "o"}).prompt == ["p"]


# ---- motion control: fields that need or exclude each other

BASE = {"image": "shot.png", "out": "take"}


@pytest.mark.parametrize("extra, words", [
    ({"pose": "t.pose.json", "driving": "ref.mp4"}, "not both"),
    ({"driving_start": 4}, "driving clip"),
    ({"reference_pose": "me.pose.json"}, "driving clip"),
    ({"depth_strength": 0.5}, "no depth control"),
    ({"pose_end": 0.5, "depth": "depth/"}, "no pose control"),
    ({"pose_controlnet": "cn/"}, "no pose control"),
    ({"control_strength": 0.5}, "no control"),
    ({"pose": "t.pose.json", "pose_start": 0.6, "pose_end": 0.4}, "must be below"),
    ({"depth": "d/", "depth_start": 1.0}, "must be below"),
])
def test_control_fields_that_need_or_exclude_each_other_get_one_line(extra, words):
    with pytest.raises(FlashError) as err:
        R.parse("animate", {**BASE, **extra})
    assert words in str(err.value) and "\n" not in str(err.value)
    request = R.AnimateRequest(**BASE, **extra)  # made in code: validate checks the same
    with pytest.raises(FlashError):
        R.validate(request)


def test_a_controls_strength_and_window_default_to_the_shared_ones():
    request = R.parse("animate", {**BASE, "driving": "ref.mp4", "depth": "d/", "control_strength": 0.7,
                                  "depth_strength": 1.5, "pose_start": 0.2})
    assert R.control_strength(request, "pose") == 0.7 and R.control_strength(request, "depth") == 1.5
    assert R.control_window(request, "pose") == (0.2, R.DEFAULT_CONTROL_END)
    assert R.control_window(request, "depth") == (R.DEFAULT_CONTROL_START, R.DEFAULT_CONTROL_END)
    plain = R.parse("animate", {**BASE, "pose": "t.pose.json"})
    assert R.control_strength(plain, "pose") == R.DEFAULT_CONTROL_STRENGTH


def test_control_strength_has_the_schemas_limits():
    with pytest.raises(FlashError, match="between 0 and 2"):
        R.parse("animate", {**BASE, "pose": "t.pose.json", "pose_strength": 2.5})
