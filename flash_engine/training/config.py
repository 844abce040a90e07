"""Training configuration. Defaults are the paper's values (spec: A3.2)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from flash_engine.errors import FlashError
from flash_engine.requests import (DEFAULT_BATCH, DEFAULT_DECODER_STEPS, DEFAULT_FRAMES, DEFAULT_LR_SCALING,
                                   DEFAULT_STRIDE, DEFAULT_TRAIN_STEPS, LR_SCALING)
from flash_engine.training.augment import DistortConfig, StrongAugmentConfig

# The paper's ablation variants (Table 2): which parts are on.
VARIANTS = {
    1: dict(strong_augmentation=False, feature_alignment=False, correspondence_alignment=False, train_decoder=False),
    2: dict(strong_augmentation=True, feature_alignment=False, correspondence_alignment=False, train_decoder=False),
    3: dict(strong_augmentation=True, feature_alignment=True, correspondence_alignment=False, train_decoder=False),
    4: dict(strong_augmentation=True, feature_alignment=False, correspondence_alignment=True, train_decoder=False),
    5: dict(strong_augmentation=True, feature_alignment=True, correspondence_alignment=True, train_decoder=False),
    6: dict(strong_augmentation=True, feature_alignment=True, correspondence_alignment=True, train_decoder=True),
}


DECODER_SAMPLING = ("consecutive", "spread")


@dataclass
class TrainConfig:
    num_frames: int = DEFAULT_FRAMES
    stride: int = DEFAULT_STRIDE  # frames skipped between sampled frames (2: 16 frames span 31 source frames)
    width: int = 512
    height: int = 512
    steps: int = DEFAULT_TRAIN_STEPS
    decoder_steps: int = DEFAULT_DECODER_STEPS
    learning_rate: float = 5e-5
    decoder_learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    # Clips per step on each rank (run one after another, their gradients averaged): the
    # effective batch is this times the ranks; the rates above are for batch 1 and follow it
    # by ``lr_scaling`` (``scaled_rate``).
    batch_size: int = DEFAULT_BATCH
    lr_scaling: str = DEFAULT_LR_SCALING
    tau: int = 90
    correspondence_fraction: float = 0.5
    # Timesteps t = floor((1 - u**skew) · T), u ~ U(0, 1): skew 1 is uniform; 3 (default) puts
    # 79% of the draws above T/2, i.e. on the early (noisy) denoising stages the paper favours.
    timestep_skew: float = 3.0
    strong_augmentation: bool = True
    feature_alignment: bool = True
    correspondence_alignment: bool = True
    train_decoder: bool = True
    decoder_frames: int = 4  # frames decoded per decoder step (memory: the decoder runs at full size)
    # Where those frames come from (FlashTrainer.decoder_video): "consecutive" frames, or "spread"
    # over a UNet-length window, as far from their reference as generated frames are. Measured
    # alike on the mannequin (docs/mannequin-benchmark.md), so the default stays as it was.
    decoder_sampling: str = "consecutive"
    checkpoint_every: int = 500
    seed: int = 0
    mixed_precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    gradient_checkpointing: str = "auto"  # auto: on for CUDA
    strong: StrongAugmentConfig = field(default_factory=StrongAugmentConfig)
    distort: DistortConfig = field(default_factory=DistortConfig)

    def apply_variant(self, variant: int) -> "TrainConfig":
        if variant not in VARIANTS:
            raise FlashError(f"unknown variant {variant}", "use 1-6 (the paper's Table 2)", code="bad_argument")
        for key, value in VARIANTS[variant].items():
            setattr(self, key, value)
        return self

    def validate(self, size_multiple: int) -> None:
        """A one-line FlashError for a setting no training can run with; ``size_multiple``:
        the base model's size step (its VAE's scale), which width and height are multiples of."""
        step = size_multiple
        sizes_ok = self.width >= step and self.height >= step and not (self.width % step or self.height % step)
        lower = "x".join(str(max(step, side // step * step)) for side in (self.width, self.height))
        higher = "x".join(str(max(step, side // step * step) + step) for side in (self.width, self.height))
        checks = [
            (self.num_frames >= 2, "frames must be at least 2", "use --frames 16"),
            (self.stride >= 1, "stride must be at least 1", "use --stride 2"),
            (self.steps >= 0 and self.decoder_steps >= 0, "step counts must not be negative", "use --steps 20000"),
            (self.steps + self.decoder_steps > 0, "nothing to train: 0 UNet and 0 decoder steps", "use --steps N"),
            (sizes_ok, f"resolution {self.width}x{self.height} is not a multiple of {step}, this model's size step",
             f"use --resolution {lower} or {higher}"),
            (self.checkpoint_every >= 1, "checkpoint interval must be at least 1", "use --checkpoint-every 500"),
            (self.decoder_frames >= 2, "decoder frames must be at least 2", "use --decoder-frames 4"),
            (self.decoder_sampling in DECODER_SAMPLING, f"unknown decoder sampling {self.decoder_sampling!r}",
             f"use one of {', '.join(DECODER_SAMPLING)}"),
            (0 <= self.correspondence_fraction <= 1, "correspondence fraction must be in [0, 1]", "use 0.5"),
            (self.timestep_skew > 0, "timestep skew must be positive", "use 3"),
            (self.batch_size >= 1, "batch must be at least 1", "use --batch 1"),
            (self.lr_scaling in LR_SCALING, f"unknown learning-rate scaling {self.lr_scaling!r}",
             f"use one of {', '.join(LR_SCALING)}"),
        ]
        for ok, message, hint in checks:
            if not ok:
                raise FlashError(message, hint, code="bad_argument")
        if (self.feature_alignment or self.correspondence_alignment) and not self.strong_augmentation:
            raise FlashError("the alignments need strong augmentation (they align the augmented video)",
                             "turn strong augmentation on or the alignments off", code="bad_argument")

    def scaled_rate(self, rate: float, effective_batch: int) -> float:
        """A learning rate set for batch 1, at ``effective_batch`` clips per step."""
        factor = {"sqrt": math.sqrt(effective_batch), "linear": float(effective_batch), "none": 1.0}
        return rate * factor[self.lr_scaling]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        strong = StrongAugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in data.pop("strong", {}).items()})
        distort = DistortConfig(**{k: tuple(v) if isinstance(v, list) else v
                                   for k, v in data.pop("distort", {}).items()})
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}, strong=strong, distort=distort)
