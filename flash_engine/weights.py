"""Where base weights live, whether they are complete, and fetching them for online users."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from flash_engine.errors import FlashError

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
MOTION_ADAPTER_REPO = "guoyww/animatediff-motion-adapter-v1-5-2"
SD15_FILES = [
    "model_index.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "tokenizer/*", "scheduler/*",
]
ADAPTER_FILES = ["config.json", "diffusion_pytorch_model.safetensors"]


def builtin_model() -> str:
    """The built-in default: ``mannequin`` when its shipped folder is complete, else ``tiny``."""
    from flash_engine.models.loading import mannequin_available

    return "mannequin" if mannequin_available() else "tiny"


def default_weights_dir() -> Path:
    """$FLASH_WEIGHTS_DIR, else the per-user data folder."""
    if os.environ.get("FLASH_WEIGHTS_DIR"):
        return Path(os.environ["FLASH_WEIGHTS_DIR"]).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or "~/.local/share").expanduser()
    return base / "flash-previs" / "weights"


def weights_status(folder: Path | None = None) -> dict:
    from flash_engine.models.loading import find_problems

    folder = folder or default_weights_dir()
    if not folder.is_dir():
        return {"folder": str(folder), "found": False, "problems": ["folder does not exist"]}
    problems = find_problems(folder, folder / "motion_adapter")
    return {"folder": str(folder), "found": not problems, "problems": problems}


def resolve_model_source(model: str) -> str:
    """``default`` → $FLASH_MODEL, else fetched weights if complete, else ``builtin_model()``."""
    if model != "default":
        return model
    if os.environ.get("FLASH_MODEL"):
        return os.environ["FLASH_MODEL"]
    status = weights_status()
    return status["folder"] if status["found"] else builtin_model()


def fetch(dest: Path | None = None) -> Path:
    """Download SD 1.5 + the AnimateDiff v1-5-2 motion adapter (safetensors only) into ``dest``."""
    from huggingface_hub import snapshot_download

    dest = (dest or default_weights_dir()).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        print(f"fetching {SD15_REPO} into {dest}", file=sys.stderr)
        snapshot_download(SD15_REPO, local_dir=dest, allow_patterns=SD15_FILES)
        print(f"fetching {MOTION_ADAPTER_REPO} into {dest / 'motion_adapter'}", file=sys.stderr)
        snapshot_download(MOTION_ADAPTER_REPO, local_dir=dest / "motion_adapter", allow_patterns=ADAPTER_FILES)
    except Exception as err:  # network, auth and disk errors all end the same way for a user
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FlashError(f"could not download the weights: {first}",
                         "check the network connection (or copy a diffusers-layout folder and pass --model DIR)",
                         code="download_failed") from err
    status = weights_status(dest)
    if not status["found"]:
        raise FlashError(f"download finished but {dest} is incomplete: {'; '.join(status['problems'])}",
                         "run `python -m flash_engine weights fetch` again", code="download_failed")
    return dest
