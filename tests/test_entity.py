"""DragAnything's entity representation: masks, radius, DIFT features, per-frame conditions."""

import cv2
import numpy as np
import PIL.Image
import pytest
import torch

from puppet_master.entity import (
    DiftFeaturizer,
    assign_drags_to_masks,
    draganything_conditions,
    entity_features,
    gaussian_disc_template,
    inscribed_radius,
    load_mask,
    pool_channels,
    sam_entity_masks,
    segment_entities,
)
from puppet_master.errors import UserInputError
from puppet_master.pipelines.draganything_components import make_sd15_dift_components


def _disc(h, w, cx, cy, r):
    return cv2.circle(np.zeros((h, w), np.uint8), (cx, cy), r, 1, -1).astype(bool)


def test_inscribed_radius_of_disc_rectangle_and_cap():
    assert abs(inscribed_radius(_disc(100, 100, 50, 50, 20), None) - 20) <= 1
    rect = np.zeros((60, 200), bool)
    rect[10:50, 20:180] = True  # 40 px tall: the largest circle has radius 20
    assert abs(inscribed_radius(rect, None) - 20) <= 1
    big = np.ones((300, 300), bool)
    big[0], big[-1], big[:, 0], big[:, -1] = False, False, False, False
    assert inscribed_radius(big) == 50 and inscribed_radius(big, None) > 140
    assert inscribed_radius(np.zeros((10, 10), bool)) == 0


def test_load_mask_threshold_alpha_and_errors(tmp_path):
    gray = np.zeros((30, 40), np.uint8)
    gray[5:15, 10:20] = 255
    gray[20, 30] = 100  # below the threshold
    PIL.Image.fromarray(gray).save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png", size=(40, 30))
    assert mask.dtype == bool and mask.sum() == 100 and mask[10, 15] and not mask[20, 30]
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, only the alpha channel marks the entity
    rgba[0:10, 0:5, 3] = 255
    PIL.Image.fromarray(rgba).save(tmp_path / "a.png")
    assert load_mask(tmp_path / "a.png").sum() == 50
    with pytest.raises(UserInputError, match="40x30 but the image is 64x64"):
        load_mask(tmp_path / "m.png", size=(64, 64))
    PIL.Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(UserInputError, match="empty"):
        load_mask(tmp_path / "empty.png")
    with pytest.raises(UserInputError, match="does not exist"):
        load_mask(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(UserInputError, match="cannot read"):
        load_mask(tmp_path / "bad.png")


def test_assign_drags_picks_smallest_containing_mask():
    obj = np.zeros((50, 80), bool)
    obj[10:40, 10:70] = True
    part = np.zeros_like(obj)
    part[15:25, 50:65] = True
    starts = np.array([[20.0, 30.0], [55.5, 20.2], [69.9, 39.9]])
    assert assign_drags_to_masks(starts, [obj, part]) == [0, 1, 0]
    with pytest.raises(UserInputError, match=r"drag 2 starts at \(5, 5\), outside every mask"):
        assign_drags_to_masks(np.array([[20.0, 30.0], [5.0, 5.0]]), [obj, part])
    with pytest.raises(UserInputError, match="no entity masks"):
        assign_drags_to_masks(starts, [])


def test_segment_entities_finds_the_object_under_each_start():
    arr = np.full((80, 120, 3), 235, np.uint8)
    arr[20:60, 15:55] = (200, 40, 30)  # red square
    arr[25:55, 75:105] = (30, 60, 200)  # blue square
    masks = segment_entities(PIL.Image.fromarray(arr), np.array([[35.0, 40.0], [90.0, 40.0]]))
    red = np.zeros((80, 120), bool)
    red[20:60, 15:55] = True
    blue = np.zeros((80, 120), bool)
    blue[25:55, 75:105] = True
    for mask, truth, other in ((masks[0], red, blue), (masks[1], blue, red)):
        assert mask.shape == (80, 120)
        iou = (mask & truth).sum() / (mask | truth).sum()
        assert iou > 0.8, iou
        assert not (mask & other).any()


def test_sam_absent_gives_clear_error(tmp_path):
    try:
        import segment_anything  # noqa: F401
    except ImportError:
        with pytest.raises(UserInputError, match="SAM is not installed"):
            sam_entity_masks(PIL.Image.new("RGB", (8, 8)), np.array([[1.0, 1.0]]), tmp_path / "sam.pth")
    else:
        with pytest.raises(UserInputError, match="does not exist"):
            sam_entity_masks(PIL.Image.new("RGB", (8, 8)), np.array([[1.0, 1.0]]), tmp_path / "sam.pth")


def test_gaussian_template_matches_release_definition():
    t = gaussian_disc_template()
    assert t.shape == (200, 200) and t.dtype == np.uint8
    assert t[100, 100] == 255 and t.max() == 255
    # exp(-d²/(2·40²)) · 255, floored, inside the disc of radius 100; zero in the corners
    assert t[100, 140] == int(np.exp(-0.5) * 255)
    assert t[100, 180] == int(np.exp(-80**2 / 3200) * 255)
    assert t[0, 0] == 0 and t[5, 5] == 0
    np.testing.assert_array_equal(t[1:, 1:], t[1:, 1:][::-1, ::-1])  # symmetric about (100, 100)


def test_conditions_paint_discs_along_trajectories():
    traj = np.array([
        [[30.0, 20.0], [40.0, 20.0], [50.0, 20.0]],  # entity 0 moves right
        [[100.0, 40.0], [100.0, 40.0], [100.0, 40.0]],  # entity 1 stays
    ])
    vectors = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    c = draganything_conditions(traj, [8, 5], vectors, height=64, width=128)
    assert c.trajectory_maps.shape == (3, 3, 64, 128) and c.trajectory_maps.dtype == torch.float32
    assert c.entity_index.shape == (3, 64, 128)
    maps = c.entity_maps()
    assert maps.shape == (3, 2, 64, 128)
    for f, x in enumerate((30, 40, 50)):
        heat = c.trajectory_maps[f, 0]
        assert torch.equal(c.trajectory_maps[f, 0], c.trajectory_maps[f, 2])
        assert heat[20, x] >= 240 and heat.max() <= 255  # peak at the trajectory point
        assert heat[20, x + 12] == 0 and heat[40, x] == 0  # nothing outside the box
        assert heat[20, x + 4] < heat[20, x]  # falls off
        disc = _disc(64, 128, x, 20, 8)
        assert torch.equal(c.entity_index[f] == 0, torch.from_numpy(disc))
        assert torch.equal(maps[f, :, 20, x], vectors[0]) and torch.equal(maps[f, :, 40, 100], vectors[1])
        assert maps[f, :, 5, 5].abs().sum() == 0
    # a later entity overwrites an earlier one where they overlap
    c2 = draganything_conditions(np.array([[[50.0, 30.0]] * 2, [[54.0, 30.0]] * 2]), [6, 6], vectors, 64, 128)
    assert c2.entity_index[0, 30, 51] == 1 and c2.entity_index[0, 30, 45] == 0
    with pytest.raises(ValueError, match="one radius"):
        draganything_conditions(traj, [8], vectors, 64, 128)


def test_conditions_clip_at_the_border_like_the_release():
    c = draganything_conditions(np.array([[[2.0, 2.0], [127.9, 63.9]]]), [10], torch.ones(1, 4), 64, 128)
    heat = c.trajectory_maps[:, 0]
    assert heat[0, :12, :12].max() > 200  # squeezed into the clipped box [0, 12)
    assert heat[1, 53:63, 117:127].max() > 200 and heat[1].sum() > 0
    assert (c.entity_index[1, 63, 127]) == 0


def test_entity_features_and_pooling():
    fmap = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 4, 6)
    mask = np.zeros((32, 48), bool)
    mask[0:16, 0:16] = True  # covers cells rows 0-1, cols 0-1 at 1/8
    tiny = np.zeros((32, 48), bool)
    tiny[30, 45] = True  # no cell after resizing: the cell under it is used
    feats = entity_features(fmap, [mask, tiny])
    torch.testing.assert_close(feats[0], fmap[:, 0:2, 0:2].mean(dim=(1, 2)))
    torch.testing.assert_close(feats[1], fmap[:, 3, 5])
    pooled = pool_channels(torch.tensor([[1.0, 3.0, 5.0, 7.0]]), 2)
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 6.0]]))
    with pytest.raises(ValueError, match="cannot be pooled"):
        pool_channels(torch.ones(1, 6), 4)


