"""A patch discriminator for the decoder tune's adversarial loss (training only; never ships).

The shape of pix2pix's and taming-transformers' PatchGAN, sized for 64×64 frames: three strided
4×4 convolutions and a 1-channel output of one logit per overlapping patch (about 10 px across
at 64²), so the decoder is judged on local sharpness (limb edges), not on the whole picture.
The loss is the hinge loss of taming-transformers and SD's VAE training.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    def __init__(self, channels: int = 32, groups: int = 8):
        super().__init__()
        c = channels
        self.layers = nn.Sequential(
            nn.Conv2d(3, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.GroupNorm(groups, 2 * c), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 4 * c, 4, stride=1, padding=1), nn.GroupNorm(groups, 4 * c), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * c, 1, 4, stride=1, padding=1),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1], (N, 3, H, W) → patch logits (N, 1, h, w)."""
        return self.layers(pixels)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.relu(1 - real_logits).mean() + torch.relu(1 + fake_logits).mean())


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def adaptive_weight(reconstruction: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor,
                    limit: float = 1e4) -> torch.Tensor:
    """taming-transformers' balance: the adversarial term scaled so its gradient on the decoder's
    last layer is as large as the reconstruction loss's (then times the tune's weight)."""
    (rec_grad,) = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)
    (adv_grad,) = torch.autograd.grad(adversarial, last_layer, retain_graph=True)
    return (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0, limit).detach()
