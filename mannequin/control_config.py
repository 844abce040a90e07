"""What ``python -m mannequin.train_control`` trains: the pose ControlNet's settings.

The data (clips, actions, size, frames, mirrors, prompt dropout) and the ControlNet's shape come
from the base it is trained for (its ``training.json`` config and its UNet); what is here is the
rest. ``ControlConfig()`` is the real run (step count planned in ``docs/mannequin-control.md``);
``smoke_control_config()`` a few steps at the same settings (tests). Everything that decides the
trained weights is in here or in the base, and is recorded in the run; budget and threads are not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

CONDITION_INITS = ("unit-variance", "diffusers")


@dataclass(frozen=True)
class ControlConfig:
    name: str = "mannequin-pose"
    seed: int = 0
    # The condition embedding's widths, one per stage: len - 1 stride-2 convolutions, so 3 for
    # a 4x VAE (64x64 pose maps -> 16x16 latents). diffusers' SD default is (16, 32, 96, 256), 8x.
    # None: 16, 32, 64, ... with as many stages as the base's VAE scale needs (4x: 16/32/64).
    condition_channels: tuple[int, ...] | None = None
    # How the condition embedding's convolutions (all but its zero output one) start: "unit-variance"
    # (Gaussian, then scaled so their outputs have unit variance on the training pose maps, LSUV) or
    # "diffusers" (PyTorch's default). Measured: with the default, a pose map (1-px limbs on black)
    # moves the embedding's features 2000x less than its biases do, and 600 steps learned no pose.
    condition_init: str = "unit-variance"
    steps: int = 1500
    batch: int = 4  # clips of the base's frame count, as the base's UNet stage
    lr: float = 1e-3  # SD ControlNets use 1e-5; a small net from zero convolutions in ~1.5k steps (measured:
    # 1e-3 and 2e-4 alike learned nothing of the pose in 600 steps until the unit-variance init above)
    warmup: int = 100
    min_lr_fraction: float = 0.1  # cosine decay to this fraction of the peak
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # warmed up as the base's; the EMA weights ship
    # ---- bookkeeping ----
    eval_timesteps: tuple[int, ...] = (50, 250, 500, 750, 950)  # the test-split evaluation (train_base's)
    checkpoint_every: int = 100
    log_every: int = 25
    weights_dtype: str = "float16"  # as the base ships

    def embedding_channels(self, size_multiple: int) -> tuple[int, ...]:
        """The condition embedding's widths for a base whose latents are ``size_multiple``x smaller."""
        if self.condition_channels is not None:
            return tuple(self.condition_channels)
        stages = max(1, size_multiple.bit_length())  # 1 + log2 of a power of two
        return tuple(16 * 2 ** i for i in range(stages))

    def validate(self, size_multiple: int) -> None:
        """``size_multiple``: the base's VAE scale, which the condition embedding must match."""
        channels = self.embedding_channels(size_multiple)
        if 2 ** (len(channels) - 1) != size_multiple:
            raise ValueError(f"condition_channels {channels} scale the pose map down {2 ** (len(channels) - 1)}x; "
                             f"this base's latents are {size_multiple}x smaller than its frames")
        if min(self.steps, self.batch, self.checkpoint_every, self.log_every, *channels) < 1:
            raise ValueError("steps, batch, intervals and widths must be positive")
        if self.condition_init not in CONDITION_INITS:
            raise ValueError(f"condition_init must be one of {', '.join(CONDITION_INITS)}")
        if self.weights_dtype not in ("float16", "float32"):
            raise ValueError("weights_dtype must be float16 or float32")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ControlConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})

    def replace(self, **changes) -> "ControlConfig":
        return replace(self, **changes)


def smoke_control_config(**changes) -> ControlConfig:
    """The chain in seconds, on the smoke base: toy condition widths, 6 steps of 2 clips."""
    config = ControlConfig(name="mannequin-pose-smoke", condition_channels=(8, 8, 16), steps=6, batch=2, warmup=2,
                           eval_timesteps=(500,), checkpoint_every=2, log_every=2)
    return config.replace(**changes) if changes else config
