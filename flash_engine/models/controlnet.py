"""ControlNets: which folder steers a control, whether it fits the model, and loading it.

Any diffusers-layout ControlNet folder works (``config.json`` + a ``.safetensors`` file, as
``ControlNetModel.save_pretrained`` writes it), so the public SD 1.5 ones load unchanged.
As everywhere in the engine, safetensors only: pickled weights are refused, never run, and
a config naming its own code is refused before anything loads.

Which ControlNet a control uses: the one the request names (``--pose-controlnet DIR``,
``--depth-controlnet DIR``), else the model's own (``MODEL/controlnet_pose/``,
``MODEL/controlnet_depth/``), else, for a Stable Diffusion 1.5 model, the public one
``weights fetch --control`` downloads. A ControlNet must fit the model it steers (the UNet's
input channels, text width and encoder layout, and a condition embedding that lands on the
model's latent size); that is told from the configs, before any weights load. A ControlNet
trained for one base (``python -m mannequin.train_control``) also names that base's identity in
``flash_controlnet.json``; another base, even of the same shape, is then refused.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from flash_engine.errors import FlashError
from flash_engine.models.base import vae_size_multiple
from flash_engine.weights import controlnet_problems

CONFIG = "config.json"
OWN_FOLDERS = {"pose": "controlnet_pose", "depth": "controlnet_depth"}  # inside a model folder
# What a ControlNet shares with the UNet it steers: its residuals are added to that UNet's
# skip connections, so these must be equal.
GEOMETRY = ("in_channels", "cross_attention_dim", "block_out_channels", "layers_per_block")
# Stable Diffusion 1.5's UNet, as the public ControlNets were trained for.
SD15_GEOMETRY = {"in_channels": 4, "cross_attention_dim": 768, "block_out_channels": [320, 640, 1280, 1280],
                 "layers_per_block": 2}
# diffusers' ControlNetModel defaults, for configs that leave them out
DEFAULT_CONDITION_CHANNELS = (16, 32, 96, 256)
CONDITION_IMAGE_CHANNELS = 3  # the engine's conditions are RGB images (pose maps, depth)
# Beside a ControlNet's config.json: {"format", "version", "control", "base_identity",
# "base_latent_identity", ...}, the base it was trained with (public ControlNets have none: their
# shape is all that is checked). A ControlNet never decodes, so the base with only its VAE
# decoder tuned is accepted too (loading.fits_base) where the record has the latent identity.
MADE_FOR = "flash_controlnet.json"
MADE_FOR_FORMAT = "flash-controlnet"


def flag(control: str) -> str:
    return f"--{control}-controlnet"


def _config(folder: Path, code: str = "weights_incomplete") -> dict:
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        return config
    except (OSError, ValueError) as err:
        raise FlashError(f"unreadable ControlNet config {folder / CONFIG}: {err}", "fix or replace the folder",
                         code=code) from err


def unet_config(source: str | Path) -> dict:
    """The config of a model's 2D UNet, without loading: a folder's ``unet/config.json``, or
    the ``UNET_CONFIG`` of a model built in code."""
    from flash_engine.models.loading import BUILT_IN, MANNEQUIN, MANNEQUIN_DIR

    if str(source) in BUILT_IN and str(source) != MANNEQUIN:
        module = importlib.import_module(BUILT_IN[str(source)][0])
        return dict(module.UNET_CONFIG)
    model_dir = MANNEQUIN_DIR if str(source) == MANNEQUIN else Path(source).expanduser()
    return _config(model_dir / "unet")


def _geometry(config: dict) -> dict:
    defaults = {"in_channels": 4, "cross_attention_dim": 1280, "block_out_channels": [320, 640, 1280, 1280],
                "layers_per_block": 2}  # diffusers' UNet2DConditionModel / ControlNetModel defaults
    return {name: (list(config[name]) if isinstance(config.get(name), (list, tuple)) else config.get(name))
            if name in config else defaults[name] for name in GEOMETRY}


def is_sd15(source: str | Path) -> bool:
    """Whether the model's UNet has Stable Diffusion 1.5's layout (the public ControlNets fit it)."""
    try:
        return _geometry(unet_config(source)) == SD15_GEOMETRY
    except FlashError:
        return False


WEIGHTS_NAME = "diffusion_pytorch_model"


def weights_variant(folder: Path) -> str | None:
    """The weights variant a folder holds: None for ``diffusion_pytorch_model.safetensors`` (or
    its shards), else e.g. "fp16" when only ``diffusion_pytorch_model.fp16.safetensors`` is there."""
    names = {path.name for path in folder.glob(f"{WEIGHTS_NAME}*.safetensors")}
    if f"{WEIGHTS_NAME}.safetensors" in names or (folder / f"{WEIGHTS_NAME}.safetensors.index.json").is_file():
        return None
    variants = sorted(name.split(".")[1] for name in names if name.count(".") == 2)
    return variants[0] if variants else None


def check_controlnet_folder(folder: Path, control: str) -> dict:
    """A one-line FlashError unless ``folder`` is a loadable ControlNet; returns its config."""
    if not folder.exists():
        raise FlashError(f"{control} ControlNet folder not found: {folder}", f"check {flag(control)}",
                         code="weights_missing")
    problems = controlnet_problems(folder)
    if problems:
        raise FlashError(f"{folder} is not a usable ControlNet folder: {'; '.join(problems)}",
                         f"pass {flag(control)} a diffusers ControlNet folder (config.json + "
                         "diffusion_pytorch_model.safetensors)", code="weights_incomplete")
    config = _config(folder)
    if "auto_map" in config:
        raise FlashError(f"ControlNet folder {folder} asks to run custom code (auto_map in {CONFIG}), which FLASH "
                         "never does", "delete the auto_map entry, or use a ControlNet without custom code",
                         code="weights_unsafe")
    return config


def made_for(folder: Path) -> dict | None:
    """What ``folder``'s ``flash_controlnet.json`` says (None when it has none)."""
    path = Path(folder) / MADE_FOR
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("format") != MADE_FOR_FORMAT:
            raise ValueError(f"not a {MADE_FOR_FORMAT} record")
        return record
    except (OSError, ValueError) as err:
        raise FlashError(f"unreadable {path}: {err}", "fix or replace the ControlNet folder",
                         code="weights_incomplete") from err


