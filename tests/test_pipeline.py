import numpy as np
import PIL.Image
import pytest
import torch

from puppet_master.drags import DragSet
from puppet_master.drags.warp import warp_images_by_drags
from puppet_master.errors import UserInputError
from puppet_master.models import drag_modules
from puppet_master.pipelines import PuppetMasterPipeline, build_components, guidance_scales


def _image(size=64, seed=0):
    rng = np.random.default_rng(seed)
    arr = np.full((size, size, 3), 255, np.uint8)
    arr[16:48, 16:48] = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    return PIL.Image.fromarray(arr)


def test_cfg_ramp_is_linear_over_frames():
    g = guidance_scales(14, 1.0, 5.0)
    assert g.shape == (14,)
    assert g[0] == 1.0 and g[-1] == 5.0
    torch.testing.assert_close(torch.diff(g), torch.full((13,), 4.0 / 13))


def test_end_to_end_frames_deterministic_with_seed(pipe):
    drags = DragSet.from_pairs([((20, 20), (40, 30))], 64, 64, num_frames=6)
    kwargs = dict(num_frames=6, height=64, width=64, num_inference_steps=3)
    a = pipe(_image(), drags, generator=torch.Generator().manual_seed(7), output_type="np", **kwargs).frames
    b = pipe(_image(), drags, generator=torch.Generator().manual_seed(7), output_type="np", **kwargs).frames
    c = pipe(_image(), drags, generator=torch.Generator().manual_seed(8), output_type="np", **kwargs).frames
    assert a.shape == (1, 6, 64, 64, 3)
    assert a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    pil = pipe(_image(), drags, generator=torch.Generator().manual_seed(7), **kwargs).frames
    assert len(pil[0]) == 6 and pil[0][0].size == (64, 64)


