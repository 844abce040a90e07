"""The Detail Enhancement Decoder must keep the motion (issue 20): trained as the benchmark
trains #6, it must not pull the moving limbs of a ground-truth clip back to the reference's pose."""

from __future__ import annotations

import numpy as np
import pytest

from mannequin.decoder_probe import moving_mask, pull_toward_reference

# Measured with these 20 steps at 32²: -0.04 as the benchmark now trains #6, 0.19 with the
# spec's region colour jitter (its training before 2026-12-02); docs/mannequin-benchmark.md.
PULL_LIMIT = 0.1


def test_pull_is_the_fraction_of_the_way_to_the_reference():
    rng = np.random.default_rng(0)
    stock = rng.integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    reference = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    mask = np.ones((3, 8, 8), bool)
    halfway = ((stock.astype(np.float64) + reference) / 2)
    assert pull_toward_reference(stock, stock, reference, mask) == pytest.approx(0.0)
    assert pull_toward_reference(stock, np.broadcast_to(reference, stock.shape), reference, mask) == pytest.approx(1.0)
    assert pull_toward_reference(stock, halfway, reference, mask) == pytest.approx(0.5, abs=0.01)
    clip = np.zeros((2, 4, 4, 3), np.uint8)
    clip[1, 0, 0] = 200  # one pixel moves
    assert moving_mask(clip)[1].sum() == 1 and not moving_mask(clip)[0].any()


def test_the_branch_recorder_decodes_as_the_decoder_does():
    import torch

    from flash_engine.models.decoder import DetailEnhancementDecoder, encode_with_features
    from flash_engine.models.tiny import build_tiny
    from mannequin.decoder_probe import branches_recorded

    vae = build_tiny().vae.eval()
    torch.manual_seed(0)
    decoder = DetailEnhancementDecoder.from_vae(vae).eval()
    with torch.no_grad():
        for param in decoder.enhancement_parameters():
            param.normal_(0, 0.1)  # the zero-initialised fusion too: every branch contributes
        pixels = torch.rand(3, 3, 32, 32) * 2 - 1
        latents, _ = encode_with_features(vae, pixels, decoder.enhanced_levels)
        _, features = encode_with_features(vae, pixels[:1], decoder.enhanced_levels)
        flags = torch.arange(3) > 0
        plain = decoder(latents, features, flags)
        with branches_recorded(decoder) as records:
            recorded = decoder(latents, features, flags)
        with branches_recorded(decoder, off="warp"):
            without_warp = decoder(latents, features, flags)
    assert torch.allclose(plain, recorded, atol=1e-5) and records
    assert not torch.allclose(plain, without_warp, atol=1e-3)
    assert torch.allclose(decoder(latents, features, flags), plain)  # the blocks are restored afterwards


def test_trained_decoder_keeps_a_ground_truth_limb_where_the_clip_has_it(tmp_path):
    pytest.importorskip("bpy")
    from flash_engine.models.decoder import DetailEnhancementDecoder
    from flash_engine.models.loading import load_base, mannequin_available
    from mannequin import render_clip, sample_spec
    from mannequin.decoder_probe import benchmark_train_config, decode_truth, train_decoder

    if not mannequin_available():
        pytest.skip("the built-in mannequin model is not in this checkout")
    # jumping jacks: arms and legs swing far from the reference pose (7% of the pixels move);
    # 32² frames (the figure 20 px tall) keep the 20 decoder steps to a few seconds
    train = [render_clip(sample_spec("jumping_jack", seed, "train", size=32)) for seed in range(4)]
    test = render_clip(sample_spec("jumping_jack", 100, "test", size=32))
    base = load_base("mannequin")
    decoder, _ = train_decoder(base, train, "a person is doing jumping jacks.",
                               benchmark_train_config(20, "no-jitter", size=32), tmp_path)
    vae = base.vae.eval()  # frozen in training: still the stock VAE
    stock = decode_truth(vae, DetailEnhancementDecoder.from_vae(vae).eval(), test, enhance=False)
    decoded = decode_truth(vae, decoder, test)
    mask = moving_mask(test)
    mask[0] = False
    assert mask.mean() > 0.03  # the limbs really move in this clip
    assert np.abs(decoded.astype(int) - stock).max() > 0  # the decoder was trained: it changes pixels
    pull = pull_toward_reference(stock, decoded, test[0], mask)
    assert pull < PULL_LIMIT, f"the decoder moved the limbs {pull:.0%} of the way back to the reference pose"
