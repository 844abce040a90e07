"""Detail Enhancement Decoder: stock equivalence, enhancement behaviour, encoder features, I/O."""

import pytest
import torch
from diffusers import AutoencoderKL

from flash_engine.errors import FlashError
from flash_engine.models.decoder import (
    DetailEnhancementDecoder,
    default_enhanced_levels,
    encode_with_features,
    encoder_block_for_level,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tensors are tiny: one thread is as fast, and far faster on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    model = AutoencoderKL(
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=64,
    )
    return model.eval().requires_grad_(False)


def _images(seed, n=1, height=64, width=64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, height, width, generator=g) * 2 - 1


def _latents(seed, n=3, height=8, width=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, height, width, generator=g)


def _perturb(decoder, seed=1, scale=0.5):
    """Give every new layer random (non-identity) weights, the zero-initialised ones included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in decoder.enhancement_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale / max(1, p[0].numel()) ** 0.5)


def _reference(vae, decoder, seed=10, height=64, width=64):
    with torch.no_grad():
        _, feats = encode_with_features(vae, _images(seed, 1, height, width), decoder.enhanced_levels)
    return feats


def test_level_mapping_and_default_levels():
    assert default_enhanced_levels(4) == (0, 1)
    assert [encoder_block_for_level(level, 4) for level in range(4)] == [2, 1, 0, 0]
    with pytest.raises(ValueError):
        encoder_block_for_level(4, 4)


def test_untrained_decoder_equals_stock_bit_for_bit(vae):
    decoder = DetailEnhancementDecoder.from_vae(vae)
    assert decoder.enhanced_levels == (0, 1)
    assert decoder.dtype == vae.dtype and decoder.device == vae.device
    z = _latents(0)
    feats = _reference(vae, decoder)
    with torch.no_grad():
        stock = vae.decode(z).sample
        assert torch.equal(decoder(z), stock)
        assert torch.equal(decoder(z, feats, torch.ones(3, dtype=torch.bool)), stock)
        assert torch.equal(decoder(z, feats, torch.zeros(3, dtype=torch.bool)), stock)


def test_enhancement_changes_only_flagged_frames(vae):
    decoder = DetailEnhancementDecoder.from_vae(vae)
    _perturb(decoder)
    z = _latents(1, n=4)
    feats = _reference(vae, decoder)
    enhance = torch.tensor([False, True, False, True])
    with torch.no_grad():
        stock = vae.decode(z).sample
        out = decoder(z, feats, enhance)
        # No reference / nothing flagged: still the stock decoder exactly.
        assert torch.equal(decoder(z, None, enhance), stock)
        assert torch.equal(decoder(z, feats, torch.zeros(4, dtype=torch.bool)), stock)
        # Enhancing a subset equals enhancing all frames, restricted to that subset.
        out_all = decoder(z, feats, torch.ones(4, dtype=torch.bool))
    assert out.shape == stock.shape
    for i in (0, 2):
        assert torch.equal(out[i], stock[i])
    for i in (1, 3):
        assert (out[i] - stock[i]).abs().max() > 1e-3
        torch.testing.assert_close(out[i], out_all[i], rtol=1e-4, atol=1e-5)


def test_only_the_fusion_weights_open_the_gate(vae):
    """With only M's last layer randomised (warp still identity), frames change: both branches feed in."""
    decoder = DetailEnhancementDecoder.from_vae(vae)
    with torch.no_grad():
        for block in decoder.enhancers.values():
            torch.nn.init.normal_(block.fusion_net[-1].weight, std=0.1)
    z = _latents(2, n=2)
    feats = _reference(vae, decoder)
    with torch.no_grad():
        stock = vae.decode(z).sample
        out = decoder(z, feats, torch.tensor([False, True]))
    assert torch.equal(out[0], stock[0])
    assert (out[1] - stock[1]).abs().max() > 1e-3


def test_enhanced_output_depends_on_reference(vae):
    decoder = DetailEnhancementDecoder.from_vae(vae)
    _perturb(decoder)
    z = _latents(3, n=2)
    enhance = torch.tensor([False, True])
    with torch.no_grad():
        out_a = decoder(z, _reference(vae, decoder, seed=10), enhance)
        out_b = decoder(z, _reference(vae, decoder, seed=11), enhance)
    assert torch.equal(out_a[0], out_b[0])
    assert (out_a[1] - out_b[1]).abs().max() > 1e-3


def test_each_branch_contributes(vae):
    """Both the Warping Branch (its offsets) and the Patch Attention Branch change the result."""
    decoder = DetailEnhancementDecoder.from_vae(vae)
    _perturb(decoder)
    z = _latents(4, n=2)
    feats = _reference(vae, decoder)
    enhance = torch.tensor([True, True])
    with torch.no_grad():
        base = decoder(z, feats, enhance)
        for block in decoder.enhancers.values():  # identity warp
            block.offset_net[-1].weight.zero_()
            block.offset_net[-1].bias.zero_()
        identity_warp = decoder(z, feats, enhance)
        for block in decoder.enhancers.values():  # no attention output
            block.patch_unembed.weight.zero_()
            block.patch_unembed.bias.zero_()
        no_attention = decoder(z, feats, enhance)
    assert (base - identity_warp).abs().max() > 1e-4
    assert (identity_warp - no_attention).abs().max() > 1e-4


def test_warp_follows_predicted_offsets():
    """A constant offset of +1 px in x samples the right-hand neighbour (border-clamped)."""
    from flash_engine.models.decoder import DetailEnhancementBlock

    ref = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(1, 2, 5, 6)
    offset = torch.zeros(3, 2, 5, 6)
    torch.testing.assert_close(DetailEnhancementBlock._warp(ref, offset), ref.expand(3, -1, -1, -1))
    offset[:, 0] = 1.0
    expected = torch.cat([ref[..., 1:], ref[..., -1:]], dim=-1).expand(3, -1, -1, -1)
    torch.testing.assert_close(DetailEnhancementBlock._warp(ref, offset), expected)
    offset[:, 0], offset[:, 1] = 0.0, -1.0
    expected = torch.cat([ref[..., :1, :], ref[..., :-1, :]], dim=-2).expand(3, -1, -1, -1)
    torch.testing.assert_close(DetailEnhancementBlock._warp(ref, offset), expected)


def test_encode_with_features(vae):
    x = _images(5, n=2)
    levels = (0, 1, 2, 3)
    with torch.no_grad():
        mean, feats = encode_with_features(vae, x, levels)
        expected = vae.encode(x).latent_dist.mean
    assert torch.equal(mean, expected)
    assert set(feats) == set(levels)
    # Decoder up block l outputs 64 / 2**(2 - l) for l <= 2, full size for the last one.
    sizes = {0: 16, 1: 32, 2: 64, 3: 64}
    channels = {0: 32, 1: 32, 2: 16, 3: 16}  # encoder down blocks 2, 1, 0, 0
    for level in levels:
        assert feats[level].shape == (2, channels[level], sizes[level], sizes[level])
    # Features of the same scale as the decoder's own outputs at those levels.
    with torch.no_grad():
        h = vae.decoder.mid_block(vae.decoder.conv_in(vae.post_quant_conv(mean)))
        for level, block in enumerate(vae.decoder.up_blocks):
            h = block(h)
            assert h.shape[-2:] == feats[level].shape[-2:]
    for block in vae.encoder.down_blocks:
        for module in block.modules():
            assert not module._forward_hooks


def test_encode_with_features_removes_hooks_on_error(vae):
    with pytest.raises(RuntimeError):
        encode_with_features(vae, torch.zeros(1, 5, 64, 64), (0, 1))  # wrong channel count
    for module in vae.encoder.modules():
        assert not module._forward_hooks


def test_save_and_load_round_trip(vae, tmp_path):
    decoder = DetailEnhancementDecoder.from_vae(vae, attention_heads=2)
    _perturb(decoder)
    z = _latents(6, n=2)
    feats = _reference(vae, decoder)
    enhance = torch.tensor([False, True])
    with torch.no_grad():
        out = decoder(z, feats, enhance)

    decoder.save_pretrained(tmp_path / "dec")
    assert (tmp_path / "dec" / "diffusion_pytorch_model.safetensors").exists()
    loaded = DetailEnhancementDecoder.from_pretrained(tmp_path / "dec")
    assert loaded.enhanced_levels == (0, 1)
    assert loaded.config.attention_heads == 2
    with torch.no_grad():
        assert torch.equal(loaded(z, feats, enhance), out)

    sd = decoder.enhancement_state_dict()
    assert sd and all(k.startswith("enhancers.") for k in sd)
    stock_keys = {k for k in decoder.state_dict() if not k.startswith("enhancers.")}
    assert stock_keys and not stock_keys & set(sd)
    assert set(sd) | stock_keys == set(decoder.state_dict())

    fresh = DetailEnhancementDecoder.from_vae(vae, attention_heads=2)
    with torch.no_grad():
        assert not torch.equal(fresh(z, feats, enhance), out)
    fresh.load_enhancement_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(fresh(z, feats, enhance), out)


def test_wrong_enhancement_state_dict_raises(vae):
    decoder = DetailEnhancementDecoder.from_vae(vae)
    sd = decoder.enhancement_state_dict()
    missing = dict(sd)
    missing.pop(next(iter(missing)))
    with pytest.raises(FlashError, match="missing"):
        decoder.load_enhancement_state_dict(missing)
    with pytest.raises(FlashError, match="unexpected"):
        decoder.load_enhancement_state_dict({**sd, "enhancers.7.bogus": torch.zeros(1)})
    key = "enhancers.0.reference_proj.weight"
    with pytest.raises(FlashError, match="shape"):
        decoder.load_enhancement_state_dict({**sd, key: torch.zeros(3, 3, 1, 1)})
    other = DetailEnhancementDecoder.from_vae(vae, enhanced_levels=(1, 2))
    with pytest.raises(FlashError):
        decoder.load_enhancement_state_dict(other.enhancement_state_dict())
    err = pytest.raises(FlashError, decoder.load_enhancement_state_dict, missing).value
    assert "\n" not in str(err)


def test_bad_forward_inputs_raise(vae):
    decoder = DetailEnhancementDecoder.from_vae(vae)
    feats = _reference(vae, decoder)
    with torch.no_grad():
        with pytest.raises(FlashError, match="missing"):
            decoder(_latents(0, n=1), {0: feats[0]}, torch.tensor([True]))
        with pytest.raises(FlashError, match="enhance"):
            decoder(_latents(0, n=2), feats, torch.tensor([True]))
        with pytest.raises(FlashError, match="batch"):
            decoder(_latents(0, n=3), {k: v.expand(2, -1, -1, -1) for k, v in feats.items()}, [True] * 3)


def test_only_new_layers_get_gradients(vae):
    decoder = DetailEnhancementDecoder.from_vae(vae)
    _perturb(decoder)  # away from the zero init so every new layer sees a gradient
    decoder.freeze_stock_layers()
    decoder.train()
    z = _latents(7, n=2)
    feats = _reference(vae, decoder)
    target = _images(8, n=2)
    out = decoder(z, feats, torch.tensor([True, True]))
    torch.nn.functional.mse_loss(out, target).backward()

    new = {id(p) for p in decoder.enhancement_parameters()}
    for name, p in decoder.named_parameters():
        if id(p) in new:
            assert p.requires_grad and p.grad is not None, name
            assert p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_gradient_checkpointing_matches(vae):
    decoder = DetailEnhancementDecoder.from_vae(vae)
    _perturb(decoder)
    decoder.freeze_stock_layers()
    z = _latents(9, n=2)
    feats = _reference(vae, decoder)
    enhance = torch.tensor([False, True])

    def grads():
        decoder.zero_grad(set_to_none=True)
        out = decoder(z, feats, enhance)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in decoder.enhancement_parameters()]

    out_plain, g_plain = grads()
    decoder.enable_gradient_checkpointing()
    out_ckpt, g_ckpt = grads()
    decoder.disable_gradient_checkpointing()
    torch.testing.assert_close(out_ckpt, out_plain)
    for a, b in zip(g_ckpt, g_plain):
        torch.testing.assert_close(a, b)