@pytest.fixture(scope="module")
def featurizer():
    torch.manual_seed(0)
    return DiftFeaturizer(**make_sd15_dift_components())


def test_dift_reads_the_requested_up_block(featurizer):
    image = torch.rand(1, 3, 64, 96) * 2 - 1
    g = torch.Generator().manual_seed(0)
    out = featurizer(image, ensemble_size=2, generator=g)
    assert out.shape == (1, 32, 8, 12) and out.dtype == torch.float32
    again = featurizer(image, ensemble_size=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again)
    # reference: the same noised latents through the whole UNet, hooking up block 3 without stopping
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        batch = image.expand(2, -1, -1, -1)
        lat = featurizer.vae.encode(batch).latent_dist.sample(generator=g) * featurizer.vae.config.scaling_factor
        noise = torch.randn(lat.shape, generator=g)
        noisy = featurizer.scheduler.add_noise(lat, noise, torch.tensor([261, 261]))
        grabbed = {}
        handle = featurizer.unet.up_blocks[3].register_forward_hook(lambda m, i, o: grabbed.setdefault("x", o))
        featurizer.unet(noisy, 261, encoder_hidden_states=featurizer.empty_prompt_embedding().expand(2, -1, -1))
        handle.remove()
    torch.testing.assert_close(out[0], grabbed["x"].mean(0))
    ids = featurizer.tokenizer("", padding="max_length", max_length=16).input_ids
    assert ids[:2] == [0, 1] and len(ids) == 16  # BOS, EOS, padding
    lower = featurizer(image, up_ft_index=1, ensemble_size=1)
    assert lower.shape == (1, 64, 4, 6)  # 1/16 of the image
    with pytest.raises(ValueError, match="up_ft_index"):
        featurizer(image, up_ft_index=4)


def test_grabcut_on_a_tiny_image_falls_back_to_the_seed_discs():
    from puppet_master.segmentation import grabcut_foreground

    mask = grabcut_foreground(PIL.Image.new("RGB", (4, 4), (200, 30, 30)), [(1.0, 1.0)])
    assert mask.shape == (4, 4) and mask.dtype == bool
    assert mask[1, 1] and mask.sum() < 16
