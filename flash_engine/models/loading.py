"""Load a base model from its source: a built-in name or a local diffusers-layout folder.

Built in (``BUILT_IN``): ``mannequin``, the small trained default model (64×64, 16 frames),
whose weights ship in ``MANNEQUIN_DIR`` (this package's ``mannequin/`` folder, written by
``mannequin/train_base.py``: the layout below plus ``mannequin.json``, its model card, and
``demo_reference.png``) and load through ``load_folder`` like any folder; ``tiny``, the
architecture at toy size with random weights, built in code (plumbing checks, tests); and
``sd15-random`` (benchmarks).

A folder is Stable Diffusion 1.5 in the diffusers layout plus an AnimateDiff motion
adapter::

    DIR/unet/            config.json + diffusion_pytorch_model.safetensors
    DIR/vae/             config.json + diffusion_pytorch_model.safetensors
    DIR/text_encoder/    config.json + model.safetensors
    DIR/tokenizer/       tokenizer files (vocab.json + merges.txt, or tokenizer.json)
    DIR/scheduler/       scheduler_config.json
    DIR/motion_adapter/  config.json + diffusion_pytorch_model.safetensors

(the adapter may live elsewhere: ``motion_adapter=`` overrides it). Everything loads with
``local_files_only`` and safetensors only: pickle checkpoints are refused, never run. A
weights folder never runs code either: a config that names its own code (``auto_map``) is
refused before anything loads, and every loader is told ``trust_remote_code=False`` (without
it transformers asks "run the custom code? [y/N]" on stdin, which in ``serve`` is the protocol).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

from flash_engine.errors import FlashError
from flash_engine.model_actions import ModelActions, from_card
from flash_engine.models.base import BaseModel, assemble_base, vae_size_multiple
from flash_engine.tensorfiles import safetensors_problem, tensor_ranges

WEIGHT_FOLDERS = ("unet", "vae", "text_encoder", "motion_adapter")
LOADED_FOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")  # under the model folder
CUSTOM_CODE_KEY = "auto_map"  # how transformers/diffusers configs name code shipped with the weights
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
FINGERPRINT_CHUNK = 4 << 20
# The VAE's decoder side. A tune of it alone (SD's ft-MSE VAE is one) leaves what the latents
# mean as it was, so artifacts that never decode (a ControlNet, an action without a decoder file)
# still fit the tuned base.
DECODER_SIDE = ("decoder.", "post_quant_conv.")
TENSOR_SAMPLE = 4 << 10
MANNEQUIN = "mannequin"
MANNEQUIN_DIR = Path(__file__).parent / "mannequin"  # shipped weights of the built-in default model
MANNEQUIN_CARD = "mannequin.json"
# Built-in model sources: name → (module, builder). ``mannequin`` loads MANNEQUIN_DIR.
BUILT_IN = {
    MANNEQUIN: ("flash_engine.models.loading", "load_mannequin"),
    "tiny": ("flash_engine.models.tiny", "build_tiny"),
    "sd15-random": ("flash_engine.models.sd15_random", "build_sd15_random"),
}


def _has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*.safetensors"))


def _loaded_folders(model_dir: Path, adapter_dir: Path) -> dict[str, Path]:
    return {**{name: model_dir / name for name in LOADED_FOLDERS}, "motion_adapter": adapter_dir}


def find_custom_code(model_dir: Path, adapter_dir: Path) -> list[str]:
    """The config files (``FOLDER/FILE``) that name code of their own to run: none may load."""
    found = []
    for name, folder in _loaded_folders(model_dir, adapter_dir).items():
        for config in sorted(folder.glob("*config*.json")) if folder.is_dir() else ():
            try:
                data = json.loads(config.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # unreadable: the loader reports it
            if isinstance(data, dict) and CUSTOM_CODE_KEY in data:
                found.append(f"{name}/{config.name}")
    return found


def find_problems(model_dir: Path, adapter_dir: Path) -> list[str]:
    """Everything missing from a weights folder, as short phrases (empty when complete)."""
    problems = []
    for name, folder in _loaded_folders(model_dir, adapter_dir).items():
        if not folder.is_dir():
            problems.append(f"no {name}/ folder")
            continue
        if name in WEIGHT_FOLDERS:
            if not (folder / "config.json").is_file():
                problems.append(f"{name}/config.json missing")
            if not _has_safetensors(folder):
                pickled = any(folder.glob("*.bin")) or any(folder.glob("*.ckpt")) or any(folder.glob("*.pt"))
                problems.append(
                    f"{name}/ has only pickle weights (convert them to .safetensors)"
                    if pickled
                    else f"{name}/ has no .safetensors weights"
                )
        elif name == "tokenizer":
            if not any(all((folder / f).is_file() for f in files) for files in TOKENIZER_FILES):
                problems.append("tokenizer/ has neither tokenizer.json nor vocab.json + merges.txt")
        elif name == "scheduler" and not (folder / "scheduler_config.json").is_file():
            problems.append("scheduler/scheduler_config.json missing")
    return problems


def check_weights_folder(model_dir: Path, adapter_dir: Path) -> None:
    if not model_dir.is_dir():
        raise FlashError(
            f"weights folder not found: {model_dir}",
            "run `python -m flash_engine weights fetch` or pass --model tiny",
            code="weights_missing",
        )
    custom = find_custom_code(model_dir, adapter_dir)
    if custom:
        raise FlashError(
            f"weights folder {model_dir} asks to run custom code ({CUSTOM_CODE_KEY} in {', '.join(custom)}), "
            "which FLASH never does",
            f"delete the {CUSTOM_CODE_KEY} entry from those files, or use weights without custom code",
            code="weights_unsafe",
        )
    problems = find_problems(model_dir, adapter_dir)
    if problems:
        raise FlashError(
            f"incomplete weights folder {model_dir}: " + "; ".join(problems),
            "re-run `python -m flash_engine weights fetch --dest DIR` or fix the folder",
            code="weights_incomplete",
        )


def fingerprint_files(paths: list[Path]) -> str:
    """A content fingerprint of weight files that costs milliseconds, not a full hash.

    Each file contributes its name, size and three 4 MiB samples (start, middle, end):
    any retraining changes those bytes, so a different base is told apart without
    reading gigabytes at every load.
    """
    digest = hashlib.sha256()
    for path in sorted(paths):
        size = path.stat().st_size
        digest.update(f"{path.parent.name}/{path.name}:{size}".encode())
        with path.open("rb") as handle:
            for offset in sorted({0, max(0, size // 2 - FINGERPRINT_CHUNK // 2), max(0, size - FINGERPRINT_CHUNK)}):
                handle.seek(offset)
                digest.update(handle.read(FINGERPRINT_CHUNK))
    return digest.hexdigest()[:16]


def fingerprint_latent_side(paths: list[Path]) -> str:
    """``fingerprint_files`` blind to the VAE's decoder side: a VAE file (in a ``vae/`` folder)
    contributes its other tensors' names, dtypes, shapes and first, middle and last 4 KiB instead
    of its bytes (samples, as ``fingerprint_files`` takes: a retraining changes every byte); every
    other file, and a damaged VAE file (refused with its one-line error when the base loads), as
    ``fingerprint_files`` has it."""
    vae_files = sorted(p for p in paths if p.parent.name == "vae" and safetensors_problem(p) is None)
    digest = hashlib.sha256(fingerprint_files([p for p in paths if p not in vae_files]).encode())
    for path in vae_files:
        ranges = tensor_ranges(path)
        with path.open("rb") as handle:
            for name in sorted(n for n in ranges if not n.startswith(DECODER_SIDE)):
                dtype, shape, begin, end = ranges[name]
                digest.update(f"{path.name}/{name}:{dtype}:{shape}".encode())
                for offset in sorted({begin, max(begin, (begin + end - TENSOR_SAMPLE) // 2),
                                      max(begin, end - TENSOR_SAMPLE)}):
                    handle.seek(offset)
                    digest.update(handle.read(min(TENSOR_SAMPLE, end - offset)))
    return digest.hexdigest()[:16]


def fits_base(base_identity: str, base_latent_identity: str | None, trained_on: str,
              trained_on_latent: str | None, decodes: bool) -> bool:
    """Whether an artifact trained on ``trained_on`` (with, where it recorded it, that base's
    latent identity) works on this base: the same weights, or for one that never decodes, the
    same weights but for the VAE's decoder side."""
    if trained_on == base_identity:
        return True
    return not decodes and bool(trained_on_latent) and trained_on_latent == base_latent_identity