def test_odd_feature_sizes(vae):
    decoder = DetailEnhancementDecoder.from_vae(vae)
    ref = _images(12, 1, height=72, width=56)
    with torch.no_grad():
        z, feats = encode_with_features(vae, ref, decoder.enhanced_levels)
        assert z.shape[-2:] == (9, 7)
        assert feats[0].shape[-2:] == (18, 14) and feats[1].shape[-2:] == (36, 28)
        frames = torch.cat([z, _latents(13, n=2, height=9, width=7)])
        stock = vae.decode(frames).sample
        enhance = torch.tensor([False, True, True])
        assert torch.equal(decoder(frames, feats, enhance), stock)
        _perturb(decoder)
        out = decoder(frames, feats, enhance)
        # A reference of a different (odd) size is interpolated to the decoder feature's size.
        _, other = encode_with_features(vae, _images(14, 1, height=40, width=24), decoder.enhanced_levels)
        out_other = decoder(frames, other, enhance)
    assert out.shape == (3, 3, 72, 56) and torch.isfinite(out).all()
    assert torch.equal(out[0], stock[0]) and (out[1:] - stock[1:]).abs().max() > 1e-3
    assert out_other.shape == out.shape and torch.isfinite(out_other).all()


def test_per_frame_reference_batch(vae):
    """A batch of F references is accepted and picked per frame."""
    decoder = DetailEnhancementDecoder.from_vae(vae)
    _perturb(decoder)
    z = _latents(15, n=3)
    single = _reference(vae, decoder, seed=10)
    batched = {level: f.expand(3, -1, -1, -1) for level, f in single.items()}
    enhance = torch.tensor([True, False, True])
    with torch.no_grad():
        torch.testing.assert_close(decoder(z, batched, enhance), decoder(z, single, enhance), rtol=1e-4, atol=1e-5)
