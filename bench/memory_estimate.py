"""Peak GPU memory of one clip, by tensor accounting on the meta device (no GPU, no compute).

    .venv/bin/python bench/memory_estimate.py --model sd15-random --frames 16 --size 512

The model is built on PyTorch's ``meta`` device, where tensors have shapes, dtypes and sizes
but no data, and each phase of ``FlashPipeline`` (prompt, reference encode, one guided UNet
call, decode) runs under ``torch.distributed._tools.mem_tracker.MemTracker``, which counts the
bytes of live tensors the way the CUDA caching allocator rounds them. Offload decides which
modules are resident in each phase, as the pipeline places them.

Two things are modelled rather than counted:
* attention: every ``scaled_dot_product_attention`` call is replaced by a stand-in that
  allocates what the fused CUDA kernels (flash / memory-efficient) allocate, the output and a
  float32 log-sum-exp, and never the L×L score matrix of the math path;
* what is not a tensor: the CUDA context, cuBLAS/cuDNN workspaces and allocator slack are not
  in the figures (add roughly 0.5–1 GiB; ``run_benchmarks.py --only inference`` measures the
  real peak on a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.distributed._tools.mem_tracker import MemTracker  # noqa: E402

from flash_engine.library_logs import quiet_libraries  # noqa: E402
from flash_engine.models.decoder import DetailEnhancementDecoder, encode_with_features  # noqa: E402
from flash_engine.models.controlnet import controlnet_for  # noqa: E402
from flash_engine.models.loading import load_base  # noqa: E402
from flash_engine.devices import PRECISIONS  # noqa: E402

META = torch.device("meta")
GIB = 2**30


def fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """What a fused SDPA kernel allocates (inference): the output and a float32 log-sum-exp."""
    log_sum_exp = torch.empty(query.shape[:-1], dtype=torch.float32, device=query.device)  # noqa: F841
    return query.new_empty(query.shape[:-1] + value.shape[-1:])


@contextlib.contextmanager
def fused_attention_model():
    """Route ``F.scaled_dot_product_attention`` (looked up at call time by every processor)
    through the fused-kernel footprint."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = fused_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@dataclass
class MemorySettings:
    frames: int = 16
    width: int = 512
    height: int = 512
    precision: str = "bf16"
    offload: bool = False
    decode_chunk: int = 1
    guided: bool = True
    controlnets: int = 0  # motion control: ControlNets steering the UNet (pose, pose + depth)

    @property
    def label(self) -> str:
        return (f"{self.frames}×{self.width}×{self.height} {self.precision}"
                f"{' offload' if self.offload else ''}{f' decode {self.decode_chunk} at once' if self.decode_chunk > 1 else ''}"
                f"{f' + {self.controlnets} ControlNet' + ('s' if self.controlnets > 1 else '') if self.controlnets else ''}")


@dataclass
class MemoryEstimate:
    settings: MemorySettings
    weights: dict[str, int]  # bytes per module, in its dtype
    phases: dict[str, int]  # peak bytes per phase, resident weights included
    resident: int = 0  # the most weight bytes on the device at once

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def base_on_meta(model: str):
    """The model's modules on the meta device: built there directly when the builder allows it
    (the SD-sized one: no memory, no time), else built or loaded for real and then emptied."""
    try:
        with torch.device(META):
            return load_base(model)
    except NotImplementedError:  # the builder reads its weights (a fingerprint, a file)
        base = load_base(model)
        for module in base.modules().values():
            module.to(META)
        return base