def check_controlnet_base(folder: Path, model: str | Path, control: str, adapter_dir: str | Path | None = None) -> None:
    """A one-line FlashError when ``folder`` names the base it was trained with and ``model`` is
    another (told by the weights' fingerprints, without loading)."""
    from flash_engine.models.loading import base_identity, base_latent_identity, fits_base

    record = made_for(folder)
    wanted = record.get("base_identity") if record else None
    if not wanted:
        return
    identity = base_identity(model, adapter_dir)
    latent = record.get("base_latent_identity")
    if identity is not None and not fits_base(identity, base_latent_identity(model, adapter_dir), wanted,
                                              latent if isinstance(latent, str) else None, decodes=False):
        raise FlashError(f"the {control} ControlNet {folder} was trained with base model {wanted}, not {identity} "
                         f"({model})", f"pass {flag(control)} a ControlNet trained for this model, or train one "
                         "(python -m mannequin.train_control)", code="base_mismatch")


def check_controlnet_fits(folder: Path, config: dict, model: str | Path, size_multiple: int, control: str,
                          adapter_dir: str | Path | None = None) -> None:
    """A one-line FlashError when the ControlNet in ``folder`` was made for another base model."""
    theirs, ours = _geometry(config), _geometry(unet_config(model))
    different = [f"{name} {theirs[name]} vs {ours[name]}" for name in GEOMETRY if theirs[name] != ours[name]]
    if different:
        raise FlashError(f"the {control} ControlNet {folder} is for another base model than {model} "
                         f"({'; '.join(different)})", f"pass {flag(control)} a ControlNet made for this model",
                         code="base_mismatch")
    steps = len(config.get("conditioning_embedding_out_channels") or DEFAULT_CONDITION_CHANNELS)
    scale = vae_size_multiple({"block_out_channels": [0] * steps})  # stride-2 convs between its stages
    if scale != size_multiple:
        raise FlashError(f"the {control} ControlNet {folder} scales its condition down {scale}x, this model's latents "
                         f"are {size_multiple}x smaller than the clip", f"pass {flag(control)} a ControlNet made "
                         "for this model", code="base_mismatch")
    channels = config.get("conditioning_channels", CONDITION_IMAGE_CHANNELS)
    if channels != CONDITION_IMAGE_CHANNELS:
        raise FlashError(f"the {control} ControlNet {folder} takes {channels}-channel conditions, not RGB images",
                         f"pass {flag(control)} a ControlNet whose condition is an image", code="base_mismatch")
    check_controlnet_base(folder, model, control, adapter_dir)


