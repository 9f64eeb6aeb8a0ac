"""Drag-warped first-frame latents (drags/warp.py) and the UNet option that uses them."""

import pytest
import torch

from puppet_master.drags.warp import drag_displacement_field, warp_images_by_drags, warp_latents_by_drags
from puppet_master.models import UNetDragSpatioTemporalConditionModel
from puppet_master.pipelines.components import SIZES

TINY = SIZES["tiny"]["unet"]


def _one_drag(n=6, start=(0.25, 0.5), end=(0.75, 0.5), slot=0, k=5):
    drags = torch.zeros(1, n, k, 4)
    t = torch.linspace(0, 1, n)[:, None]
    s, e = torch.tensor(start), torch.tensor(end)
    drags[0, :, slot, :2] = s
    drags[0, :, slot, 2:] = s + t * (e - s)
    return drags


def test_field_is_the_drag_at_its_point_and_zero_far_away():
    drags = _one_drag(start=(4.5 / 16, 8.5 / 16), end=(10.5 / 16, 8.5 / 16))  # cell centres (4, 8) -> (10, 8)
    field = drag_displacement_field(drags, 16, 16, radius=1.5, background_weight=0.02)
    assert field.shape == (1, 6, 16, 16, 2)
    assert field[0, 0].abs().max() == 0  # frame 0: current point = start
    at_point = field[0, -1, 8, 10]  # (row 8, column 10): the drag's last point
    torch.testing.assert_close(at_point, torch.tensor([-6.0 / 1.02, 0.0]))
    assert field[0, -1, 0, 0].abs().max() < 1e-6  # far corner does not move
    # the fade is monotone along the row away from the point
    dx = field[0, -1, 8, 10:, 0].abs()
    assert torch.all(dx[1:] <= dx[:-1])


def test_warp_moves_content_along_the_drag_and_keeps_frame0():
    latents = torch.zeros(1, 3, 16, 16)
    latents[0, :, 8, 4] = torch.tensor([1.0, 2.0, 3.0])  # a marked cell at the drag start
    drags = _one_drag(start=(4.5 / 16, 8.5 / 16), end=(10.5 / 16, 8.5 / 16))
    warped = warp_latents_by_drags(latents, drags, radius=1.5, background_weight=1e-4)
    assert warped.shape == (1, 6, 3, 16, 16)
    assert torch.equal(warped[:, 0], latents)
    # at the last frame the mark has travelled (nearly) the whole 6 cells
    last = warped[0, -1, 0]
    row, col = divmod(int(last.argmax()), 16)
    assert (row, col) == (8, 10)
    torch.testing.assert_close(warped[0, -1, :, 8, 10], torch.tensor([1.0, 2.0, 3.0]), atol=1e-3, rtol=1e-3)


def test_no_drags_means_no_warp_and_unused_slots_are_ignored():
    latents = torch.randn(2, 4, 8, 8)
    none = warp_latents_by_drags(latents, torch.zeros(2, 5, 5, 4))
    assert torch.equal(none, latents[:, None].expand(2, 5, 4, 8, 8))
    one = _one_drag(n=5, slot=3)
    both = torch.cat([one, torch.zeros_like(one)])
    warped = warp_latents_by_drags(latents, both)
    assert not torch.equal(warped[0, -1], latents[0])
    assert torch.equal(warped[1], latents[1, None].expand(5, 4, 8, 8))  # video 2 has no drags


