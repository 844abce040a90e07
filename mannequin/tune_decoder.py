"""Train the built-in base's VAE decoder longer, with its encoder frozen, so the latents the
UNet learned stay exactly what they were (SD's "ft-MSE" VAE was made the same way).

    python -m mannequin.tune_decoder --from-checkpoint RUN/vae --work DIR --steps N --resume \\
        [--minutes-budget M] [--threads 1]
    python -m mannequin.tune_decoder --work DIR --apply MODEL_FOLDER      # write the decoder in

Stage 1 of ``mannequin.train_base`` stops at a share of its time budget while its loss still
falls; the decoder is what draws the limbs. This runs more steps of the same loss (L1 + 2·L2 +
edges, whole 64×64 frames from the same training clips, mirrored half the time) on the decoder
and ``post_quant_conv`` only, from the VAE stage's checkpoint, with the same resumable
checkpoints (the same command continues after any stop). ``--latent-noise S`` adds Gaussian
noise of a random std in [0, S] latent stds to each frame's latents before decoding: the UNet's
samples are never exactly on the encoder's latents, and a decoder trained on those alone
turns the difference into speckle. ``--from-checkpoint`` may also name an earlier tune's
``decoder/`` folder, to go on from it with other settings, or an exported model's folder (the
shipped decoder as it is). ``--adversarial W`` adds a patch discriminator's hinge loss
(``mannequin.discriminator``, taming-transformers' adaptive balance times W): at 64² MediaPipe
loses the person after a Gaussian blur of 0.5–0.75 px, so the decoder must be sharper than an
L1/L2 loss makes it (docs/mannequin-base.md). ``--apply`` replaces the decoder's
weights in an exported model's ``vae/`` after checking that its encoder is the one this tune
started from, and records the tune in the model's ``training.json``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mannequin import train_base as tb
from mannequin.base_config import BaseConfig

TUNED_PREFIXES = ("decoder.", "post_quant_conv.")
RECORD = "decoder_tune.json"


@dataclass(frozen=True)
class TuneSettings:
    steps: int = 3000
    lr: float = 3e-4
    warmup: int = 50
    seed: int = 0
    latent_noise: float = 0.0  # max std of the noise added to the latents, in latent stds
    # weight of a patch discriminator's hinge term (times taming-transformers' adaptive balance);
    # 0: none. It enters after ``adversarial_after`` steps; the discriminator trains from step 0.
    adversarial: float = 0.0
    adversarial_after: int = 100

    def saved_as(self) -> dict:
        """The settings a checkpoint records. Those added after the first tunes are left out while
        they are off, so an older tune's checkpoint still matches the same settings today."""
        saved = dict(self.__dict__)
        if not self.latent_noise:
            del saved["latent_noise"]
        if not self.adversarial:
            del saved["adversarial"], saved["adversarial_after"]
        return saved


