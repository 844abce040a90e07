"""Action artifacts: the small folder a trained action lives in, and applying it to a base.

Layout::

    ACTION/action.toml          name, prompt, base model identity (and its latent identity),
                                training config, steps, clips, date
    ACTION/unet.safetensors     only the trained UNet tensors (motion modules + spatial K/V)
    ACTION/decoder.safetensors  only the Detail Enhancement Decoder's new layers
"""

from __future__ import annotations

import datetime as _dt
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from flash_engine.errors import FlashError
from flash_engine.layout import ACTION_DECODER, ACTION_MANIFEST, ACTION_UNET
from flash_engine.tensorfiles import safetensors_problem, save_tensors

MANIFEST = ACTION_MANIFEST
UNET_FILE = ACTION_UNET
DECODER_FILE = ACTION_DECODER
FORMAT_VERSION = 1


@dataclass
class Action:
    folder: Path
    name: str
    prompt: str
    base_model: str
    meta: dict = field(default_factory=dict)

    def unet_state(self) -> dict[str, torch.Tensor]:
        return _load_tensors(self.folder / UNET_FILE)

    def decoder_state(self) -> dict[str, torch.Tensor] | None:
        path = self.folder / DECODER_FILE
        return _load_tensors(path) if path.is_file() else None

    @property
    def decodes(self) -> bool:
        """It carries Detail Enhancement Decoder layers, trained on its base's own decoder."""
        return (self.folder / DECODER_FILE).is_file()

    def fits(self, identity: str, latent_identity: str | None) -> bool:
        """Whether a base with these identities is the one it was trained on (or that base with
        only its VAE decoder tuned, for an action without decoder layers)."""
        from flash_engine.models.loading import fits_base

        latent = self.meta.get("base_latent")
        return fits_base(identity, latent_identity, self.base_model, latent if isinstance(latent, str) else None,
                         self.decodes)


