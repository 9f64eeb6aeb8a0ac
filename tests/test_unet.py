import json

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from puppet_master.models import AllToFirstAttnProcessor, UNetDragSpatioTemporalConditionModel
from puppet_master.models.attention import naive_all_to_first_attention
from puppet_master.pipelines.components import SIZES

TINY = SIZES["tiny"]["unet"]


def _inputs(b=1, n=5, h=16, w=16, k=5, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    drags = torch.zeros(b, n, k, 4)
    drags[:, :, 0, :2] = torch.tensor([0.3, 0.4])
    drags[:, :, 0, 2:] = torch.tensor([0.3, 0.4]) + torch.linspace(0, 1, n)[:, None] * torch.tensor([0.4, 0.2])
    return dict(
        sample=torch.randn(b, n, 4, h, w, generator=g),
        timestep=torch.full((b,), 0.3),
        image_latents=torch.randn(b, 4, h, w, generator=g),
        encoder_hidden_states=torch.randn(b, 1, d, generator=g),
        drags=drags,
    )


def _randomise(model, seed=1):
    """Seeded random weights at sensible scales (zero-initialised layers become active)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.ndim >= 2:
                p.copy_(r / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * r)
            else:
                p.copy_(0.05 * r)
    return model


def test_golden_a_output_matches_reference(golden_a, golden_a_meta):
    model = UNetDragSpatioTemporalConditionModel(**golden_a_meta["constructor_kwargs"]).eval()
    state = {k[len("model."):]: v for k, v in golden_a.items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in model.parameters()) == golden_a_meta["num_parameters"]
    drag_params = sum(p.numel() for n, p in model.named_parameters() if ".flow_convs." in n or ".drag_token_mlps." in n)
    assert drag_params == golden_a_meta["num_drag_module_parameters (flow_convs + drag_token_mlps)"]
    assert sorted(model.spatial_self_attention_names()) == sorted(golden_a_meta["all_to_first_processor_keys"])
    assert len(model.attn_processors) == golden_a_meta["num_attention_processors"]
    with torch.no_grad():
        out = model(
            golden_a["input.sample"], golden_a["input.timestep"], golden_a["input.image_latents"],
            golden_a["input.encoder_hidden_states"], None, golden_a["input.drags"],
        ).sample
    assert out.shape == golden_a["output.sample"].shape
    err = (out - golden_a["output.sample"]).abs().max().item()
    assert err <= 1e-4, err
    # sanity: the drags and the attention pattern matter far beyond that tolerance
    with torch.no_grad():
        out0 = model(golden_a["input.sample"], golden_a["input.timestep"], golden_a["input.image_latents"],
                     golden_a["input.encoder_hidden_states"], None, torch.zeros_like(golden_a["input.drags"])).sample
    assert (out0 - golden_a["output.sample"]).abs().max() > 0.5


def test_full_size_state_dict_keys_and_shapes(shared_dir):
    ref = json.loads((shared_dir / "reference" / "puppet_master_full_state_dict_keys.json").read_text())
    with torch.device("meta"):
        model = UNetDragSpatioTemporalConditionModel()
    mine = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert mine == ref
    assert sum(p.numel() for p in model.parameters()) == 1_675_809_962


def test_full_size_svd_unet_converts_on_meta_device():
    """SVD's published UNet config gives exactly our key set minus add_embedding (docs/design.md §4)."""
    with torch.device("meta"):
        svd = UNetSpatioTemporalConditionModel()
        ours = UNetDragSpatioTemporalConditionModel()
    svd_keys = {k: tuple(v.shape) for k, v in svd.state_dict().items()}
    our_keys = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert set(svd_keys) - set(our_keys) == {k for k in svd_keys if k.startswith("add_embedding.")}
    added = set(our_keys) - set(svd_keys)
    assert len(added) == 240 and all(".flow_convs." in k or ".drag_token_mlps." in k for k in added)
    assert all(svd_keys[k] == our_keys[k] for k in set(svd_keys) & set(our_keys))


def test_all_to_first_processor_equals_naive_implementation():
    torch.manual_seed(0)
    attn = Attention(query_dim=24, heads=3, dim_head=8, bias=False)
    attn.set_processor(AllToFirstAttnProcessor(num_frames=4))
    x = torch.randn(2 * 4, 10, 24)  # 2 videos x 4 frames, 10 tokens
    with torch.no_grad():
        fast = attn(x)
        slow = naive_all_to_first_attention(attn, x, num_frames=4)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    # frame 0 attends to itself: equals ordinary self-attention on frame 0
    attn.set_processor(AttnProcessor2_0())
    with torch.no_grad():
        full = attn(x)
    torch.testing.assert_close(fast[0::4], full[0::4], atol=1e-5, rtol=1e-5)
    assert (fast[1::4] - full[1::4]).abs().max() > 1e-3


def test_all_to_first_processor_rejects_wrong_frame_count():
    attn = Attention(query_dim=8, heads=1, dim_head=8)
    attn.set_processor(AllToFirstAttnProcessor(num_frames=3))
    with pytest.raises(ValueError, match="multiple of num_frames"):
        attn(torch.randn(4, 5, 8))


@pytest.mark.parametrize("num_frames,h,w", [(8, 16, 16), (14, 16, 16), (3, 24, 40)])
def test_any_frame_count_and_latent_size(num_frames, h, w):
    model = _randomise(UNetDragSpatioTemporalConditionModel(**TINY)).eval()
    inp = _inputs(b=2, n=num_frames, h=h, w=w)
    with torch.no_grad():
        out = model(**inp).sample
    assert out.shape == (2, num_frames, 4, h, w)
    assert torch.isfinite(out).all()
    assert model.drag_block_sizes(h, w) == [(h, w), (h // 2, w // 2), (h // 4, w // 4)]


def test_bad_latent_size_is_rejected():
    model = UNetDragSpatioTemporalConditionModel(**TINY)
    with pytest.raises(ValueError, match="multiple of the UNet stride 8"):
        model(**_inputs(h=12, w=16))


def test_videos_in_a_batch_are_independent_and_frame0_is_all_to_first_anchor():
    model = _randomise(UNetDragSpatioTemporalConditionModel(**TINY)).eval()
    inp = _inputs(b=2, n=4)
    with torch.no_grad():
        both = model(**inp).sample
        single = model(**{k: v[1:] for k, v in inp.items()}).sample
    torch.testing.assert_close(both[1:], single, atol=1e-4, rtol=1e-4)


def test_ablation_switches():
    shift_only = UNetDragSpatioTemporalConditionModel(**TINY, use_modulate=False)
    emb = shift_only.down_blocks[0].flow_convs[0]
    assert emb.conv_out.out_channels == 32  # C, not 2C
    no_tokens = UNetDragSpatioTemporalConditionModel(**TINY, drag_token_cross_attn=False)
    assert not any(".drag_token_mlps." in k for k in no_tokens.state_dict())
    no_mod = UNetDragSpatioTemporalConditionModel(**TINY, drag_modulation=False)
    assert not any(".flow_convs." in k for k in no_mod.state_dict())
    plain = UNetDragSpatioTemporalConditionModel(**TINY, all_to_first_attention=False)
    assert not any(isinstance(p, AllToFirstAttnProcessor) for p in plain.attn_processors.values())
    full = UNetDragSpatioTemporalConditionModel(**TINY)
    assert sum(isinstance(p, AllToFirstAttnProcessor) for p in full.attn_processors.values()) == 3 * 1 + 1 + 3 * 2
    # each switch changes the computation of a randomised model
    base = _randomise(UNetDragSpatioTemporalConditionModel(**TINY)).eval()
    inp = _inputs()
    with torch.no_grad():
        ref = base(**inp).sample
        base.set_all_to_first_attention(False)
        assert (base(**inp).sample - ref).abs().max() > 1e-3
        base.set_all_to_first_attention(True)
        torch.testing.assert_close(base(**inp).sample, ref)


def test_drags_change_output_and_force_drop_removes_them():
    model = _randomise(UNetDragSpatioTemporalConditionModel(**TINY, cond_dropout_prob=1.0))
    inp = _inputs(b=2)
    model.eval()
    with torch.no_grad():
        with_drags = model(**inp).sample
        no_drags = model(**{**inp, "drags": torch.zeros_like(inp["drags"])}).sample
        forced = model(**inp, force_drop_ids=torch.tensor([0, 1])).sample
    assert (with_drags - no_drags).abs().max() > 1e-3
    torch.testing.assert_close(forced[0], with_drags[0])
    torch.testing.assert_close(forced[1], no_drags[1])
    # CFG dropout lives in the trainer only: the UNet never drops drags at random, even in
    # training mode with the (unused, kept for old configs) cond_dropout_prob = 1
    model.train()
    with torch.no_grad():
        trained_mode = model(**inp).sample
    torch.testing.assert_close(trained_mode, with_drags, atol=1e-5, rtol=1e-5)


def _tiny_svd():
    return UNetSpatioTemporalConditionModel(
        sample_size=16,
        in_channels=8,
        out_channels=4,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        num_attention_heads=(1, 2, 2, 2),
        num_frames=5,
    )


def test_from_svd_unet_equals_svd_without_drag_layers():
    torch.manual_seed(0)
    svd = _randomise(_tiny_svd(), seed=3).eval()
    with torch.no_grad():  # added-time ids held at zero effect
        svd.add_embedding.linear_2.weight.zero_()
        svd.add_embedding.linear_2.bias.zero_()
    inp = _inputs(n=5)
    ours = UNetDragSpatioTemporalConditionModel.from_svd_unet(
        svd, drag_modulation=False, drag_token_cross_attn=False, all_to_first_attention=False
    ).eval()
    assert not any(k.startswith("add_") for k in ours.state_dict())
    added_time_ids = torch.randn(1, 3)
    with torch.no_grad():
        ref = svd(torch.cat([inp["sample"], inp["image_latents"][:, None].expand(-1, 5, -1, -1, -1)], 2),
                  inp["timestep"], inp["encoder_hidden_states"], added_time_ids).sample
        out = ours(**inp).sample
    # SVD's plain up blocks use ResNet eps 1e-6 where the released drag UNet uses 1e-5
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-4)


def test_from_svd_unet_modulation_starts_at_identity():
    svd = _randomise(_tiny_svd(), seed=4).eval()
    ours = UNetDragSpatioTemporalConditionModel.from_svd_unet(svd, drag_token_cross_attn=False, all_to_first_attention=False).eval()
    for block in [*ours.down_blocks, *ours.up_blocks]:
        for emb in getattr(block, "flow_convs", []):
            assert emb.conv_out.weight.abs().sum() == 0 and emb.conv_out.bias.abs().sum() == 0
    inp = _inputs(n=5)
    with torch.no_grad():
        a = ours(**inp).sample
        b = ours(**{**inp, "drags": torch.zeros_like(inp["drags"])}).sample
    torch.testing.assert_close(a, b)  # zero-initialised modulation: drags have no effect yet
    # the copied weights are SVD's
    torch.testing.assert_close(ours.conv_in.weight, svd.conv_in.weight)


def test_from_svd_unet_rejects_incompatible_weights():
    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = _tiny_svd().config
            self.extra = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="cannot take"):
        UNetDragSpatioTemporalConditionModel.from_svd_unet(Fake())


def test_save_and_load_pretrained_round_trip(tmp_path):
    model = _randomise(UNetDragSpatioTemporalConditionModel(**TINY, use_modulate=False)).eval()
    model.save_pretrained(tmp_path / "unet")
    again = UNetDragSpatioTemporalConditionModel.from_pretrained(tmp_path / "unet").eval()
    assert again.config.use_modulate is False
    inp = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(again(**inp).sample, model(**inp).sample)


def test_gradient_checkpointing_gives_same_gradients():
    model = _randomise(UNetDragSpatioTemporalConditionModel(**TINY, cond_dropout_prob=0.0)).train()
    inp = _inputs(n=3)

    def grads():
        model.zero_grad()
        model(**inp).sample.square().mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    model.enable_gradient_checkpointing()
    ckpt = grads()
    assert len(plain) == len(ckpt)
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