def test_image_warp_follows_the_latent_field_at_pixel_scale():
    """warp_images_by_drags: same motion as the latent warp, in pixels (the pipeline's detail transfer)."""
    drags = _one_drag(start=(4.5 / 16, 8.5 / 16), end=(10.5 / 16, 8.5 / 16))  # 6 cells = 48 px at 8 px/cell
    image = torch.zeros(1, 3, 128, 128)
    image[0, :, 66:70, 34:38] = torch.tensor([1.0, 2.0, 3.0])[:, None, None]  # a mark at the drag start (x 36, y 68)
    warped = warp_images_by_drags(image, drags, cell_size=8, radius=1.5, background_weight=1e-4)
    assert warped.shape == (1, 6, 3, 128, 128)
    assert torch.equal(warped[:, 0], image)
    ys, xs = torch.nonzero(warped[0, -1, 0] > 0.5, as_tuple=True)
    assert abs(xs.float().mean().item() - (35.5 + 48)) < 1.5 and abs(ys.float().mean().item() - 67.5) < 1.5
    # far from the drag nothing moves (a random image, batch of 2, non-square); with cell 1 it is the latent warp
    rng = torch.Generator().manual_seed(0)
    noise = torch.rand(2, 3, 128, 192, generator=rng)
    both = torch.cat([drags, torch.zeros_like(drags)])
    moved = warp_images_by_drags(noise, both, cell_size=8, radius=1.5, background_weight=1e-4)
    assert moved.shape == (2, 6, 3, 128, 192)
    torch.testing.assert_close(moved[0, -1, :, :, :32], noise[0, :, :, :32])  # 3+ radii left of the drag's start
    assert (moved[0, -1, :, 60:76, 76:92] - noise[0, :, 60:76, 76:92]).abs().mean() > 0.1  # at the drag's end
    assert torch.equal(moved[1], noise[1, None].expand(6, 3, 128, 192))  # the second video has no drags
    latents = torch.randn(1, 4, 16, 16)
    torch.testing.assert_close(warp_images_by_drags(latents, drags, cell_size=1), warp_latents_by_drags(latents, drags))
    with pytest.raises(ValueError, match="multiple of cell_size"):
        warp_images_by_drags(torch.zeros(1, 3, 60, 64), drags, cell_size=8)


def test_warp_rejects_bad_shapes():
    with pytest.raises(ValueError, match="drags must be"):
        warp_latents_by_drags(torch.zeros(2, 4, 8, 8), torch.zeros(1, 5, 5, 4))
    with pytest.raises(ValueError, match="radius"):
        drag_displacement_field(torch.zeros(1, 5, 5, 4), 8, 8, radius=0.0)


def _inputs(n=5, h=16, w=16):
    g = torch.Generator().manual_seed(0)
    return dict(
        sample=torch.randn(1, n, 4, h, w, generator=g),
        timestep=torch.full((1,), 0.3),
        image_latents=torch.randn(1, 4, h, w, generator=g),
        encoder_hidden_states=torch.randn(1, 1, 32, generator=g),
        drags=_one_drag(n=n),
    )


def test_unet_warp_option_changes_only_the_image_latent_input():
    torch.manual_seed(0)
    plain = UNetDragSpatioTemporalConditionModel(**TINY).eval()
    with torch.no_grad():
        for p in plain.parameters():  # wake zero-initialised layers so every path counts
            p.add_(0.02 * torch.randn_like(p))
    warped = UNetDragSpatioTemporalConditionModel(**TINY, drag_warp_image_latents=True).eval()
    warped.load_state_dict(plain.state_dict())  # same weights: the option adds no parameters
    inp = _inputs()
    no_drags = {**inp, "drags": torch.zeros_like(inp["drags"])}
    with torch.no_grad():
        torch.testing.assert_close(warped(**no_drags).sample, plain(**no_drags).sample)
        torch.testing.assert_close(
            warped(**inp, force_drop_ids=torch.ones(1)).sample, plain(**inp, force_drop_ids=torch.ones(1)).sample
        )
        out_w, out_p = warped(**inp).sample, plain(**inp).sample
    assert (out_w - out_p).abs().max() > 1e-3
    # the concatenated conditioning of frame 0 is the plain first-frame latent, so frame 0's
    # input is identical; the difference comes from the other frames
    assert warped.config.drag_warp_image_latents is True and plain.config.drag_warp_image_latents is False


def test_unet_warp_option_survives_save_and_load(tmp_path):
    model = UNetDragSpatioTemporalConditionModel(**TINY, drag_warp_image_latents=True, drag_warp_radius=2.0).eval()
    model.save_pretrained(tmp_path / "unet")
    again = UNetDragSpatioTemporalConditionModel.from_pretrained(tmp_path / "unet").eval()
    assert again.config.drag_warp_image_latents is True and again.config.drag_warp_radius == 2.0
    inp = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(again(**inp).sample, model(**inp).sample)