def test_drag_tensor_input_equals_dragset_input(pipe):
    drags = DragSet.from_pairs([((20, 20), (40, 30)), ((50, 10), (50, 40))], 64, 64, num_frames=4)
    kwargs = dict(num_frames=4, height=64, width=64, num_inference_steps=2, output_type="latent")
    a = pipe(_image(), drags, generator=torch.Generator().manual_seed(0), **kwargs).frames
    b = pipe(_image(), drags.to_tensor(5), generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert a.shape == (1, 4, 4, 8, 8)
    torch.testing.assert_close(a, b)


def test_drag_encodings_are_computed_once_per_call(pipe, monkeypatch):
    calls = []
    real = drag_modules.encode_drags

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(drag_modules, "encode_drags", counting)
    drags = DragSet.from_pairs([((20, 20), (40, 30))], 64, 64, num_frames=4)
    pipe(_image(), drags, num_frames=4, height=64, width=64, num_inference_steps=4, output_type="latent")
    assert sorted(calls) == sorted([(8, 8), (4, 4), (2, 2)])  # once per drag resolution, not per step


def test_unconditional_branch_gets_zero_drags_image_latent_and_embedding(pipe, monkeypatch):
    seen = {}
    real_forward = pipe.unet.forward

    def spy(sample, timestep, image_latents, encoder_hidden_states, **kwargs):
        seen["image_latents"] = image_latents.clone()
        seen["emb"] = encoder_hidden_states.clone()
        seen["drags"] = kwargs["drag_conditioning"].drags.clone()
        return real_forward(sample, timestep, image_latents, encoder_hidden_states, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", spy)
    drags = DragSet.from_pairs([((20, 20), (40, 30))], 64, 64, num_frames=4)
    pipe(_image(), drags, num_frames=4, height=64, width=64, num_inference_steps=1, output_type="latent")
    assert seen["image_latents"].shape[0] == 2
    assert seen["image_latents"][0].abs().sum() == 0 and seen["image_latents"][1].abs().sum() > 0
    assert seen["emb"][0].abs().sum() == 0 and seen["emb"][1].abs().sum() > 0
    assert seen["drags"][0].abs().sum() == 0 and seen["drags"][1].abs().sum() > 0


def test_guidance_one_disables_cfg(pipe, monkeypatch):
    batch_sizes = []
    real_forward = pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda s, *a, **k: batch_sizes.append(s.shape[0]) or real_forward(s, *a, **k))
    drags = DragSet.from_pairs([((20, 20), (40, 30))], 64, 64, num_frames=4)
    pipe(_image(), drags, num_frames=4, height=64, width=64, num_inference_steps=2, max_guidance_scale=1.0, output_type="latent")
    assert batch_sizes == [1, 1]


def test_bad_inputs(pipe):
    drags = DragSet.from_pairs([((20, 20), (40, 30))], 64, 64, num_frames=4)
    with pytest.raises(UserInputError, match="multiples of 64"):
        pipe(_image(), drags, num_frames=4, height=40, width=64)
    with pytest.raises(UserInputError, match="drags tensor"):
        pipe(_image(), torch.zeros(4, 3, 4), num_frames=4, height=64, width=64)
    with pytest.raises(UserInputError, match="image must be"):
        pipe("not an image", drags, num_frames=4, height=64, width=64)


def test_pipeline_without_image_encoder(tmp_path):
    comps = build_components("tiny", seed=1, with_image_encoder=False)
    pipe = PuppetMasterPipeline(**comps)
    pipe.save_pretrained(tmp_path / "p")
    again = PuppetMasterPipeline.from_pretrained(tmp_path / "p")
    assert again.image_encoder is None
    drags = DragSet.from_pairs([((20, 20), (40, 30))], 64, 64, num_frames=4)
    out = again(_image(), drags, num_frames=4, height=64, width=64, num_inference_steps=2, output_type="pt").frames
    assert out.shape == (1, 4, 3, 64, 64)


def test_from_svd_assembles_from_an_svd_folder_layout(tmp_path):
    """The SVD folder layout (vae/, image_encoder/, feature_extractor/, unet/, scheduler/) + authors' weights."""
    from diffusers import UNetSpatioTemporalConditionModel
    from safetensors.torch import save_file

    comps = build_components("tiny", seed=2)
    svd_dir = tmp_path / "svd"
    comps["vae"].save_pretrained(svd_dir / "vae")
    comps["image_encoder"].save_pretrained(svd_dir / "image_encoder")
    comps["feature_extractor"].save_pretrained(svd_dir / "feature_extractor")
    comps["scheduler"].save_pretrained(svd_dir / "scheduler")
    svd_unet = UNetSpatioTemporalConditionModel(
        in_channels=8, out_channels=4, block_out_channels=(32, 64, 64, 64), layers_per_block=1,
        cross_attention_dim=32, num_attention_heads=(1, 2, 2, 2),
    )
    svd_unet.save_pretrained(svd_dir / "unet")
    unet_kwargs = dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, cross_attention_dim=32,
                       num_attention_heads=(1, 2, 2, 2), pos_embed_dim=16, drag_embedder_out_channels=(16, 32, 32))

    # 1) training start: SVD's UNet converted
    pipe = PuppetMasterPipeline.from_svd(svd_dir, **unet_kwargs)
    torch.testing.assert_close(pipe.unet.conv_in.weight, svd_unet.conv_in.weight)
    # 2) released checkpoint: a model.safetensors loaded strictly
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in comps["unet"].state_dict().items()}, str(weights))
    pipe = PuppetMasterPipeline.from_svd(svd_dir, unet_weights=weights, **unet_kwargs)
    torch.testing.assert_close(pipe.unet.conv_in.weight, comps["unet"].conv_in.weight)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    drags = DragSet.from_pairs([((20, 20), (40, 30))], 64, 64, num_frames=4)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(_image(), drags, num_frames=4, height=64, width=64, num_inference_steps=2, output_type="np").frames
    assert out.shape == (1, 4, 64, 64, 3)


