"""Which frames a decoder training sample takes (TrainConfig.decoder_sampling)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from flash_engine.errors import FlashError
from flash_engine.training.clips import Clip
from flash_engine.training.config import TrainConfig
from flash_engine.training.trainer import FlashTrainer


def _frame_numbers(sampling: str, draws: int = 40) -> list[list[int]]:
    from flash_engine.models.tiny import build_tiny

    # every pixel of frame i is 10·i, so a (flipped, cropped, resized) frame still says which it was
    frames = np.stack([np.full((32, 32, 3), 10 * i, np.uint8) for i in range(20)])
    config = TrainConfig(num_frames=8, stride=2, width=32, height=32, steps=0, decoder_steps=1,
                         decoder_frames=4, decoder_sampling=sampling, checkpoint_every=1000)
    trainer = FlashTrainer(build_tiny(), [Clip(Path("c"), "p", frames)], config, Path("unused"))
    generator = torch.Generator().manual_seed(0)
    return [[round(float(f.mean()) * 255 / 10) for f in trainer.decoder_video(generator)] for _ in range(draws)]


def test_consecutive_samples_are_frames_in_a_row():
    for numbers in _frame_numbers("consecutive"):
        assert np.diff(numbers).tolist() == [2, 2, 2]  # stride 2


def test_spread_samples_reach_as_far_from_the_reference_as_a_generated_clip():
    samples = _frame_numbers("spread")
    gaps = set()
    for numbers in samples:
        steps = np.diff(numbers)
        assert len(numbers) == 4 and (steps > 0).all() and (steps % 2 == 0).all()
        assert numbers[-1] - numbers[0] <= 2 * 7  # inside one 8-frame window at stride 2
        gaps.update((n - numbers[0]) // 2 for n in numbers[1:])
    assert gaps == set(range(1, 8))  # every distance a generated frame has from its reference


def test_an_unknown_decoder_sampling_is_a_one_line_error():
    with pytest.raises(FlashError, match="unknown decoder sampling"):
        TrainConfig(decoder_sampling="random").validate(8)