class DecoderStage(tb.VaeStage):
    name = "decoder"

    def __init__(self, config: BaseConfig, vae, frames, settings: TuneSettings, latent_std: float = 1.0):
        import torch

        super().__init__(config.replace(vae_crop_fraction=0.0, vae_steps=settings.steps, vae_lr=settings.lr,
                                        vae_warmup=settings.warmup, seed=settings.seed), vae, frames)
        for name, param in vae.named_parameters():
            param.requires_grad_(name.startswith(TUNED_PREFIXES))
        self.params = {k: v for k, v in vae.named_parameters() if k.startswith(TUNED_PREFIXES)}
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=settings.lr, betas=(0.9, 0.99),
                                           weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(settings.seed * 1000 + 7)
        self.latent_noise = settings.latent_noise
        self.latent_std = latent_std
        self.settings = settings
        self.discriminator, self.disc_losses = None, []
        if settings.adversarial:
            from mannequin.discriminator import PatchDiscriminator

            with torch.random.fork_rng():  # its initial weights from the tune's seed, not the global state
                torch.manual_seed(settings.seed * 1000 + 11)
                self.discriminator = PatchDiscriminator()
            self.disc_params = dict(self.discriminator.named_parameters())
            self.disc_optimizer = torch.optim.AdamW(list(self.disc_params.values()), lr=settings.lr,
                                                    betas=(0.5, 0.9), weight_decay=0.0)

    def train_step(self) -> float:
        if self.discriminator is None:
            return super().train_step()
        import torch

        from mannequin.discriminator import adaptive_weight, generator_loss, hinge_discriminator_loss

        for optimizer in (self.optimizer, self.disc_optimizer):
            for group in optimizer.param_groups:
                group["lr"] = self.lr()
        pixels = self.batch()
        reconstruction, parts = tb.vae_loss(self.vae, pixels, self.generator, self.config,
                                            self.latent_noise_std(len(pixels)), keep_decoded=True)
        decoded, loss = parts["decoded"], reconstruction
        if self.step >= self.settings.adversarial_after:
            self.discriminator.requires_grad_(False)  # the decoder's step moves the decoder only
            adversarial = generator_loss(self.discriminator(decoded))
            balance = adaptive_weight(reconstruction, adversarial, self.vae.decoder.conv_out.weight)
            loss = reconstruction + self.settings.adversarial * balance * adversarial
            self.discriminator.requires_grad_(True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        disc_loss = hinge_discriminator_loss(self.discriminator(pixels), self.discriminator(decoded.detach()))
        disc_loss.backward()
        self.disc_optimizer.step()
        self.disc_optimizer.zero_grad(set_to_none=True)
        self.disc_losses.append(float(disc_loss.detach()))
        self.step += 1
        return float(reconstruction.detach())  # the loss curve stays the reconstruction's, as in other tunes

    def checkpoint_tensors(self) -> tuple[dict, dict]:
        from flash_engine.training.checkpoint import optimizer_tensors

        tensors, meta = super().checkpoint_tensors()
        if self.discriminator is not None:
            tensors.update({f"disc.{k}": v for k, v in self.disc_params.items()})
            meta["disc_optimizer"] = optimizer_tensors(self.disc_optimizer, "disc_optim", tensors)
            meta["disc_losses"] = self.disc_losses
        return tensors, meta

    def restore(self, meta: dict, tensors: dict) -> None:
        import torch

        from flash_engine.training.checkpoint import load_optimizer

        super().restore(meta, tensors)
        if self.discriminator is not None:
            with torch.no_grad():
                for name, param in self.disc_params.items():
                    param.copy_(tensors[f"disc.{name}"])
            load_optimizer(self.disc_optimizer, "disc_optim", tensors, meta["disc_optimizer"])
            self.disc_losses = list(meta["disc_losses"])

    def latent_noise_std(self, frames: int):
        import torch

        if not self.latent_noise:
            return None
        return torch.rand(frames, generator=self.generator) * self.latent_noise * self.latent_std


def encoder_state(vae) -> dict:
    return {k: v.detach().float().clone() for k, v in vae.state_dict().items() if not k.startswith(TUNED_PREFIXES)}


def load_stage_vae(checkpoint_folder: Path):
    """The VAE of a train_base run's stage-1 checkpoint, with the run's config; or of a tune's
    ``decoder/`` checkpoint (its decoder over the VAE that tune started from); or of an exported
    model's folder (its ``vae/`` as shipped, with its ``training.json``'s config)."""
    exported = Path(checkpoint_folder)
    if (exported / "vae" / "config.json").is_file():
        import torch
        from diffusers import AutoencoderKL

        record = tb._read_json(exported / "training.json")
        if not record or "config" not in record:
            raise SystemExit(f"error: {exported} has no training.json of mannequin.train_base; "
                             "tune a model this project trained")
        vae = AutoencoderKL.from_pretrained(exported / "vae", torch_dtype=torch.float32)
        return vae, {"step": "export"}, BaseConfig.from_dict(record["config"])
    found = tb.load_checkpoint(Path(checkpoint_folder))
    if found is None:
        raise SystemExit(f"error: no VAE checkpoint in {checkpoint_folder} (the train_base run's vae/ folder "
                         "or a tune's decoder/ folder)")
    meta, tensors = found
    params = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}
    if all(k.startswith(TUNED_PREFIXES) for k in params):  # a tune holds the decoder only
        record = tb._read_json(Path(checkpoint_folder).parent / RECORD)
        if not record:
            raise SystemExit(f"error: {checkpoint_folder} holds a decoder without its tune's {RECORD}")
        vae, _, config = load_stage_vae(Path(record["from"]))
        vae.load_state_dict({**vae.state_dict(), **params})
        return vae, meta, config
    config = BaseConfig.from_dict(meta["config"])
    vae = tb.build_parts(config)["vae"]
    vae.load_state_dict(params)
    return vae, meta, config


