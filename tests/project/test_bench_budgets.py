"""bench/memory_estimate.py and bench/flop_budget.py: memory and FLOPs on the meta device."""

import contextlib

import pytest
import torch

from bench import memory_estimate
from bench.memory_estimate import MemorySettings, estimate_clip_memory


@pytest.fixture(scope="module")
def tiny_parameter_counts():
    from flash_engine.models.tiny import build_tiny

    base = build_tiny()
    return {name: sum(p.numel() for p in getattr(base, name).parameters()) for name in ("unet", "text_encoder")}


def small(**overrides) -> MemorySettings:
    return MemorySettings(**{"frames": 4, "width": 128, "height": 128, "precision": "bf16", **overrides})


def test_weights_are_counted_in_the_pipelines_dtypes(tiny_parameter_counts):
    bf16 = estimate_clip_memory("tiny", small())
    fp16 = estimate_clip_memory("tiny", small(precision="fp16"))
    for name, count in tiny_parameter_counts.items():
        assert bf16.weights[name] >= 2 * count and bf16.weights[name] < 2.1 * count, name  # + buffers
    assert fp16.weights["vae"] == 2 * bf16.weights["vae"]  # fp16 pipelines keep the VAE in fp32
    assert fp16.weights["unet"] == bf16.weights["unet"]


def test_offload_keeps_only_the_phases_module_resident():
    resident = estimate_clip_memory("tiny", small())
    offload = estimate_clip_memory("tiny", small(offload=True))
    everything = sum(resident.weights.values())
    assert all(peak >= everything for peak in resident.phases.values())
    assert offload.phases["text"] < resident.phases["text"]
    assert offload.phases["denoise"] >= offload.weights["unet"]
    assert offload.phases["denoise"] - offload.weights["unet"] == pytest.approx(
        resident.phases["denoise"] - everything, rel=0.05)  # the same activations either way


def test_denoising_activations_grow_with_the_frames():
    weights_and_activations = {}
    for frames in (4, 8):
        estimate = estimate_clip_memory("tiny", small(frames=frames, offload=True))
        weights_and_activations[frames] = estimate.phases["denoise"] - estimate.weights["unet"]
    assert 1.6 < weights_and_activations[8] / weights_and_activations[4] < 2.4


def test_attention_is_modelled_as_a_fused_kernel(monkeypatch):
    """Without the stand-in, the meta device takes the math path and allocates each L×L score
    matrix: the fused estimate must be lower by at least one such matrix (and so must be in effect)."""
    settings = small(frames=4, width=256, height=256, offload=True)
    fused = estimate_clip_memory("tiny", settings)
    monkeypatch.setattr(memory_estimate, "fused_attention_model", contextlib.nullcontext)
    math_path = estimate_clip_memory("tiny", settings)
    tokens = (256 // 8) ** 2  # latent tokens per frame at the UNet's first level
    # one head's scores: CFG batch × frames × queries × keys from two frames, in bf16
    one_score_matrix = 2 * settings.frames * tokens * (2 * tokens) * torch.bfloat16.itemsize
    assert math_path.phases["denoise"] - fused.phases["denoise"] >= one_score_matrix


def test_flop_budget_counts_the_trainers_real_work():
    from bench.flop_budget import clip_flops, training_flops

    train = training_flops("tiny", frames=4, size=64)
    flash, plain = train["FLASH step (#6), checkpointing"], train["plain fine-tune step (#1), checkpointing"]
    assert 1.8 < flash / plain < 2.2  # two videos per FLASH step
    assert train["FLASH step (#6), no checkpointing"] < flash  # checkpointing recomputes the forward
    assert 0 < train["of which VAE encodes (2 videos)"] < flash
    five, ten = clip_flops("tiny", 4, 64, steps=5), clip_flops("tiny", 4, 64, steps=10)
    assert ten["UNet, 10 guided steps"] == pytest.approx(2 * five["UNet, 5 guided steps"])
    assert five["decode (enhanced)"] > 0 and five["reference encode"] > 0
    steered, longer = clip_flops("tiny", 4, 64, steps=5, controlnets=2), clip_flops("tiny", 4, 64, 10, controlnets=1)
    net = steered["ControlNet 1, 5 guided steps"]
    assert net > 0 and steered["ControlNet 2, 5 guided steps"] == net and "ControlNet 1, 5 guided steps" not in five
    assert longer["ControlNet 1, 10 guided steps"] == pytest.approx(2 * net)  # called at every step
    assert {k: v for k, v in steered.items() if not k.startswith("ControlNet")} == five


def test_a_controlnet_adds_its_weights_and_activations_to_the_denoising_phase():
    plain = estimate_clip_memory("tiny", small(offload=True))
    steered = estimate_clip_memory("tiny", small(offload=True, controlnets=1))
    both = estimate_clip_memory("tiny", small(offload=True, controlnets=2))
    net = steered.weights["controlnet_0"]
    assert net > 0 and both.weights["controlnet_1"] == net
    assert steered.resident == plain.resident + net and both.resident == plain.resident + 2 * net  # with the UNet
    assert steered.phases["denoise"] > plain.phases["denoise"] + net  # its residuals are held too
    assert both.phases["denoise"] > steered.phases["denoise"] + net
    assert steered.phases["decode"] == plain.phases["decode"]  # offloaded: not resident while decoding