def load_folder(model_dir: Path, adapter_dir: Path | None = None, dtype=None) -> BaseModel:
    import torch
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    model_dir = Path(model_dir).expanduser().resolve()
    adapter_dir = Path(adapter_dir).expanduser().resolve() if adapter_dir else model_dir / "motion_adapter"
    check_weights_folder(model_dir, adapter_dir)
    dtype = dtype or torch.float32
    never_run_code = dict(local_files_only=True, trust_remote_code=False)
    common = dict(use_safetensors=True, **never_run_code)
    try:
        unet2d = UNet2DConditionModel.from_pretrained(model_dir / "unet", torch_dtype=dtype, **common)
        motion_adapter = MotionAdapter.from_pretrained(adapter_dir, torch_dtype=dtype, **common)
        vae = AutoencoderKL.from_pretrained(model_dir / "vae", torch_dtype=dtype, **common)
        text_encoder = CLIPTextModel.from_pretrained(model_dir / "text_encoder", dtype=dtype, **common)
        tokenizer = AutoTokenizer.from_pretrained(model_dir / "tokenizer", **never_run_code)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        if "trust_remote_code" in str(err):  # a custom-code case find_custom_code does not know
            raise FlashError(
                f"weights folder {model_dir} asks to run custom code, which FLASH never does",
                f"delete the {CUSTOM_CODE_KEY} entries from its config files, or use weights without custom code",
                code="weights_unsafe",
            ) from err
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FlashError(
            f"could not load weights from {model_dir}: {first_line}",
            "check the folder is Stable Diffusion 1.5 + an AnimateDiff motion adapter in the diffusers layout",
            code="weights_incomplete",
        ) from err
    scheduler_config = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    weight_files = _weight_files(model_dir, adapter_dir)
    return assemble_base(
        unet2d=unet2d,
        motion_adapter=motion_adapter,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        identity=fingerprint_files(weight_files),
        source=str(model_dir),
        latent_identity=fingerprint_latent_side(weight_files),
    )


