"""The drag-usage probe (evaluation.drag_usage) on a tiny random UNet and hand-made clips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from puppet_master import edm
from puppet_master.evaluation.drag_usage import drag_usage, load_latent_clips
from puppet_master.models import UNetDragSpatioTemporalConditionModel

REPO = Path(__file__).resolve().parent.parent


def _unet():
    torch.manual_seed(0)
    unet = UNetDragSpatioTemporalConditionModel(
        num_frames=3, block_out_channels=(32, 64, 64, 64), layers_per_block=1, cross_attention_dim=32,
        num_attention_heads=(1, 2, 2, 2), pos_embed_dim=16, drag_embedder_out_channels=(16, 32, 32))
    with torch.no_grad():  # make the (zero-initialised) drag modules matter, so the two conditions differ
        for name, p in unet.named_parameters():
            if ".flow_convs." in f".{name}" or ".drag_token_mlps." in f".{name}":
                p.normal_(0, 0.05)
    return unet.eval()


def _clip(moving: bool, with_drags: bool):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 8, 8, generator=g)
    latents = x0.expand(3, -1, -1, -1).clone()
    if moving:
        latents[1:, :, 2:5, 2:5] += 1.0
    drags = torch.zeros(3, 5, 4)
    if with_drags:
        drags[:, 0] = torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.3, 0.3, 0.4, 0.3], [0.3, 0.3, 0.5, 0.3]])
    return {"latents": latents, "image_latents": x0, "embedding": torch.zeros(1, 32), "drags": drags}


def test_probe_matches_a_direct_edm_computation():
    unet = _unet()
    clip = _clip(moving=True, with_drags=True)
    (r,) = drag_usage(unet, [clip, _clip(moving=False, with_drags=True)], sigmas=(2.0,), seed=7)
    assert r.num_clips == 1  # the static clip is skipped
    x = clip["latents"][None]
    mask = ((x - x[:, :1]).abs().mean(2, keepdim=True) > 0.1).float()
    assert mask.sum() == 2 * 9  # frames 1 and 2, a 3x3 block each
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    pc = edm.preconditioning(torch.full((1, 1, 1, 1, 1), 2.0))
    noisy = x + 2.0 * eps
    with torch.no_grad():
        out = unet(pc.c_in * noisy, pc.c_noise.reshape(1), image_latents=clip["image_latents"][None],
                   encoder_hidden_states=clip["embedding"][None], drags=clip["drags"][None],
                   force_drop_ids=torch.zeros(1)).sample
    expected = float((((pc.c_skip * noisy + pc.c_out * out) - x) ** 2 * mask).sum() / mask.sum())
    assert r.error_with_drags == pytest.approx(expected, rel=1e-5)
    assert r.error_copy_first_frame == pytest.approx(4.0)  # each moving cell is off by 1 in 4 channels
    assert r.error_with_drags != r.error_without_drags


def test_probe_sees_no_gain_without_drags_and_rejects_static_clips():
    unet = _unet()
    results = drag_usage(unet, [_clip(moving=True, with_drags=False)], sigmas=(0.5, 4.0))
    for r in results:
        assert r.error_with_drags == r.error_without_drags and r.gain == 0.0
    with pytest.raises(ValueError, match="moving"):
        drag_usage(unet, [_clip(moving=False, with_drags=True)])


def test_probe_script_runs_on_a_saved_unet_and_latent_folder(tmp_path):
    unet = _unet()
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    (tmp_path / "lat").mkdir()
    for i in range(2):
        save_file(_clip(moving=True, with_drags=True), str(tmp_path / "lat" / f"c{i}.safetensors"))
    assert len(load_latent_clips(tmp_path / "lat")) == 2
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "probe_drag_usage.py"), str(tmp_path / "pipe"),
                          str(tmp_path / "lat"), "--sigma", "1.0"], capture_output=True, text=True, check=True)
    assert "sigma 1: moving-cell error with drags" in out.stdout and "2 clips" in out.stdout


def test_probe_script_reports_a_missing_folder_in_one_line(tmp_path):
    _unet().save_pretrained(tmp_path / "unet")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "probe_drag_usage.py"), str(tmp_path / "unet"),
                          str(tmp_path / "no-latents")], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "error: latent cache folder" in out.stderr and "does not exist" in out.stderr
