"""DragAnything's ControlNet and the residual-taking SVD UNet."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel

from puppet_master.models import DragAnythingControlNetModel, UNetSpatioTemporalControlNetConditionModel
from puppet_master.pipelines.draganything_components import TINY

KEYS = Path(__file__).parent / "data" / "draganything_controlnet_keys.json"


def _randomise(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_(r / p[0].numel() ** 0.5 if p.ndim >= 2 else 0.05 * r)
    return model


def _inputs(b=1, n=3, h=8, w=16, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(b, n, 8, h, w, generator=g),
        timestep=torch.tensor(0.4),
        encoder_hidden_states=torch.randn(b, 1, d, generator=g),
        added_time_ids=torch.tensor([[6.0, 128.0, 0.02]]).expand(b, 3),
    )


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return _randomise(UNetSpatioTemporalControlNetConditionModel(**TINY["unet"])).eval()


def test_controlnet_state_dict_equals_released_layout():
    reference = json.loads(KEYS.read_text())
    with torch.device("meta"):
        model = DragAnythingControlNetModel(**{k: v for k, v in reference["svd_unet_config"].items()})
    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(keys) == sorted(reference["keys"])
    wrong = {k: (keys[k], s) for k, s in reference["keys"].items() if keys[k] != s}
    assert not wrong
    assert sum(p.numel() for p in model.parameters()) == reference["num_parameters"]
    assert len(keys) == 685 and reference["num_parameters"] == 684_999_873


def test_controlnet_loads_release_style_config(tmp_path):
    """A folder whose config.json names the release's class and omits our extra entry loads."""
    torch.manual_seed(0)
    model = DragAnythingControlNetModel.from_unet(UNetSpatioTemporalConditionModel(**TINY["unet"]), **TINY["controlnet"])
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["_class_name"] = "DragAnythingSDVModel"
    config.pop("entity_embedding_out_channels")
    config["entity_embedding_out_channels_unused_key"] = None
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="blocks_feature"):  # default entity widths (160, ...) do not fit the tiny weights
        DragAnythingControlNetModel.from_pretrained(tmp_path)
    config["entity_embedding_out_channels"] = list(TINY["controlnet"]["entity_embedding_out_channels"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = DragAnythingControlNetModel.from_pretrained(tmp_path)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_unet_is_svd_unet_without_residuals(tiny_unet):
    """Same keys as diffusers' SVD UNet, loads its weights strictly, same output without residuals."""
    svd = UNetSpatioTemporalConditionModel(**TINY["unet"]).eval()
    svd.load_state_dict(tiny_unet.state_dict(), strict=True)
    x = _inputs()
    with torch.no_grad():
        ours = tiny_unet(**x).sample
        ref = svd(**x).sample
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert tiny_unet.num_skip_connections == 1 + 2 + 2 + 2 + 1  # layers_per_block = 1


def test_cumulative_residuals_equal_weighted_once(tiny_unet):
    """The release adds the residuals after every down block: skip j of block b gets n_blocks − b copies."""
    x = _inputs()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        skips = [tiny_unet.conv_in(x["sample"].flatten(0, 1))]
        shapes = [skips[0].shape]
        # skip shapes: run the down path once without residuals
        h = skips[0]
        emb = torch.zeros(3, 4 * 32)
        for block in tiny_unet.down_blocks:
            kw = dict(hidden_states=h, temb=emb, image_only_indicator=torch.zeros(1, 3))
            if getattr(block, "has_cross_attention", False):
                kw["encoder_hidden_states"] = x["encoder_hidden_states"].repeat_interleave(3, 0)
            h, res = block(**kw)
            shapes += [r.shape for r in res]
        residuals = [0.1 * torch.randn(s, generator=g) for s in shapes]
        mid = 0.1 * torch.randn(h.shape, generator=g)
        cumulative = tiny_unet(**x, down_block_additional_residuals=residuals, mid_block_additional_residual=mid).sample
        copies = [4, 4, 4, 3, 3, 2, 2, 1]  # conv_in, block 0 (resnet, downsample), block 1, block 2, block 3 (resnet)
        tiny_unet.register_to_config(controlnet_residuals="once")
        try:
            once = tiny_unet(**x, down_block_additional_residuals=[c * r for c, r in zip(copies, residuals)],
                             mid_block_additional_residual=mid).sample
            plain = tiny_unet(**x, down_block_additional_residuals=residuals, mid_block_additional_residual=mid).sample
        finally:
            tiny_unet.register_to_config(controlnet_residuals="cumulative")
    torch.testing.assert_close(cumulative, once, atol=1e-4, rtol=1e-4)
    assert (cumulative - plain).abs().max() > 1e-3
    with pytest.raises(ValueError):
        tiny_unet(**x, down_block_additional_residuals=residuals[:-1], mid_block_additional_residual=mid)
    with pytest.raises(ValueError):
        UNetSpatioTemporalControlNetConditionModel(**TINY["unet"], controlnet_residuals="twice")


def test_controlnet_from_unet_starts_neutral_and_embedding_is_reusable(tiny_unet):
    controlnet = DragAnythingControlNetModel.from_unet(tiny_unet, **TINY["controlnet"]).eval()
    assert torch.equal(controlnet.conv_in.weight, tiny_unet.conv_in.weight)
    assert torch.equal(controlnet.add_embedding.linear_1.weight, tiny_unet.add_embedding.linear_1.weight)
    x = _inputs()
    g = torch.Generator().manual_seed(2)
    traj = torch.rand(1, 3, 3, 64, 128, generator=g) * 255
    ent = torch.randn(1, 3, controlnet.entity_channels, 64, 128, generator=g)
    with torch.no_grad():
        out = controlnet(**x, trajectory_maps=traj, entity_maps=ent)
        assert len(out.down_block_res_samples) == tiny_unet.num_skip_connections
        assert all(r.abs().max() == 0 for r in out.down_block_res_samples) and out.mid_block_res_sample.abs().max() == 0
        _randomise(controlnet, seed=3)
        a = controlnet(**x, trajectory_maps=traj, entity_maps=ent, conditioning_scale=0.5)
        emb = controlnet.embed_conditions(traj, ent)
        assert emb.shape == (3, 32, 8, 16)
        b = controlnet(**x, conditioning_embedding=emb, conditioning_scale=0.5)
        c = controlnet(**x, conditioning_embedding=emb, conditioning_scale=1.0)
    for ra, rb, rc in zip(a.down_block_res_samples, b.down_block_res_samples, c.down_block_res_samples):
        torch.testing.assert_close(ra, rb)
        torch.testing.assert_close(2 * ra, rc)
    assert a.down_block_res_samples[0].abs().max() > 0
    with pytest.raises(ValueError, match="condition embedding"):
        controlnet(**x, conditioning_embedding=emb[:, :, :4])
    with pytest.raises(ValueError, match="trajectory_maps"):
        controlnet(**x)