def mannequin_problems() -> list[str]:
    """What is missing from the shipped ``mannequin`` folder (empty when it is complete)."""
    if not MANNEQUIN_DIR.is_dir():
        return [f"{MANNEQUIN_DIR} is missing"]
    return find_problems(MANNEQUIN_DIR, MANNEQUIN_DIR / "motion_adapter")


def mannequin_available() -> bool:
    return not mannequin_problems()


def check_mannequin() -> None:
    """A one-line FlashError naming the fix when the built-in ``mannequin`` cannot load."""
    problems = mannequin_problems()
    if problems:
        raise FlashError(
            f"the built-in model 'mannequin' is missing or incomplete: {'; '.join(problems)}",
            "reinstall FLASH Previs, which ships that folder, or pass --model tiny or --model DIR",
            code="weights_missing",
        )


def mannequin_card() -> dict:
    """The shipped model card (``mannequin.json``: resolution, frames, actions, prompts, demo settings)."""
    check_mannequin()
    card = MANNEQUIN_DIR / MANNEQUIN_CARD
    if not card.is_file():
        raise FlashError(f"the built-in model 'mannequin' has no model card ({card} missing)",
                         "reinstall FLASH Previs, or pass --model tiny", code="weights_incomplete")
    return json.loads(card.read_text(encoding="utf-8"))


def model_card_actions(source: str | Path) -> ModelActions | None:
    """The actions a model's card names, read without loading any weights: ``mannequin``'s
    shipped card, or a folder's own ``mannequin.json`` (a copy or a retrain of it). None for
    the models built in code and for folders without a card (SD 1.5)."""
    if str(source) in BUILT_IN and str(source) != MANNEQUIN:
        return None
    model_dir = MANNEQUIN_DIR if str(source) == MANNEQUIN else Path(source).expanduser()
    path = model_dir / MANNEQUIN_CARD
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FlashError(f"unreadable model card {path}: {err}", "reinstall FLASH Previs, or fix or remove the file",
                         code="weights_incomplete") from err
    name = card.get("name") if isinstance(card, dict) else None
    return from_card(card, name if isinstance(name, str) and name.strip() else model_dir.name, str(path))


def load_mannequin(dtype=None) -> BaseModel:
    """The built-in default model: MANNEQUIN_DIR through ``load_folder`` (fp16 files, cast to ``dtype``)."""
    check_mannequin()
    base = load_folder(MANNEQUIN_DIR, dtype=dtype)
    base.source = MANNEQUIN  # identity stays the content fingerprint: actions trained on it check it
    return base


def load_base(source: str | Path, adapter_dir: str | Path | None = None, dtype=None) -> BaseModel:
    """``mannequin``, ``tiny``, ``sd15-random`` (benchmarks) or a folder path → a ``BaseModel`` on the CPU."""
    if str(source) == MANNEQUIN:
        return load_mannequin(dtype)
    if str(source) in BUILT_IN:
        module_name, builder = BUILT_IN[str(source)]
        base = getattr(importlib.import_module(module_name), builder)()
        if dtype is not None:
            for module in base.modules().values():
                module.to(dtype)
        return base
    return load_folder(Path(source), Path(adapter_dir) if adapter_dir else None, dtype=dtype)


