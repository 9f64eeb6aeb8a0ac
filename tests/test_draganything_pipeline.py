"""DragAnythingPipeline end to end on tiny random weights (CPU)."""

import numpy as np
import PIL.Image
import pytest
import torch

from puppet_master.drags import DragSet
from puppet_master.errors import UserInputError
from puppet_master.pipelines import DragAnythingPipeline, build_draganything_components
from puppet_master.pipelines.draganything_components import make_sd15_dift_components

RUN = dict(num_frames=4, height=64, width=128, num_inference_steps=1, dift_ensemble_size=1, output_type="np")


def _scene():
    arr = np.full((90, 160, 3), 240, np.uint8)
    arr[20:60, 30:80] = (200, 50, 40)
    arr[30:70, 100:140] = (40, 80, 200)
    obj = np.zeros((90, 160), bool)
    obj[20:60, 30:80] = True
    other = np.zeros((90, 160), bool)
    other[30:70, 100:140] = True
    drags = DragSet.from_pairs([((50, 40), (70, 45)), ((120, 50), (120, 30))], 160, 90, num_frames=4)
    return PIL.Image.fromarray(arr), drags, [obj, other]


@pytest.fixture(scope="module")
def pipe(tiny_draganything_dir):
    p = DragAnythingPipeline.from_pretrained(tiny_draganything_dir)
    p.set_progress_bar_config(disable=True)
    return p


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_video_conditions_and_determinism(pipe):
    image, drags, masks = _scene()
    out = pipe(image, drags, masks=masks, generator=_gen(), **RUN)
    assert out.frames.shape == (1, 4, 64, 128, 3)
    assert np.isfinite(out.frames).all() and out.frames.min() >= 0 and out.frames.max() <= 1
    cond = out.conditions
    assert cond.trajectory_maps.shape == (4, 3, 64, 128)
    assert cond.entity_vectors.shape == (2, pipe.controlnet.entity_channels)
    # drag 1 (model pixels: x·0.8, y·64/90) ends at (56, 32); its disc is painted there in the last frame
    assert cond.entity_index[-1, 32, 56] == 0 and cond.entity_index[0, 28, 40] == 0
    assert cond.entity_index[-1, 21, 96] == 1
    # the entity masks are the given ones, resized to the model resolution
    assert out.masks[0].shape == (64, 128) and out.masks[0][28, 40] and not out.masks[0][28, 96]
    again = pipe(image, drags, masks=masks, generator=_gen(), **RUN)
    np.testing.assert_array_equal(out.frames, again.frames)
    other = pipe(image, drags, masks=masks, generator=_gen(1), **RUN)
    assert np.abs(out.frames - other.frames).max() > 1e-4


def test_controlnet_scale_and_drags_change_the_video(pipe):
    image, drags, masks = _scene()
    kw = dict(RUN, output_type="latent")
    base = pipe(image, drags, masks=masks, generator=_gen(), **kw).frames
    off = pipe(image, drags, masks=masks, generator=_gen(), controlnet_cond_scale=0.0, **kw).frames
    moved = DragSet.from_pairs([((50, 40), (30, 80)), ((120, 50), (150, 50))], 160, 90, num_frames=4)
    other = pipe(image, moved, masks=masks, generator=_gen(), **kw).frames
    assert (base - off).abs().max() > 1e-4
    assert (base - other).abs().max() > 1e-4
    # without the ControlNet's residuals the drags do not matter (up to CPU kernels' float noise)
    off_moved = pipe(image, moved, masks=masks, generator=_gen(), controlnet_cond_scale=0.0, **kw).frames
    assert (off - off_moved).abs().max() < 0.05 * min((base - off).abs().max(), (base - other).abs().max())


def test_grabcut_fallback_without_masks(pipe):
    image, drags, masks = _scene()
    out = pipe(image, drags, masks=None, generator=_gen(), **RUN)
    for mask, truth in zip(out.masks, masks):
        small = np.asarray(PIL.Image.fromarray(truth).resize((128, 64), PIL.Image.Resampling.NEAREST))
        assert (mask & small).sum() / (mask | small).sum() > 0.6


def test_bad_input(pipe):
    image, drags, masks = _scene()
    with pytest.raises(UserInputError, match="multiples of 64"):
        pipe(image, drags, masks=masks, **dict(RUN, height=60))
    with pytest.raises(UserInputError, match="outside every mask"):
        pipe(image, drags, masks=[masks[0]], **RUN)
    with pytest.raises(UserInputError, match="mask 1 is 80x90 but the image is 160x90"):
        pipe(image, drags, masks=[m[:, :80] for m in masks], **RUN)
    with pytest.raises(UserInputError, match="drags are for a 100x90 image"):
        pipe(image, DragSet.from_pairs([((5, 5), (9, 9))], 100, 90), masks=masks, **RUN)
    with pytest.raises(UserInputError, match="entity_feature_mode"):
        pipe(image, drags, masks=masks, entity_feature_mode="scalar", **RUN)


def test_first_channel_mode_paints_one_value(pipe):
    image, drags, masks = _scene()
    px = pipe._prepare_image(image, 64, 128)
    model_drags = drags.transformed((0.8, 64 / 90), (0, 0), 128, 64)
    small = [np.asarray(PIL.Image.fromarray(m).resize((128, 64))) for m in masks]
    vec = pipe.prepare_conditions(px, model_drags, small, dift_ensemble_size=1, generator=_gen()).entity_vectors
    first = pipe.prepare_conditions(px, model_drags, small, entity_feature_mode="first-channel",
                                    dift_ensemble_size=1, generator=_gen()).entity_vectors
    assert first.shape == vec.shape
    assert torch.all(first == first[:, :1])  # one value per entity on every channel
    assert not torch.all(vec == vec[:, :1])


