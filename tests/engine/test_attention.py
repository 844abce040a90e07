"""Cross-frame attention: every frame reads frame 0's keys and values (and its own)."""

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from flash_engine.models.attention import (
    CrossFrameAttnProcessor,
    FlashAttentionContext,
    is_spatial_self_attention,
    set_flash_attention,
)

FRAMES, TOKENS, DIM = 4, 6, 16


def make_layer(num_frames=FRAMES):
    torch.manual_seed(0)
    attn = Attention(query_dim=DIM, heads=2, dim_head=8)
    context = FlashAttentionContext(num_frames=num_frames)
    attn.set_processor(CrossFrameAttnProcessor(context, "layer"))
    return attn, context


def test_other_frames_read_frame_zero():
    attn, _ = make_layer()
    x = torch.randn(FRAMES, TOKENS, DIM)
    base = attn(x)
    changed = x.clone()
    changed[0] += torch.randn(TOKENS, DIM)
    out = attn(changed)
    for frame in range(1, FRAMES):
        assert not torch.allclose(out[frame], base[frame], atol=1e-4), f"frame {frame} ignores frame 0"


def test_frames_do_not_read_each_other():
    attn, _ = make_layer()
    x = torch.randn(FRAMES, TOKENS, DIM)
    base = attn(x)
    changed = x.clone()
    changed[2] += torch.randn(TOKENS, DIM)
    out = attn(changed)
    # only frame 2 changes: its keys/values are [frame 0; frame 2]
    for frame in (0, 1, 3):
        assert torch.allclose(out[frame], base[frame], atol=1e-6)
    assert not torch.allclose(out[2], base[2], atol=1e-4)


def test_frame_zero_is_plain_self_attention_and_frames_match_explicit_formula():
    attn, _ = make_layer()
    x = torch.randn(FRAMES, TOKENS, DIM)
    out = attn(x)
    plain = Attention(query_dim=DIM, heads=2, dim_head=8)
    plain.load_state_dict(attn.state_dict())
    plain.set_processor(AttnProcessor2_0())
    assert torch.allclose(out[0], plain(x[:1])[0], atol=1e-5)
    # frame i by hand: softmax(q_i [k_0; k_i]^T / sqrt(d)) [v_0; v_i]
    i = 3
    q, k, v = attn.to_q(x[i]), attn.to_k(torch.cat([x[0], x[i]])), attn.to_v(torch.cat([x[0], x[i]]))
    heads = lambda t: t.view(t.shape[0], 2, 8).transpose(0, 1)
    weights = (heads(q) @ heads(k).transpose(-1, -2) / 8 ** 0.5).softmax(-1)
    manual = attn.to_out[0]((weights @ heads(v)).transpose(0, 1).reshape(TOKENS, DIM))
    assert torch.allclose(out[i], manual, atol=1e-5)


def test_batches_of_videos_stay_separate():
    attn, _ = make_layer()
    x = torch.randn(2 * FRAMES, TOKENS, DIM)
    both = attn(x)
    assert torch.allclose(both[:FRAMES], attn(x[:FRAMES]), atol=1e-6)
    assert torch.allclose(both[FRAMES:], attn(x[FRAMES:]), atol=1e-6)


def test_shared_qk_makes_augmented_attention_map_equal_the_originals():
    attn, context = make_layer()
    context.captured_attention = {}
    original, augmented = torch.randn(FRAMES, TOKENS, DIM), torch.randn(FRAMES, TOKENS, DIM)
    batch = torch.cat([original, augmented])
    attn(batch)
    unshared = context.captured_attention["layer"]
    assert not torch.allclose(unshared[:FRAMES], unshared[FRAMES:], atol=1e-4)
    context.share_qk_layers = frozenset({"layer"})
    out = attn(batch)
    shared = context.captured_attention["layer"]
    assert torch.equal(shared[:FRAMES], shared[FRAMES:])
    # values still come from the augmented video, so its output differs from the original's
    assert not torch.allclose(out[:FRAMES], out[FRAMES:], atol=1e-4)


def test_installed_on_spatial_self_attention_only(tiny_base):
    unet = tiny_base.unet
    processors = unet.attn_processors
    cross_frame = {name for name, proc in processors.items() if isinstance(proc, CrossFrameAttnProcessor)}
    assert cross_frame and cross_frame == {name for name in processors if is_spatial_self_attention(name)}
    assert not any("motion_modules" in name or name.endswith("attn2.processor") for name in cross_frame)
    assert set_flash_attention(unet) is tiny_base.attention  # idempotent


def test_unet_hook_records_frame_count(tiny_base):
    sample = torch.randn(1, 4, 3, 4, 4)
    text = torch.randn(3, 77, 32)
    with torch.no_grad():
        tiny_base.unet(sample, 10, encoder_hidden_states=text)
    assert tiny_base.attention.num_frames == 3


class KeptProcessor(AttnProcessor2_0):
    """Stands for a processor someone else installed (LoRA, IP-adapter)."""


def test_processors_it_does_not_replace_are_kept_and_removal_undoes_it():
    from flash_engine.models.attention import remove_flash_attention
    from flash_engine.models.tiny import build_tiny

    unet = build_tiny().unet
    remove_flash_attention(unet)
    others = {name: KeptProcessor() for name in unet.attn_processors if not is_spatial_self_attention(name)}
    unet.set_attn_processor({**unet.attn_processors, **others})
    context = set_flash_attention(unet)
    processors = unet.attn_processors
    assert all(processors[name] is proc for name, proc in others.items())  # kept, the same objects
    assert all(isinstance(processors[name], CrossFrameAttnProcessor) for name in processors
               if is_spatial_self_attention(name))
    remove_flash_attention(unet)
    assert not any(isinstance(p, CrossFrameAttnProcessor) for p in unet.attn_processors.values())
    assert all(unet.attn_processors[name] is proc for name, proc in others.items())
    context.num_frames = 99
    with torch.no_grad():  # the frame-count hook went with its handle
        unet(torch.randn(1, 4, 3, 4, 4), 10, encoder_hidden_states=torch.randn(3, 77, 32))
    assert context.num_frames == 99 and not hasattr(unet, "flash_context")


def test_an_attention_mask_is_refused_not_ignored():
    attn, _ = make_layer()
    x = torch.randn(FRAMES, TOKENS, DIM)
    mask = torch.zeros(FRAMES, 1, TOKENS)
    mask[..., -1] = float("-inf")
    try:
        attn(x, attention_mask=mask)
    except ValueError as err:
        assert "attention_mask" in str(err)
    else:
        raise AssertionError("a mask was ignored")


def test_training_switches_are_put_back_even_after_an_error():
    context = FlashAttentionContext()
    try:
        with context.training_switches(align_motion=True, share_qk_layers=frozenset({"a"}), pairs=2):
            assert context.align_motion and context.share_qk_layers == {"a"} and context.pairs == 2
            raise RuntimeError("a failed step")
    except RuntimeError:
        pass
    assert context.align_motion is False and context.share_qk_layers == frozenset() and context.pairs == 1