def find_controlnet(control: str, given: str | None, model: str | Path) -> Path:
    """The ControlNet folder ``control`` ("pose" or "depth") uses with ``model`` (see the module
    docstring), or a one-line FlashError naming how to give one."""
    from flash_engine.models.loading import BUILT_IN, MANNEQUIN, MANNEQUIN_DIR
    from flash_engine.weights import PUBLIC_CONTROLNETS, download_state, public_controlnet_dir

    if given:
        return Path(given).expanduser()
    if str(model) == MANNEQUIN or str(model) not in BUILT_IN:
        own = (MANNEQUIN_DIR if str(model) == MANNEQUIN else Path(model).expanduser()) / OWN_FOLDERS[control]
        if own.exists():
            return own
    if is_sd15(model):
        public = public_controlnet_dir(control)
        state = download_state(public)["state"]
        if state == "complete":
            return public
        what = "has not finished downloading" if state == "partial" else "is not downloaded"
        raise FlashError(f"no {control} ControlNet: {PUBLIC_CONTROLNETS[control]} {what} ({public})",
                         f"run `python -m flash_engine weights fetch --control`, or pass {flag(control)} DIR",
                         code="weights_missing")
    raise FlashError(f"model {model} has no {control} ControlNet of its own ({OWN_FOLDERS[control]}/)",
                     f"pass {flag(control)} DIR: a diffusers ControlNet folder made for this model",
                     code="weights_missing")


def controlnet_identity(folder: Path) -> str:
    """The content fingerprint of a ControlNet's weights (as a base model's), told without loading."""
    from flash_engine.models.loading import fingerprint_files

    return fingerprint_files(sorted(Path(folder).glob("*.safetensors")))


def load_controlnet(folder: Path, dtype=None):
    """A ``ControlNetModel`` from a checked folder, on the CPU, frozen."""
    import torch
    from diffusers import ControlNetModel

    try:
        net = ControlNetModel.from_pretrained(folder, torch_dtype=dtype or torch.float32, use_safetensors=True,
                                              local_files_only=True, variant=weights_variant(folder))
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FlashError(f"could not load the ControlNet in {folder}: {first}",
                         "check it is a diffusers ControlNet folder", code="weights_incomplete") from err
    return net.requires_grad_(False).eval()


def condition_channels(size_multiple: int) -> tuple[int, ...]:
    """diffusers' condition embedding widths, one stage per halving: its default for an 8x VAE."""
    stages = size_multiple.bit_length()  # 1 + log2 of a power of two
    if stages > len(DEFAULT_CONDITION_CHANNELS):
        raise ValueError(f"no condition embedding for a {size_multiple}x VAE")
    return DEFAULT_CONDITION_CHANNELS[:stages]


def new_controlnet(unet2d, seed: int | None = None, copy_weights: bool = True, size_multiple: int = 8):
    """A ControlNet for a 2D UNet, its encoder copied (diffusers' ``from_unet``; with
    ``copy_weights=False`` only its shape), its condition scaled down ``size_multiple``x (the
    base's VAE scale). Its output convolutions start at zero, so it steers nothing until
    trained; with ``seed`` they are random instead (tests and benchmarks of the steering itself)."""
    import torch
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(unet2d, conditioning_embedding_out_channels=condition_channels(size_multiple),
                                    load_weights_from_unet=copy_weights)
    if seed is not None:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            zeroed = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
            for module in zeroed:
                for parameter in module.parameters():
                    parameter.normal_(0.0, 0.2)
    return net.requires_grad_(False).eval()


def controlnet_for(model: str | Path, seed: int | None = None):
    """A new ControlNet shaped for ``model``'s UNet, random weights, made from its config without
    loading or building that UNet (benchmarks; under ``torch.device("meta")`` it takes no memory)."""
    import torch
    from diffusers import UNet2DConditionModel

    from flash_engine.models.loading import model_limits

    with torch.device("meta"):
        unet2d = UNet2DConditionModel.from_config(unet_config(model))
    return new_controlnet(unet2d, seed, copy_weights=False, size_multiple=model_limits(model)["size_multiple"])
