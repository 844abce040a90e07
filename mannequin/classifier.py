"""A small action classifier for mannequin clips: the benchmark's judge of "is this the action".

A per-frame CNN encoder (its embeddings also stand in for CLIP's in the frame-similarity and
temporal-consistency metrics) and a temporal head over the embeddings and their change from
frame 0. It is trained on train-split clips of all the world's actions with appearance
augmentation (channel shuffles, colour gains, blur: generated clips are blurrier than
renders) and judged on test-split clips, whose colours and camera angles it never saw.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 32


@dataclass(frozen=True)
class ClassifierConfig:
    actions: tuple[str, ...]
    width: int = 32
    embedding: int = 128
    steps: int = 600
    batch: int = 32
    learning_rate: float = 2e-3
    seed: int = 0


class ActionClassifier(nn.Module):
    def __init__(self, actions: tuple[str, ...], width: int = 32, embedding: int = 128):
        super().__init__()
        self.actions = tuple(actions)

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]

        cells = (INPUT_SIZE // 8) ** 2
        self.frame_encoder = nn.Sequential(*block(3, width), *block(width, 2 * width), *block(2 * width, 4 * width),
                                           nn.Flatten(), nn.Linear(4 * width * cells, embedding))
        self.temporal = nn.Sequential(nn.Conv1d(2 * embedding, embedding, 3, padding=1), nn.SiLU(),
                                      nn.Conv1d(embedding, embedding, 3, padding=1), nn.SiLU())
        self.head = nn.Linear(embedding, len(self.actions))

    def embed_frames(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) in [0, 1] → (B, F, E)."""
        batch, frames = clips.shape[:2]
        pixels = F.interpolate(clips.flatten(0, 1), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                               antialias=True, align_corners=False) * 2 - 1
        return self.frame_encoder(pixels).unflatten(0, (batch, frames))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        embeddings = self.embed_frames(clips)
        motion = torch.cat([embeddings, embeddings - embeddings[:, :1]], dim=-1).transpose(1, 2)
        return self.head(self.temporal(motion).mean(-1))


def augment(clips: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One appearance change per clip (the same for all its frames): shuffle, gains, blur, flip."""
    out = []
    for clip in clips:
        clip = clip[:, torch.randperm(3, generator=generator)]
        gains = 0.6 + 0.8 * torch.rand(3, generator=generator)
        clip = (clip * gains.view(1, 3, 1, 1)).clamp(0, 1)
        if float(torch.rand((), generator=generator)) < 0.5:
            clip = F.avg_pool2d(F.pad(clip, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        if float(torch.rand((), generator=generator)) < 0.5:
            clip = clip.flip(-1)
        out.append(clip)
    return torch.stack(out)


def to_batch(clips: list[np.ndarray]) -> torch.Tensor:
    """uint8 (F, H, W, 3) clips → float (B, F, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).float() / 255.0


def train_classifier(config: ClassifierConfig, clips: list[np.ndarray], labels: list[str],
                     log=lambda line: None) -> ActionClassifier:
    torch.manual_seed(config.seed)
    model = ActionClassifier(config.actions, config.width, config.embedding)
    data = to_batch(clips)
    targets = torch.tensor([config.actions.index(label) for label in labels])
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.learning_rate, total_steps=config.steps)
    model.train()
    for step in range(config.steps):
        index = torch.randint(len(data), (config.batch,), generator=generator)
        loss = F.cross_entropy(model(augment(data[index], generator)), targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            log(f"classifier step {step + 1}/{config.steps} loss {float(loss):.3f}")
    return model.eval()


@torch.no_grad()
def predict(model: ActionClassifier, clips: list[np.ndarray]) -> torch.Tensor:
    """Softmax probabilities (B, actions)."""
    return torch.cat([model(to_batch(clips[i:i + 32])).softmax(-1) for i in range(0, len(clips), 32)])


@torch.no_grad()
def frame_embeddings(model: ActionClassifier, clip: np.ndarray) -> torch.Tensor:
    return model.embed_frames(to_batch([clip]))[0]


def save_classifier(model: ActionClassifier, config: ClassifierConfig, folder: Path, meta: dict) -> None:
    from flash_engine.tensorfiles import save_tensors

    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(model.state_dict(), folder / "classifier.safetensors")
    (folder / "classifier.json").write_text(json.dumps({"config": asdict(config), **meta}, indent=1) + "\n")


def load_classifier(folder: Path, config: ClassifierConfig) -> tuple[ActionClassifier, dict] | None:
    """The saved classifier if it was trained with ``config``; else None."""
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / "classifier.json").read_text())
        state = load_file(folder / "classifier.safetensors")
    except (OSError, ValueError):
        return None
    saved = meta.get("config", {})
    if {**saved, "actions": tuple(saved.get("actions", ()))} != asdict(config):
        return None
    model = ActionClassifier(config.actions, config.width, config.embedding)
    model.load_state_dict(state)
    return model.eval(), meta
