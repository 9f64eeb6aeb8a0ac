"""Chroma anchoring (pipelines/chroma.py; not in the paper, docs/design.md §5) and its pipeline setting."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from puppet_master.drags import DragSet
from puppet_master.errors import UserInputError
from puppet_master.pipelines import PuppetMasterPipeline, build_components
from puppet_master.pipelines.chroma import anchor_chroma, gaussian_blur, rgb_to_ycbcr, ycbcr_to_rgb


def _video(seed=0, shape=(1, 3, 3, 32, 32)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_ycbcr_is_bt601_and_inverts():
    rgb = _video()[0]
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=1e-6, rtol=0)
    # grey has no chroma and its luma is its value; pure red: Y = 0.299, Cr = 0.5 (JPEG's full-range BT.601)
    grey = torch.full((3, 2, 2), 0.4)
    torch.testing.assert_close(rgb_to_ycbcr(grey), torch.stack([grey[0], 0 * grey[0], 0 * grey[0]]))
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    torch.testing.assert_close(rgb_to_ycbcr(red).flatten(), torch.tensor([0.299, -0.168736, 0.5]))


def test_gaussian_blur_keeps_constants_and_the_mean_and_smooths():
    const = torch.full((1, 2, 9, 7), 0.25)
    torch.testing.assert_close(gaussian_blur(const, 30.0), const)  # kernel far larger than the image
    x = torch.zeros(1, 1, 41, 41)
    x[0, 0, 20, 20] = 1.0
    y = gaussian_blur(x, 2.0)
    assert abs(float(y.sum()) - 1.0) < 1e-5 and float(y.max()) < 0.05  # an impulse spreads, nothing lost inside
    # the kernel's profile is a Gaussian of that σ: value at 2 px over value at 0 = exp(-0.5)
    assert abs(float(y[0, 0, 20, 22] / y[0, 0, 20, 20]) - np.exp(-0.5)) < 1e-3
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, 0.0)


@pytest.mark.parametrize("sigma", [0.7, 3.0, 8.0])
def test_gaussian_blur_is_scipys_with_nearest_borders(sigma):
    """The matrix form equals scipy.ndimage's Gaussian filter (same 3 σ reach, borders repeated)."""
    from scipy import ndimage  # the eval extra, in the test extras
    x = torch.rand(2, 40, 23, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = np.stack([ndimage.gaussian_filter(a, sigma, mode="nearest", truncate=3.0) for a in x.numpy()])
    np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), expected, atol=1e-6)


def test_anchor_keeps_the_luma_and_fine_chroma_and_takes_the_coarse_chroma_from_the_reference():
    video, reference = _video(0), _video(1)
    out = anchor_chroma(video, reference, 4.0)
    ours, theirs, result = (rgb_to_ycbcr(t[0]) for t in (video, reference, out))
    torch.testing.assert_close(result[:, 0], ours[:, 0], atol=1e-5, rtol=0)  # luma untouched
    torch.testing.assert_close(anchor_chroma(video, video, 4.0), video, atol=1e-5, rtol=0)  # nothing to correct
    # a colour cast of the whole video (constant chroma offset) is removed
    cast = ycbcr_to_rgb(rgb_to_ycbcr(video) + torch.tensor([0.0, 0.2, -0.15]).view(1, 1, 3, 1, 1))
    torch.testing.assert_close(anchor_chroma(cast, video, 4.0), video, atol=1e-5, rtol=0)
    # a colour blotch (a smooth bump of chroma, wider than σ) mostly goes: blurred at σ, the output's chroma
    # is far closer to the reference's than the video's was
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    bump = torch.exp(-((yy - 12) ** 2 + (xx - 20) ** 2) / (2 * 6.0**2))
    blotched = ycbcr_to_rgb(rgb_to_ycbcr(video) + torch.stack([0 * bump, 0.3 * bump, -0.2 * bump])[None, None])
    coarse = lambda v: gaussian_blur(rgb_to_ycbcr(v[0])[:, 1:], 4.0)  # noqa: E731
    before = (coarse(blotched) - coarse(video)).abs().mean()
    after = (coarse(anchor_chroma(blotched, video, 4.0)) - coarse(video)).abs().mean()
    assert after < 0.25 * before
    # fine chroma (a one-pixel checkerboard) is the video's
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2 * 0.2 - 0.1).expand(1, 3, 32, 32)
    chroma = torch.zeros(1, 3, 3, 32, 32)
    chroma[:, :, 2] = checker[:, 0]
    fine = ycbcr_to_rgb(chroma)
    kept = rgb_to_ycbcr(anchor_chroma(fine, torch.zeros_like(fine), 4.0))[:, :, 2]
    assert float((kept - chroma[:, :, 2])[..., 8:-8, 8:-8].abs().max()) < 1e-3  # (the borders replicate the edge)
    with pytest.raises(ValueError, match="both be"):
        anchor_chroma(video, reference[:, :2], 4.0)


KW = dict(num_frames=4, height=64, width=64, num_inference_steps=2, output_type="pt")
DRAGS = DragSet.from_pairs([((20, 20), (44, 30))], 64, 64, num_frames=4)


def _image():
    arr = np.full((64, 64, 3), 255, np.uint8)
    arr[16:48, 16:48] = (200, 60, 40)  # a red square on white
    return PIL.Image.fromarray(arr)


