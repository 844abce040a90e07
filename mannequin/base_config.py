"""What ``python -m mannequin.train_base`` trains: data, model sizes, the two stages' settings.

``BaseConfig()`` is the real run (sized and step-counted to fit ~85 minutes on the 2-core CPU
this project is developed on; see ``docs/mannequin-base.md``); ``smoke_config()`` is the same
chain at toy size, a few steps, a handful of clips (tests). Everything that decides the
trained weights is in here and recorded in the run; budget, threads and worker counts are
not (they change how long a run takes, never what it computes, unless the time budget
stops a stage early, which the run record then says).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from mannequin.actions import ACTIONS, PROMPTS

# Held out of the base so that few-shot FLASH training has something new to learn. Each is a
# motion no training action makes, built from body parts the training actions do move:
#   kick          a straight-leg swing to hip height on one leg   (nearest: march's knee lifts)
#   jumping_jack  arms and legs abducted together, with two hops   (nearest: side_bend's raised
#                 arms, jump's hop)
#   bow           the whole trunk pitching forward at the hips     (nearest: squat's spine flex)
HELD_OUT_ACTIONS = ("kick", "jumping_jack", "bow")
DEMO_ACTION = "jump"  # a training action, shown on a test-split (unseen) appearance and camera


@dataclass(frozen=True)
class BaseConfig:
    name: str = "mannequin"
    seed: int = 0
    # ---- data (mannequin clips, rendered once into the clip cache) ----
    held_out: tuple[str, ...] = HELD_OUT_ACTIONS
    actions: tuple[str, ...] | None = None  # None: every action not held out
    clips_per_action: int = 200  # train split
    data_seed: int = 0  # `python -m mannequin.generate --seed`
    size: int = 64
    frames: int = 16
    hflip: bool = True  # mirrored copies (train azimuth ranges are symmetric, so they stay in-split)
    eval_clips_per_action: int = 4  # test split (unseen appearances/cameras), every action
    demo_action: str = DEMO_ACTION
    # ---- sizes (the classes of flash_engine/models/tiny.py) ----
    # 3 blocks: a 4x VAE, 64x64 -> 16x16. Measured (docs/mannequin-base.md): the 8x VAE's 8x8 latent,
    # one cell per hand, lost the limbs (MediaPipe found the person in 2 of 64 round trips).
    vae_channels: tuple[int, ...] = (32, 64, 128)
    vae_layers: int = 1
    vae_groups: int = 8
    latent_channels: int = 4  # SD's 4: a 16x16 latent already keeps 4x SD's values per pixel
    unet_channels: tuple[int, ...] = (32, 64, 128)  # 16x16, 8x8, 4x4 latents: the 16x16 level is narrow,
    # so a step costs what the 8x8 UNet's did (measured: 1.70 vs 1.93 s, 1 thread, same load)
    unet_layers: int = 1
    unet_groups: int = 32
    head_width: int = 32  # channels per attention head, spatial and temporal
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_ff: int = 256
    max_frames: int = 32  # motion modules' position table (the pipeline's frame limit)
    # ---- stage 1: VAE on frames ----
    vae_steps: int = 2400
    vae_batch: int = 16  # whole frames per step (from 16 random clips)
    vae_crop: int = 32  # the first `vae_crop_fraction` of the steps train on random crops of this side...
    vae_crop_batch: int = 64  # ...this many per step (the same pixels per step as 16 whole frames)
    vae_crop_fraction: float = 0.8  # measured: 4x the samples per second, and a lower test L1 at equal time
    vae_lr: float = 1e-3
    vae_warmup: int = 100
    vae_l2_weight: float = 2.0  # loss = L1 + 2 L2 + 0.5 edge + KL (per-pixel means; KL per latent element)
    vae_edge_weight: float = 0.5  # L1 on horizontal/vertical pixel differences (sharp limbs)
    vae_kl_weight: float = 1e-5
    vae_logvar_init: float = -6.0  # posterior std starts at 0.05, not 1: the decoder sees the latent early
    scale_frames: int = 2048  # frames used to measure the latents' std (-> scaling_factor)
    # ---- stage 2: text encoder + UNet2D + motion modules, on latent videos ----
    unet_steps: int = 3600
    unet_batch: int = 4  # clips of `frames` frames
    unet_lr: float = 3e-4
    unet_warmup: int = 250
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    cfg_dropout: float = 0.1  # prompt replaced by "" (the pipeline's negative prompt)
    ema_decay: float = 0.999
    min_lr_fraction: float = 0.1  # cosine decay to this fraction of the peak
    # ---- bookkeeping ----
    checkpoint_every: int = 250
    log_every: int = 25
    weights_dtype: str = "float16"  # shipped safetensors; load_folder casts to its dtype
    vae_budget_share: float = 0.4  # the VAE stage stops at this share of --minutes-budget

    # ------------------------------------------------------------------ derived

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell along a side: diffusers' AutoencoderKL halves the size in every
        block but the last."""
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def train_actions(self) -> tuple[str, ...]:
        chosen = self.actions if self.actions is not None else tuple(ACTIONS)
        return tuple(a for a in chosen if a not in self.held_out)

    @property
    def prompts(self) -> dict[str, str]:
        return {action: PROMPTS[action] for action in self.train_actions}

    def validate(self) -> None:
        unknown = [a for a in (*self.held_out, *(self.actions or ()), self.demo_action) if a not in ACTIONS]
        if unknown:
            raise ValueError(f"unknown action(s) {', '.join(unknown)}; known: {', '.join(ACTIONS)}")
        if self.actions is not None and set(self.actions) & set(self.held_out):
            raise ValueError(f"held-out action(s) {sorted(set(self.actions) & set(self.held_out))} "
                             "cannot also be training actions")
        if not self.train_actions:
            raise ValueError("no training actions left after holding some out")
        if self.demo_action not in self.train_actions:
            raise ValueError(f"the demo action {self.demo_action!r} must be a training action")
        if len(self.vae_channels) < 2:
            raise ValueError("the VAE needs at least 2 blocks")
        if self.size % self.vae_scale or self.size < self.vae_scale:
            raise ValueError(f"size must be a multiple of the VAE's scale ({self.vae_scale})")
        if not 2 <= self.frames <= self.max_frames:
            raise ValueError(f"frames must be in [2, {self.max_frames}]")
        if self.weights_dtype not in ("float16", "float32"):
            raise ValueError("weights_dtype must be float16 or float32")
        for width in self.unet_channels:
            if width % self.head_width or width % self.unet_groups:
                raise ValueError(f"UNet width {width} is not a multiple of head_width and unet_groups")
        if self.text_width % self.text_heads:
            raise ValueError("text_width must be a multiple of text_heads")
        if self.vae_crop % self.vae_scale or not self.vae_scale <= self.vae_crop <= self.size or not 0 <= self.vae_crop_fraction <= 1:
            raise ValueError("vae_crop must be a multiple of the VAE's scale up to size, vae_crop_fraction in [0, 1]")
        if min(self.clips_per_action, self.vae_batch, self.vae_crop_batch, self.unet_batch,
               self.checkpoint_every) < 1:
            raise ValueError("clip counts, batches and the checkpoint interval must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BaseConfig":
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)

    def replace(self, **changes) -> "BaseConfig":
        return replace(self, **changes)


def smoke_config(**changes) -> BaseConfig:
    """The whole chain in seconds: toy widths, 2 training actions x 2 clips, a few steps each."""
    config = BaseConfig(
        name="mannequin-smoke",
        actions=("arm_wave", "jump"),
        clips_per_action=2,
        eval_clips_per_action=1,
        vae_channels=(8, 16, 16),
        vae_groups=4,
        latent_channels=4,
        unet_channels=(16, 32, 32),
        unet_groups=8,
        head_width=8,
        text_width=16,
        text_heads=2,
        text_ff=32,
        vae_steps=6,
        vae_batch=4,
        vae_crop_batch=8,
        vae_crop_fraction=0.5,
        vae_warmup=2,
        scale_frames=16,
        unet_steps=6,
        unet_batch=2,
        unet_warmup=2,
        checkpoint_every=2,
        log_every=2,
    )
    return config.replace(**changes) if changes else config
