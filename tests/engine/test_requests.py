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