def _saved_and_reloaded(pipe, tmp_path, **settings):
    """``pipe``'s components in a pipeline with ``settings``, saved and loaded back with ``from_pretrained``."""
    PuppetMasterPipeline(**pipe.components, **settings).save_pretrained(tmp_path / "p")
    loaded = PuppetMasterPipeline.from_pretrained(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    return loaded


def test_warp_init_sigma_starts_from_the_drag_warped_first_frame(pipe, tmp_path, monkeypatch):
    """Not in the paper (opt-in): sampling starts from the warped first-frame latent plus noise of σ."""
    from puppet_master.pipelines import pipeline_puppet_master as module

    drags = DragSet.from_pairs([((20, 20), (44, 30))], 64, 64, num_frames=4)
    kwargs = dict(num_frames=4, height=64, width=64, num_inference_steps=10, output_type="latent")
    warped = []
    real = module.warp_latents_by_drags
    monkeypatch.setattr(module, "warp_latents_by_drags", lambda *a, **k: warped.append(real(*a, **k)) or warped[-1])

    def run(**extra):
        return pipe(_image(), drags, generator=torch.Generator().manual_seed(3), **kwargs, **extra).frames

    paper = run()
    assert not warped  # the default is the paper's sampling from pure noise
    torch.testing.assert_close(run(warp_init_sigma=0), paper)
    # σ below the schedule's smallest: one Euler step at σ_min, so the result is the warped latent itself
    near = run(warp_init_sigma=1e-3)
    target = warped[-1] * pipe.vae.config.scaling_factor
    assert target.shape == paper.shape
    assert target[:, 1:].sub(target[:, :1]).abs().max() > 1e-3  # the drag moved later frames' latents
    err_near, err_paper = (near - target).abs().mean(), (paper - target).abs().mean()
    assert err_near < 0.1 * target.abs().mean() and err_paper > 10 * err_near, (err_near, err_paper)
    mid = run(warp_init_sigma=2.0)
    assert not torch.allclose(mid, near) and not torch.allclose(mid, paper)

    # a pipeline setting, saved in model_index.json and used when the call does not override it
    loaded = _saved_and_reloaded(pipe, tmp_path, warp_init_sigma=2.0)
    assert loaded.config.warp_init_sigma == 2.0
    torch.testing.assert_close(
        loaded(_image(), drags, generator=torch.Generator().manual_seed(3), **kwargs).frames, mid)
    with pytest.raises(UserInputError, match="warp_init_sigma"):
        run(warp_init_sigma=-1.0)


def test_detail_transfer_restores_the_input_detail_lost_by_the_vae(pipe, tmp_path):
    """Not in the paper (opt-in): decoded frames + (image − D(E(image))) moved along the drags."""
    drags = DragSet.from_pairs([((8, 8), (20, 12))], 64, 64, num_frames=4)
    kwargs = dict(num_frames=4, height=64, width=64, num_inference_steps=3, output_type="pt")
    image = _image()

    def run(**extra):
        return pipe(image, drags, generator=torch.Generator().manual_seed(3), **kwargs, **extra).frames[0]

    plain = run()
    assert torch.equal(run(detail_transfer_radius=0), plain)  # the default decodes as the paper does
    restored = run(detail_transfer_radius=1.0)
    assert restored.shape == plain.shape and restored.min() >= 0 and restored.max() <= 1
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    latent = pipe.encode_first_frame(x[None] * 2 - 1)
    reconstruction = (pipe.decode_latents(latent[:, None] * pipe.vae.config.scaling_factor)[0, 0] + 1) / 2
    latents = pipe(image, drags, generator=torch.Generator().manual_seed(3),
                   **{**kwargs, "output_type": "latent"}).frames
    decoded = pipe.decode_latents(latents)[0]  # the generated frames before clipping (about [-1, 1])
    # frame 0: the generated frame plus exactly the input's round-trip error, added before clipping (to the
    # decoded frame, not to ``plain``, which is clipped already: the decoded frame may leave [-1, 1])
    expected0 = ((decoded[0] + (x - reconstruction) * 2).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(restored[0], expected0, atol=2e-3, rtol=0)
    # every frame: the decoded latents plus that error moved along the (conditional) drags, in [-1, 1]
    moved = warp_images_by_drags((x - reconstruction)[None] * 2, drags.to_tensor(5)[None], 8, 1.0, 0.02)[0]
    torch.testing.assert_close(restored, ((decoded + moved).clamp(-1, 1) + 1) / 2, atol=2e-3, rtol=0)
    unmoved = ((decoded + (x - reconstruction) * 2).clamp(-1, 1) + 1) / 2
    assert (restored[1:] - unmoved[1:]).abs().amax() > 0.05  # the error moved with the drag
    # far from the drag (bottom-right corner, static) every frame gets the same, unmoved residual
    for f in range(4):
        torch.testing.assert_close(restored[f, :, 56:, 56:], (plain[f] + x - reconstruction).clamp(0, 1)[:, 56:, 56:],
                                   atol=2e-3, rtol=0)
    # a pipeline setting saved in model_index.json
    loaded = _saved_and_reloaded(pipe, tmp_path, detail_transfer_radius=1.0)
    assert loaded.config.detail_transfer_radius == 1.0
    torch.testing.assert_close(loaded(image, drags, generator=torch.Generator().manual_seed(3), **kwargs).frames[0],
                               restored)
    with pytest.raises(UserInputError, match="detail_transfer_radius"):
        run(detail_transfer_radius=-1.0)
