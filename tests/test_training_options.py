"""The authors' loss options (non_first_frame_weight, weight_increasing, unscaled UNet input) and 8-bit AdamW."""

import sys

import pytest
import torch

from puppet_master import edm
from puppet_master.errors import UserInputError
from puppet_master.models import UNetDragSpatioTemporalConditionModel
from puppet_master.pipelines.components import SIZES
from puppet_master.training import edm_loss, load_config
from puppet_master.training.trainer import make_optimizer, param_groups, sample_noise


class _Recorder(torch.nn.Module):
    """Runs the real UNet and keeps the sample it was given."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.seen = None

    def forward(self, sample, *args, **kwargs):
        self.seen = sample.detach().clone()
        return self.unet(sample, *args, **kwargs)


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    drags = torch.zeros(2, n, 5, 4)
    drags[:, :, 0] = torch.tensor([0.3, 0.4, 0.5, 0.5])
    return dict(
        latents=torch.randn(2, n, 4, 16, 16, generator=g),
        image_latents=torch.randn(2, 4, 16, 16, generator=g),
        embedding=torch.randn(2, 1, 32, generator=g),
        drags=drags,
        key=torch.tensor([3, 11]),
    )


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNetDragSpatioTemporalConditionModel(**SIZES["tiny"]["unet"]).eval()


def _loss(unet, batch, *overrides):
    cfg = load_config(None, ["cond_dropout_prob=0.0", *overrides])
    with torch.no_grad():
        return edm_loss(unet, batch, cfg, torch.ones(batch["latents"].shape[1])).item()


def test_frame_weights_are_the_authors(unet):
    batch = _batch()
    base = _loss(unet, batch)
    const = {w: _loss(unet, batch, f"non_first_frame_weight={w}") for w in (2, 3)}
    inc = {w: _loss(unet, batch, f"non_first_frame_weight={w}", "weight_increasing=true") for w in (2, 3)}
    # weights enter linearly (per-frame terms fixed by the seeded noise): L(3) - L(1) = 2 (L(2) - L(1))
    assert const[3] - base == pytest.approx(2 * (const[2] - base), rel=1e-4)
    assert inc[3] - base == pytest.approx(2 * (inc[2] - base), rel=1e-4)
    assert const[2] > base and inc[2] > base and inc[2] < const[2]  # the ramp weighs frames 1..N-2 less
    assert _loss(unet, batch, "non_first_frame_weight=1", "weight_increasing=true") == pytest.approx(base, rel=1e-6)
    # with two frames the ramp (1, w) and the constant weights (1, w) coincide
    two = _batch(n=2)
    assert _loss(unet, two, "non_first_frame_weight=3", "weight_increasing=true") == pytest.approx(
        _loss(unet, two, "non_first_frame_weight=3"), rel=1e-6)


def test_unet_input_with_and_without_c_in(unet):
    batch = _batch()
    rec = _Recorder(unet)
    cfg = load_config(None, ["cond_dropout_prob=0.0"])
    sigma, eps, _, _ = sample_noise(batch["key"], cfg.seed, tuple(batch["latents"].shape[1:]), cfg.p_mean, cfg.p_std, 0.0, 0.0)
    noisy = batch["latents"] + edm.append_dims(sigma, 5) * eps
    with torch.no_grad():
        edm_loss(rec, batch, cfg, torch.ones(4))
        torch.testing.assert_close(rec.seen, edm.preconditioning(edm.append_dims(sigma, 5)).c_in * noisy)
        edm_loss(rec, batch, load_config(None, ["cond_dropout_prob=0.0", "scale_model_input=false"]), torch.ones(4))
        torch.testing.assert_close(rec.seen, noisy)


def test_8bit_adamw_needs_bitsandbytes(unet, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as when it is not installed
    cfg = load_config(None, [])
    optim = cfg.optim.model_copy(update={"optimizer": "adamw8bit"})
    with pytest.raises(UserInputError, match="bitsandbytes"):
        make_optimizer(param_groups(unet, 1e-4), optim)
    assert isinstance(make_optimizer(param_groups(unet, 1e-4), cfg.optim), torch.optim.AdamW)