def _damaged(path: Path, problem: str) -> FlashError:
    return FlashError(f"damaged action file {path}: {problem}",
                      "re-run the training to rewrite it, or pick another action", code="weights_incomplete")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors; damage that appeared after ``read_action`` checked it is still a FlashError."""
    from safetensors import SafetensorError

    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise _damaged(path, safetensors_problem(path) or " ".join(str(err).split()) or type(err).__name__) from err


# TOML basic strings: quote, backslash and every control character but tab must be escaped
TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
TOML_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_string(text: str) -> str:
    return '"' + "".join(TOML_ESCAPES.get(c) or (f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                         for c in text) + '"'


def _toml_key(key) -> str:
    return key if TOML_BARE_KEY.fullmatch(str(key)) else _toml_string(str(key))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _toml_string(str(value))


def dump_toml(data: dict) -> str:
    """Enough TOML for our manifests: scalars and lists at the top, one level of tables."""
    lines = [f"{_toml_key(key)} = {_toml_value(value)}" for key, value in data.items() if not isinstance(value, dict)]
    for key, table in data.items():
        if isinstance(table, dict):
            lines += ["", f"[{_toml_key(key)}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def write_action(folder: Path, *, name: str, prompt: str, base_model: str,
                 unet_state: dict[str, torch.Tensor], decoder_state: dict[str, torch.Tensor] | None = None,
                 meta: dict | None = None, base_latent: str | None = None) -> Path:
    """Write the three files into ``folder`` (callers stage it: see ``output.staged_folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(unet_state, folder / UNET_FILE)
    if decoder_state is not None:
        save_tensors(decoder_state, folder / DECODER_FILE)
    manifest = {
        "format": FORMAT_VERSION,
        "name": name,
        "prompt": prompt,
        "base_model": base_model,
        **({"base_latent": base_latent} if base_latent else {}),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(meta or {}),
    }
    (folder / MANIFEST).write_text(dump_toml(manifest), encoding="utf-8")
    return folder


def read_action(folder: str | Path) -> Action:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FlashError(f"action weights folder not found: {folder}",
                         "train the action first or fix the --weights path", code="weights_missing")
    missing = [f for f in (MANIFEST, UNET_FILE) if not (folder / f).is_file()]
    if missing:
        raise FlashError(f"incomplete action folder {folder}: missing {', '.join(missing)}",
                         "re-run the training (it resumes from its checkpoint) or pick another action",
                         code="weights_incomplete")
    try:
        data = tomllib.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise FlashError(f"unreadable {folder / MANIFEST}: {err}", "re-run the training to rewrite it",
                         code="weights_incomplete") from err
    for key in ("name", "prompt", "base_model"):
        if not isinstance(data.get(key), str):
            raise FlashError(f"{folder / MANIFEST} has no {key}", "re-run the training to rewrite it",
                             code="weights_incomplete")
    for name in (UNET_FILE, DECODER_FILE):  # headers only: a damaged file is refused before a model loads
        problem = safetensors_problem(folder / name) if (folder / name).is_file() else None
        if problem:
            raise _damaged(folder / name, problem)
    return Action(folder=folder, name=data["name"], prompt=data["prompt"], base_model=data["base_model"],
                  meta=data)


class ActionSlot:
    """Puts an action's tensors into a pipeline and can take them out again.

    The base's original values of the touched tensors are kept, so a warm pipeline can
    switch actions (or go back to the base) without reloading gigabytes.
    """

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.current: Action | None = None
        self._saved_unet: dict[str, torch.Tensor] = {}
        self._saved_decoder: dict[str, torch.Tensor] | None = None

    def apply(self, action: Action | None) -> None:
        if action is not None and self.current is not None and action.folder == self.current.folder:
            return
        self.reset()
        if action is None:
            return
        base = self.pipeline.base
        base_identity = base.identity
        if not action.fits(base_identity, base.latent_identity):
            raise FlashError(
                f"action '{action.name}' was trained on base model {action.base_model}, not {base_identity}",
                "animate with the base model it was trained on, or retrain the action on this one",
                code="base_mismatch",
            )
        unet = self.pipeline.base.unet
        params = dict(unet.named_parameters())
        state = action.unet_state()
        unknown = [k for k in state if k not in params]
        if unknown:
            raise FlashError(f"action '{action.name}' has tensors this UNet lacks (e.g. {unknown[0]})",
                             "retrain the action on this base model", code="base_mismatch")
        with torch.no_grad():
            for key, value in state.items():
                if params[key].shape != value.shape:
                    raise FlashError(f"action '{action.name}' tensor {key} has shape {tuple(value.shape)}, "
                                     f"the UNet has {tuple(params[key].shape)}",
                                     "retrain the action on this base model", code="base_mismatch")
                self._saved_unet[key] = params[key].detach().clone()
                params[key].copy_(value.to(params[key].dtype))
        decoder_state = action.decoder_state()
        if decoder_state is not None:
            self._saved_decoder = {k: v.detach().clone()
                                   for k, v in self.pipeline.decoder.enhancement_state_dict().items()}
            self.pipeline.decoder.load_enhancement_state_dict(decoder_state)
        self.current = action

    def reset(self) -> None:
        if self._saved_unet:
            params = dict(self.pipeline.base.unet.named_parameters())
            with torch.no_grad():
                for key, value in self._saved_unet.items():
                    params[key].copy_(value)
        if self._saved_decoder is not None:
            self.pipeline.decoder.load_enhancement_state_dict(self._saved_decoder)
        self._saved_unet, self._saved_decoder, self.current = {}, None, None


def written_action_files(folder: Path) -> set[str] | None:
    """The names the engine wrote into an action folder; None when it has no readable
    ``action.toml`` of ours (then ``--force`` does not replace it)."""
    try:
        data = tomllib.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    if data.get("format") != FORMAT_VERSION:
        return None
    return dict.fromkeys((MANIFEST, UNET_FILE, DECODER_FILE))  # no digests: weights are not hand-edited