def estimate_clip_memory(model: str, settings: MemorySettings) -> MemoryEstimate:
    """Peak device memory of one FlashPipeline clip, phase by phase (see the module doc)."""
    dtype = PRECISIONS[settings.precision]
    vae_dtype = torch.float32 if dtype == torch.float16 else dtype  # as FlashPipeline
    base = base_on_meta(model)
    with torch.device(META):
        decoder = DetailEnhancementDecoder.from_vae(base.vae)
        controlnets = {f"controlnet_{i}": controlnet_for(model).to(dtype) for i in range(settings.controlnets)}
    modules = {"text_encoder": base.text_encoder.to(dtype), "unet": base.unet.to(dtype),
               "vae": base.vae.to(vae_dtype), "decoder": decoder.to(vae_dtype), **controlnets}
    for module in modules.values():
        module.requires_grad_(True)  # MemTracker hooks parameters through their gradients
    weights = {name: module_bytes(module) for name, module in modules.items()}

    frames, batch = settings.frames, 2 if settings.guided else 1
    latent_h, latent_w = (side // base.size_multiple for side in (settings.height, settings.width))
    carried: dict[str, torch.Tensor] = {}  # what one phase hands to the next, kept on the device

    def text(_tracker):
        ids = torch.zeros((batch, base.tokenizer.model_max_length), dtype=torch.long, device=META)
        carried["text"] = modules["text_encoder"](ids)[0].repeat_interleave(frames, dim=0)

    def encode(_tracker):
        pixels = torch.empty((1, 3, settings.height, settings.width), dtype=vae_dtype, device=META)
        _, carried["features"] = encode_with_features(modules["vae"], pixels, decoder.enhanced_levels)

    def denoise(_tracker):
        channels = modules["unet"].config.in_channels
        latents = torch.empty((1, channels, frames, latent_h, latent_w), dtype=dtype, device=META)
        model_input = torch.cat([latents] * batch)
        timestep = torch.full((), 500, dtype=torch.long, device=META)
        residuals = {}
        if controlnets:  # as FlashPipeline.control_residuals: frames in the batch, residuals summed
            per_frame = model_input.transpose(1, 2).reshape(batch * frames, channels, latent_h, latent_w)
            condition = torch.empty((batch * frames, 3, settings.height, settings.width), dtype=dtype, device=META)
            down, mid = None, None
            for net in controlnets.values():
                net_down, net_mid = net(per_frame, timestep, encoder_hidden_states=carried["text"],
                                        controlnet_cond=condition, return_dict=False)
                down = net_down if down is None else [a + b for a, b in zip(down, net_down)]
                mid = net_mid if mid is None else mid + net_mid
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        noise = modules["unet"](model_input, timestep, encoder_hidden_states=carried["text"], **residuals).sample
        carried["latents"] = latents + noise[:1]  # the scheduler step's output

    def decode(tracker):
        video = carried["latents"][0].transpose(0, 1).to(vae_dtype)
        chunk = settings.decode_chunk
        enhance = torch.arange(frames) > 0
        for start in range(0, frames, chunk):
            tracker.reset_mod_stats()  # per-module stats only; the device's peak stays
            modules["decoder"](video[start:start + chunk], carried["features"], enhance[start:start + chunk])

    plan = {"text": (text, ["text_encoder"]), "encode": (encode, ["vae"]),
            "denoise": (denoise, ["unet", *controlnets]), "decode": (decode, ["decoder"])}
    phases, most = {}, 0
    with fused_attention_model(), torch.no_grad():
        for phase, (run, needs) in plan.items():
            resident = needs if settings.offload else list(modules)
            most = max(most, sum(weights[name] for name in resident))
            tracker = MemTracker()
            tracker.track_external(*(modules[name] for name in resident),
                                   *(t for value in carried.values()
                                     for t in (value.values() if isinstance(value, dict) else [value])))
            with tracker:
                run(tracker)
            phases[phase] = tracker.get_tracker_snapshot("peak")[META]["Total"]
    return MemoryEstimate(settings, weights, phases, most)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd15-random", help="tiny, sd15-random or a weights folder")
    parser.add_argument("--frames", type=int, nargs="+", default=[16])
    parser.add_argument("--size", type=int, nargs="+", default=[512], help="square sides in pixels")
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp16", "fp32"], choices=list(PRECISIONS))
    parser.add_argument("--controlnets", type=int, nargs="+", default=[0],
                        help="ControlNets steering the UNet (motion control: 1 pose, 2 pose + depth)")
    args = parser.parse_args()
    quiet_libraries()
    grid = [MemorySettings(frames=frames, width=size, height=size, precision=precision, offload=offload,
                           controlnets=controlnets)
            for frames in args.frames for size in args.size for precision in args.precision
            for offload in (False, True) for controlnets in args.controlnets]
    print(f"# {args.model}: estimated peak GPU memory per clip (tensor accounting, fused attention)\n")
    print("| settings | weights on the GPU, most at once (GiB) | peak phase | estimated peak (GiB) |\n"
          "|---|---|---|---|", flush=True)
    for settings in grid:
        estimate = estimate_clip_memory(args.model, settings)
        resident = estimate.resident
        print(f"| {settings.label} | {resident / GIB:.2f} | {estimate.peak_phase} | {estimate.peak / GIB:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