def test_from_svd_composes_released_layout(tmp_path):
    """SVD folder + ControlNet folder + SD-1.5 folder (the release's three downloads) → same pipeline."""
    parts = build_draganything_components(seed=3)
    svd, cn, sd = tmp_path / "svd", tmp_path / "controlnet", tmp_path / "sd15"
    for name in ("vae", "unet", "image_encoder", "feature_extractor", "scheduler"):
        parts[name].save_pretrained(svd / name)
    parts["controlnet"].save_pretrained(cn)
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        parts[f"dift_{name}"].save_pretrained(sd / name)
    composed = DragAnythingPipeline.from_svd(svd, controlnet=cn, sd15=sd)
    composed.set_progress_bar_config(disable=True)
    direct = DragAnythingPipeline(**parts)
    direct.set_progress_bar_config(disable=True)
    image, drags, masks = _scene()
    a = composed(image, drags, masks=masks, generator=_gen(), **dict(RUN, output_type="latent")).frames
    b = direct(image, drags, masks=masks, generator=_gen(), **dict(RUN, output_type="latent")).frames
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)  # loaded copies differ by float noise (1e-6 in DIFT)
    from puppet_master.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="Stable Diffusion 1.5"):
        DragAnythingPipeline.from_svd(svd, controlnet=cn, sd15=tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="DragAnything ControlNet"):
        DragAnythingPipeline.from_svd(svd, controlnet=tmp_path / "missing", sd15=sd)


def test_sd15_components_tokenizer_is_empty_prompt_ready():
    parts = make_sd15_dift_components()
    ids = parts["tokenizer"]("", padding="max_length", max_length=parts["tokenizer"].model_max_length).input_ids
    assert ids == [0] + [1] * 15


def test_evaluation_method_resizes_to_the_model_and_back(pipe, shared_dir):
    from puppet_master.data.splits import EvalExample, load_eval_dataset
    from puppet_master.evaluation.draganything import draganything_method
    from puppet_master.options import DragAnythingOptions

    ex = load_eval_dataset(shared_dir / "data" / "dragamove-test-dev", limit=1)[1][0]
    ex = EvalExample(ex.name, ex.frames[:4], ex.drags[:4], ex.category)
    seen = {}
    run = draganything_method(pipe, DragAnythingOptions(resolution="128x64", steps=1), dift_ensemble_size=1)
    def hook(module, inputs, output):
        seen["shape"] = tuple(output[0].shape)

    handle = pipe.unet.register_forward_hook(hook)
    try:
        video = run(ex)
    finally:
        handle.remove()
    assert video.dtype == np.uint8 and video.shape == ex.frames.shape  # back at 256x256
    assert seen["shape"][-2:] == (8, 16) and seen["shape"][1] == 4  # generated at 128x64 (latent 16x8)
    np.testing.assert_array_equal(video, run(ex))  # seeded


def test_keep_aspect_letterboxes_the_image_maps_drags_and_masks_and_crops_the_video(pipe):
    """A portrait 90x160 photo at the 128x64 model resolution: fitted (36x64 at x 46), not stretched."""
    arr = np.full((160, 90, 3), 240, np.uint8)
    arr[40:80, 20:70] = (200, 50, 40)
    mask = np.zeros((160, 90), bool)
    mask[40:80, 20:70] = True
    drags = DragSet.from_pairs([((45, 60), (45, 100))], 90, 160, num_frames=4)
    out = pipe(PIL.Image.fromarray(arr), drags, masks=[mask], generator=_gen(), keep_aspect=True, **RUN)
    box = out.letterbox
    assert box.frame == (128, 64) and box.size == (36, 64) and box.offset == (46, 0)
    assert out.frames.shape == (1, 4, 64, 36, 3)  # the input's aspect, 90:160
    assert np.isfinite(out.frames).all()
    # drag (45, 60) -> (45·0.4 + 46, 60·0.4) = (64, 24) in model pixels, its end (64, 40)
    traj = out.conditions.trajectory_maps
    assert traj.shape == (4, 3, 64, 128)
    assert out.conditions.entity_index[0, 24, 64] == 0 and out.conditions.entity_index[-1, 40, 64] == 0
    # the mask sits in the image's part of the frame: rows 16-31, columns 54-73; the padding holds no entity
    model_mask = out.masks[0]
    assert model_mask[16:32, 54:74].all() and model_mask.sum() == 16 * 20
    assert not model_mask[:, :46].any() and not model_mask[:, 82:].any()
    assert (out.conditions.entity_index[:, :, :46] < 0).all()
    # the frame's padding is white and the image is centred in it
    from puppet_master.preprocessing import letterbox

    framed, placement = letterbox(PIL.Image.fromarray(arr), 128, 64)
    framed = np.asarray(framed)
    assert placement == box and (framed[:, :46] == 255).all() and (framed[:, 82:] == 255).all()
    assert tuple(framed[24, 64]) != (255, 255, 255)
    # the default keeps the release's stretch
    stretched = pipe(PIL.Image.fromarray(arr), drags, masks=[mask], generator=_gen(), **RUN)
    assert stretched.frames.shape == (1, 4, 64, 128, 3) and stretched.letterbox is None