@pytest.fixture(scope="module")
def pipe():
    pipe = PuppetMasterPipeline(**build_components("tiny", seed=0, with_image_encoder=False), warp_init_sigma=2.0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_pipeline_anchors_the_chroma_to_the_warped_input_and_keeps_the_luma(pipe, tmp_path):
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    plain = pipe(_image(), DRAGS, generator=gen(), **KW).frames[0] * 2 - 1  # (N, 3, H, W) in [-1, 1]
    torch.testing.assert_close(pipe(_image(), DRAGS, generator=gen(), chroma_anchor_sigma=0, **KW).frames[0] * 2 - 1,
                               plain, atol=0, rtol=0)  # 0 = off
    anchored = pipe(_image(), DRAGS, generator=gen(), chroma_anchor_sigma=8.0, **KW).frames[0] * 2 - 1
    # what the method computes: the decoded frames through anchor_chroma with the input warped by the UNet's field
    image = pipe._prepare_image(_image(), 64, 64) * 2 - 1
    latents = pipe(_image(), DRAGS, generator=gen(), **{**KW, "output_type": "latent"}).frames
    decoded = pipe.decode_video(latents, None)  # (1, N, 3, H, W) in [-1, 1], not clipped
    expected = pipe.anchor_chroma(decoded, image, pipe._prepare_drags(DRAGS, 4, 1), 8.0)[0]
    torch.testing.assert_close(anchored, expected.clamp(-1, 1), atol=1e-5, rtol=0)
    # the luma is the model's everywhere (colours that would leave [-1, 1] are desaturated, not clipped), so the
    # tracker's grey frames are those of the video without anchoring; the random tiny model's colour drift is gone
    luma = lambda v: rgb_to_ycbcr(v)[:, 0]  # noqa: E731
    assert bool((decoded.abs() > 1).any())  # the random model's output does leave the range: the case is tested
    torch.testing.assert_close(luma(anchored), luma(plain), atol=1e-5, rtol=0)
    coarse = lambda v: gaussian_blur(rgb_to_ycbcr(v)[:, 1:], 8.0)  # noqa: E731
    warped_input = coarse(pipe.anchor_chroma(image[None].expand(1, 4, 3, 64, 64).clone(), image,
                                             pipe._prepare_drags(DRAGS, 4, 1), 8.0)[0])
    # (closer, not equal: where the random model saturates the luma, few colours fit)
    assert float((coarse(anchored) - warped_input).abs().mean()) < 0.7 * float((coarse(plain) - warped_input).abs().mean())
    # a model states it in model_index.json; a call's value wins and is not saved
    anchored_model = PuppetMasterPipeline(**pipe.components, warp_init_sigma=2.0, chroma_anchor_sigma=8.0)
    anchored_model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "model_index.json").read_text())["chroma_anchor_sigma"] == 8.0
    loaded = PuppetMasterPipeline.from_pretrained(tmp_path / "m")
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(loaded(_image(), DRAGS, generator=gen(), **KW).frames[0] * 2 - 1, anchored,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(loaded(_image(), DRAGS, generator=gen(), chroma_anchor_sigma=0, **KW).frames[0] * 2 - 1,
                               plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sigma", [-1.0, 65.0, float("nan")])
def test_a_bad_chroma_anchor_sigma_is_refused_before_any_work(pipe, sigma):
    with pytest.raises(UserInputError, match="chroma_anchor_sigma"):
        pipe(_image(), DRAGS, chroma_anchor_sigma=sigma, **KW)


def test_a_smaller_reference_gives_nearly_the_full_resolution_correction():
    """Computed at 1/4 of the resolution (what the pipeline does for σ = 8 px), the smooth correction is close to the
    one computed at full resolution, and the luma is still exactly the video's."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = torch.stack([torch.sin(3 * xx), torch.cos(2 * yy), xx * yy])[None, None].expand(1, 2, 3, 64, 64) - 0.5
    video = torch.stack([torch.cos(4 * xx * yy), xx - yy, torch.sin(5 * yy)])[None, None].expand(1, 2, 3, 64, 64) * 0.8
    full = anchor_chroma(video, smooth, 8.0)
    small = torch.nn.functional.avg_pool2d(smooth.reshape(2, 3, 64, 64), 4).reshape(1, 2, 3, 16, 16)
    reduced = anchor_chroma(video, small, 8.0)
    assert float((reduced - full)[..., 8:-8, 8:-8].abs().max()) < 0.03  # against a correction of up to 1.4
    torch.testing.assert_close(rgb_to_ycbcr(reduced)[:, :, 0], rgb_to_ycbcr(video)[:, :, 0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="integer factor"):
        anchor_chroma(video, small[..., :15], 8.0)


def test_a_value_range_desaturates_instead_of_clipping_and_keeps_the_luma():
    video = _video(3) * 1.2  # partly outside [-1, 1], as a decoder's output can be
    reference = _video(4)
    free = anchor_chroma(video.clamp(-1, 1), reference, 4.0)
    kept = anchor_chroma(video, reference, 4.0, value_range=(-1.0, 1.0))
    assert float(free.abs().max()) > 1.0 and float(kept.abs().max()) <= 1.0 + 1e-6
    torch.testing.assert_close(rgb_to_ycbcr(kept)[:, :, 0], rgb_to_ycbcr(video.clamp(-1, 1))[:, :, 0], atol=1e-5,
                               rtol=0)
    # pixels whose anchored colour fits are exactly the unconstrained result; the others keep their hue direction
    fits = (free.abs() <= 1).all(dim=2, keepdim=True).expand_as(free)
    torch.testing.assert_close(kept[fits], free[fits], atol=1e-6, rtol=0)
    luma = rgb_to_ycbcr(kept)[:, :, :1]
    scale = (kept - luma) / (free - rgb_to_ycbcr(free)[:, :, :1])
    spread = scale.amax(dim=2) - scale.amin(dim=2)  # one factor per pixel for the three channels
    assert float(spread[~fits[:, :, 0]].abs().max()) < 1e-3