def save_folder(parts: dict, dest: Path, scheduler_config: dict | None = None) -> Path:
    """Write parts (as ``tiny_parts()`` returns them) in the layout ``load_folder`` reads."""
    from flash_engine.models.base import animatediff_scheduler

    dest = Path(dest)
    parts["unet2d"].save_pretrained(dest / "unet", safe_serialization=True)
    parts["vae"].save_pretrained(dest / "vae", safe_serialization=True)
    parts["text_encoder"].save_pretrained(dest / "text_encoder", safe_serialization=True)
    parts["tokenizer"].save_pretrained(dest / "tokenizer")
    parts["motion_adapter"].save_pretrained(dest / "motion_adapter", safe_serialization=True)
    animatediff_scheduler(scheduler_config).save_pretrained(dest / "scheduler")
    return dest


DIFFUSERS_DEFAULT_MAX_FRAMES = 32  # MotionAdapter's motion_max_seq_length when its config leaves it out


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        return config
    except (OSError, ValueError) as err:
        raise FlashError(f"unreadable model config {path}: {err}",
                         "re-run `python -m flash_engine weights fetch` or fix the folder",
                         code="weights_incomplete") from err


def model_limits(source: str | Path, adapter_dir: str | Path | None = None) -> dict:
    """What a model takes, read from its configs without loading any weights: its native
    ``width``/``height`` (the default clip and training size), ``size_multiple`` (its VAE's
    scale: every size is a multiple of it), ``max_frames`` (its motion modules' length),
    ``latent_channels`` and the ``fps`` its motion was learned at."""
    from flash_engine.requests import DEFAULT_FPS

    if str(source) in BUILT_IN and str(source) != MANNEQUIN:
        module_name, _ = BUILT_IN[str(source)]
        return {**importlib.import_module(module_name).LIMITS, "fps": DEFAULT_FPS}
    model_dir = MANNEQUIN_DIR if str(source) == MANNEQUIN else Path(source).expanduser()
    adapter = Path(adapter_dir).expanduser() if adapter_dir else model_dir / "motion_adapter"
    unet = _read_config(model_dir / "unet" / "config.json")
    vae = _read_config(model_dir / "vae" / "config.json")
    motion = _read_config(adapter / "config.json")
    try:
        scale = vae_size_multiple(vae)
        sample = unet.get("sample_size", 64)
        height, width = (sample, sample) if isinstance(sample, int) else sample
        return {"width": int(width) * scale, "height": int(height) * scale, "size_multiple": scale,
                "max_frames": int(motion.get("motion_max_seq_length", DIFFUSERS_DEFAULT_MAX_FRAMES)),
                "latent_channels": int(unet.get("in_channels", 4)), "fps": DEFAULT_FPS}
    except (TypeError, ValueError) as err:
        raise FlashError(f"unexpected model config in {model_dir}: {err}", "fix the folder's config.json files",
                         code="weights_incomplete") from err


def _weight_files(model_dir: Path, adapter_dir: Path) -> list[Path]:
    return [f for folder in (model_dir / "unet", model_dir / "vae", model_dir / "text_encoder", adapter_dir)
            for f in folder.glob("*.safetensors")]


def _source_weight_files(source: str | Path, adapter_dir: str | Path | None) -> list[Path] | None:
    if str(source) in BUILT_IN and str(source) != MANNEQUIN:
        return None
    model_dir = (MANNEQUIN_DIR if str(source) == MANNEQUIN else Path(source).expanduser()).resolve()
    adapter = Path(adapter_dir).expanduser().resolve() if adapter_dir else model_dir / "motion_adapter"
    return _weight_files(model_dir, adapter)


def base_identity(source: str | Path, adapter_dir: str | Path | None = None) -> str | None:
    """The identity a loaded base will have (the content fingerprint of its weight files),
    told in milliseconds without loading; None for the models built in code (known once built)."""
    files = _source_weight_files(source, adapter_dir)
    return None if files is None else fingerprint_files(files)


def base_latent_identity(source: str | Path, adapter_dir: str | Path | None = None) -> str | None:
    """The latent identity a loaded base will have (``fingerprint_latent_side``), told the same way."""
    files = _source_weight_files(source, adapter_dir)
    return None if files is None else fingerprint_latent_side(files)