def tune(args) -> int:
    import torch

    if args.latent_noise < 0:
        raise SystemExit(f"error: --latent-noise must be 0 or more (latent stds), not {args.latent_noise:g}")
    if args.adversarial < 0:
        raise SystemExit(f"error: --adversarial must be 0 or more, not {args.adversarial:g}")
    settings = TuneSettings(steps=args.steps, latent_noise=args.latent_noise, adversarial=args.adversarial,
                            adversarial_after=args.adversarial_after)
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    log = tb.Log(work / "tune.log", args.quiet)
    vae, meta, config = load_stage_vae(args.from_checkpoint)
    start_encoder = encoder_state(vae)
    from mannequin.generate import default_cache_dir

    cache = Path(args.cache).expanduser() if args.cache else default_cache_dir()
    tb.render_clips(config, cache, 2, log)  # a new machine's cache is empty; clips already there are kept
    frames = tb.load_frames(tb.training_clips(config, cache), config.frames, log).frames
    # the latents' std (1 / the scaling factor train_base measures), to give the noise in its units
    latent_std = 1.0 / tb.latent_scale(vae, frames, config.scale_frames, config.seed * 1000 + 4) \
        if settings.latent_noise else 1.0
    stage = DecoderStage(config, vae, frames, settings, latent_std)
    folder = work / "decoder"
    resumed = tb.load_checkpoint(folder)
    if resumed is not None:
        if not args.resume:
            raise SystemExit(f"error: {folder} holds a tune at step {resumed[0]['step']}; pass --resume to continue")
        if resumed[0].get("settings") != settings.saved_as():
            raise SystemExit("error: the tune in --work used other settings; use another --work")
        stage.restore(resumed[0], resumed[1])
    stopping = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stopping.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stopping.update(now=True))
    budget_s = (args.minutes_budget or float("inf")) * 60
    status = tb.train_stage(stage, folder, config.replace(vae_steps=settings.steps),
                            tb.StopRules(should_stop=lambda: stopping["now"]), lambda: budget_s, log)
    with folder.joinpath(tb.CHECKPOINT_JSON).open() as handle:  # the settings beside the checkpoint
        checkpoint_meta = json.load(handle)
    checkpoint_meta["settings"] = settings.saved_as()
    tb._write_json(folder / tb.CHECKPOINT_JSON, checkpoint_meta)
    changed = [k for k, v in encoder_state(vae).items() if not torch.equal(v, start_encoder[k])]
    if changed:  # the point of the tune: the UNet's latents must not move
        raise SystemExit(f"error: the encoder changed during the tune ({changed[0]}, ...)")
    tb._write_json(work / RECORD, {"status": status, "step": stage.step, "steps": settings.steps,
                                   "settings": settings.saved_as(), "wall_s": round(stage.elapsed, 1),
                                   "from": str(Path(args.from_checkpoint).resolve()),
                                   "from_step": meta["step"], "machine": tb.machine_info(),
                                   "loss_last_100": float(np.mean(stage.losses[-100:])) if stage.losses else None,
                                   "threads": torch.get_num_threads()})
    log(f"tune: {status} at step {stage.step} of {settings.steps} ({stage.elapsed / 60:.1f} min)")
    return 0 if status in ("done", "budget") else 130


def apply(args) -> int:
    import torch
    from diffusers import AutoencoderKL

    work = Path(args.work).expanduser()
    found = tb.load_checkpoint(work / "decoder")
    record = tb._read_json(work / RECORD)
    if found is None or not record:
        raise SystemExit(f"error: no finished tune in {work}; run the tune first")
    meta, tensors = found
    model = Path(args.apply).expanduser()
    vae_dir = model / "vae"
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32)
    stage_vae, _, _ = load_stage_vae(record["from"])
    # The exported encoder is the stage's, rounded to the shipped dtype: check it is that one.
    for key, value in encoder_state(stage_vae).items():
        shipped = vae.state_dict()[key].float()
        if not torch.allclose(shipped, value.to(vae.dtype).float(), atol=2e-3 * (1 + value.abs().max().item())):
            raise SystemExit(f"error: {vae_dir} was not exported from the VAE this tune started from ({key})")
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if name.startswith(TUNED_PREFIXES):
                param.copy_(tensors[f"param.{name}"])
    dtype = getattr(torch, json.loads((model / "training.json").read_text()).get("config", {}).get(
        "weights_dtype", "float16"))
    staging = model / ".vae-tuned"
    vae.to(dtype).save_pretrained(staging, safe_serialization=True)
    for file in staging.iterdir():
        file.replace(vae_dir / file.name)
    staging.rmdir()
    training = json.loads((model / "training.json").read_text())
    training["decoder_tune"] = {**record, "command": ["python", "-m", "mannequin.tune_decoder", *sys.argv[1:]]}
    tb._write_json(model / "training.json", training)
    print(f"wrote the tuned decoder into {vae_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mannequin.tune_decoder", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-checkpoint", type=Path,
                        help="the train_base run's vae/ checkpoint folder, a tune's decoder/, or an exported model")
    parser.add_argument("--work", type=Path, required=True, help="the tune's state (checkpoints, log)")
    parser.add_argument("--steps", type=int, default=TuneSettings.steps)
    parser.add_argument("--minutes-budget", type=float, default=None)
    parser.add_argument("--latent-noise", type=float, default=TuneSettings.latent_noise,
                        help="max std of noise added to the latents while tuning, in latent stds (e.g. 0.3)")
    parser.add_argument("--adversarial", type=float, default=TuneSettings.adversarial,
                        help="weight of a patch discriminator's term (e.g. 0.5, SD's VAE); 0: none")
    parser.add_argument("--adversarial-after", type=int, default=TuneSettings.adversarial_after,
                        help="steps before the adversarial term enters (the discriminator trains from the start)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--apply", type=Path, metavar="MODEL_FOLDER", help="write the tuned decoder into this export")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.apply:
        return apply(args)
    if not args.from_checkpoint:
        parser.error("--from-checkpoint is required to tune")
    return tune(args)


if __name__ == "__main__":
    sys.exit(main())
