"""The SVD-style pipeline base (pipelines/pipeline_svd_base.py) and the first-frame tie (not in the paper)."""

import io

import numpy as np
import PIL.Image
import pytest
import torch

from puppet_master.drags import DragSet
from puppet_master.errors import UserInputError
from puppet_master.pipelines import DragAnythingPipeline, PuppetMasterPipeline, SVDStylePipeline, build_components
from puppet_master.pipelines.components import make_image_vae

KW = dict(num_frames=4, height=64, width=64)
DRAGS = DragSet.from_pairs([((20, 20), (44, 30))], 64, 64, num_frames=4)


def _image():
    rng = np.random.default_rng(0)
    arr = np.full((64, 64, 3), 255, np.uint8)
    arr[16:48, 16:48] = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    return PIL.Image.fromarray(arr)


def _pixels(image):
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float()[None] / 255


def _gen(seed=3):
    return torch.Generator().manual_seed(seed)


def test_both_pipelines_share_one_loop():
    for cls in (PuppetMasterPipeline, DragAnythingPipeline):
        assert issubclass(cls, SVDStylePipeline)
        for name in ("denoise", "prepare_timesteps", "encode_first_frame", "encode_image_embedding", "decode_latents",
                     "_prepare_image", "postprocess_video"):
            assert name not in vars(cls), f"{cls.__name__} repeats {name}"


def test_noise_comes_from_the_generator_as_randn_tensor_draws_it(pipe):
    """The same numbers as ``torch.randn`` with the same generator (and a given ``latents`` is that noise)."""
    kwargs = dict(KW, num_inference_steps=2, output_type="latent")
    drawn = pipe(_image(), DRAGS, generator=_gen(7), **kwargs).frames
    noise = torch.randn((1, 4, 4, 8, 8), generator=_gen(7))
    torch.testing.assert_close(pipe(_image(), DRAGS, latents=noise, **kwargs).frames, drawn, atol=0, rtol=0)
    # one generator per video: each video's noise is its own generator's draw
    _, noise2 = pipe.prepare_latents(2, 4, 4, 64, 64, torch.float32, torch.device("cpu"), [_gen(7), _gen(8)])
    torch.testing.assert_close(noise2, torch.cat([noise, torch.randn((1, 4, 4, 8, 8), generator=_gen(8))]))
    batch = torch.stack([_pixels(_image())[0]] * 2)
    two = pipe(batch, DRAGS.to_tensor(5), generator=[_gen(7), _gen(8)], **kwargs).frames
    assert two.shape == (2, 4, 4, 8, 8) and (two[1] - two[0]).abs().max() > 1e-3
    with pytest.raises(UserInputError, match="1 generators for 2 videos"):
        pipe(batch, DRAGS.to_tensor(5), generator=[_gen(7)], **kwargs)


@pytest.mark.parametrize("bad, message", [
    (dict(latents=torch.zeros(1, 4, 4, 4, 4)), "latents must have shape"),
    (dict(warp_init_sigma=-1.0), "warp_init_sigma"),
    (dict(detail_transfer_radius=-2.0), "detail_transfer_radius"),
    (dict(callback_on_step_end_tensor_inputs=["noise_pred"]), "callback_on_step_end_tensor_inputs"),
    (dict(scheduler="heun"), "unknown scheduler"),
    (dict(num_frames=1), "num_frames"),
    (dict(output_type="gif"), "output_type"),
    (dict(drags=torch.zeros(4, 3, 4)), "drags tensor"),
    (dict(image="photo.png"), "image must be"),
])
def test_every_argument_is_checked_before_any_encoding(pipe, monkeypatch, bad, message):
    def encoder_called(*args, **kwargs):
        raise AssertionError("encoded before the inputs were checked")

    monkeypatch.setattr(pipe, "encode_first_frame", encoder_called)
    monkeypatch.setattr(pipe, "encode_image_embedding", encoder_called)
    args = dict(image=_image(), drags=DRAGS, **KW, num_inference_steps=2, output_type="latent")
    with pytest.raises(UserInputError, match=message):
        pipe(**{**args, **bad})


def test_call_state_and_step_end_callback(pipe):
    seen = []

    def callback(p, step, t, tensors):
        seen.append((step, float(t), sorted(tensors), p.do_classifier_free_guidance, p.guidance_scale))
        return {"latents": tensors["latents"] * 0} if step == 2 else {}

    out = pipe(_image(), DRAGS, num_inference_steps=3, max_guidance_scale=4.0, callback_on_step_end=callback,
               callback_on_step_end_tensor_inputs=["latents"], output_type="latent", generator=_gen(), **KW).frames
    assert [s[0] for s in seen] == [0, 1, 2] and all(s[2] == ["latents"] for s in seen)
    assert all(s[3] is True and s[4] == 4.0 for s in seen) and pipe.num_timesteps == 3
    assert seen[0][1] > seen[1][1] > seen[2][1]  # c_noise falls with σ
    assert torch.equal(out, torch.zeros_like(out))  # the callback's latents replaced the final ones
    pipe(_image(), DRAGS, num_inference_steps=1, max_guidance_scale=1.0, output_type="latent", **KW)
    assert pipe.do_classifier_free_guidance is False


def test_progress_bar_counts_the_steps_that_run_and_names_the_warped_start(pipe):
    def bar_text(**extra):
        buf = io.StringIO()
        pipe.set_progress_bar_config(file=buf, desc="denoising", mininterval=0)
        try:
            pipe(_image(), DRAGS, num_inference_steps=4, output_type="latent", generator=_gen(), **KW, **extra)
        finally:
            pipe.set_progress_bar_config(disable=True)
        return buf.getvalue()

    warped = bar_text(warp_init_sigma=2.5)  # σ = 700, 70.5, 2.27, 0.002: the last two run
    assert "denoising (warped start σ=2.5: 2 of 4 steps)" in warped and "2/2" in warped and "/4" not in warped
    plain = bar_text()
    assert "4/4" in plain and "warped" not in plain


def test_tie_first_frame_off_changes_nothing_and_on_holds_frame_0_at_the_input_latent(pipe, tmp_path):
    """Not in the paper: frame 0's latent is the scaled first-frame latent at the end (temporal VAE, no decode)."""
    kwargs = dict(KW, num_inference_steps=3, output_type="latent")
    paper = pipe(_image(), DRAGS, generator=_gen(), **kwargs).frames
    assert torch.equal(pipe(_image(), DRAGS, generator=_gen(), tie_first_frame=False, **kwargs).frames, paper)
    tied = pipe(_image(), DRAGS, generator=_gen(), tie_first_frame=True, **kwargs).frames
    z = pipe.encode_first_frame(pipe._prepare_image(_image(), 64, 64) * 2 - 1) * pipe.vae.config.scaling_factor
    torch.testing.assert_close(tied[:, 0], z, atol=1e-6, rtol=0)
    assert (paper[:, 0] - z).abs().max() > 0.1 and (tied[:, 1:] - paper[:, 1:]).abs().max() > 1e-3
    # mid-way frame 0 is the input's latent noised with frame 0's own initial noise
    noise = torch.randn((1, 4, 4, 8, 8), generator=_gen())
    mid = []
    pipe(_image(), DRAGS, generator=_gen(), tie_first_frame=True, callback_on_step_end=lambda p, i, t, d: mid.append(
        d["latents"][:, 0].clone()) or {}, **kwargs)
    sigma_after_first = pipe.scheduler.sigmas[1]
    torch.testing.assert_close(mid[0], z + sigma_after_first * noise[:, 0], atol=1e-4, rtol=1e-6)
    # released below a σ: frame 0 is the sampler's own from there on; every earlier state is tied
    last_sigma = float(pipe.scheduler.sigmas[-2])  # the schedule's last non-zero σ
    mid = []
    released = pipe(_image(), DRAGS, generator=_gen(), tie_first_frame=True, tie_release_sigma=last_sigma / 2,
                    callback_on_step_end=lambda p, i, t, d: mid.append(d["latents"][:, 0].clone()) or {},
                    **kwargs).frames
    for state, sigma in zip(mid[:-1], pipe.scheduler.sigmas[1:-1]):
        torch.testing.assert_close(state, z + sigma * noise[:, 0], atol=1e-4, rtol=1e-6)
    assert 1e-4 < (released[:, 0] - z).abs().max() < (paper[:, 0] - z).abs().max()
    never = pipe(_image(), DRAGS, generator=_gen(), tie_first_frame=True, tie_release_sigma=1e6, **kwargs).frames
    assert torch.equal(never, paper)
    with pytest.raises(UserInputError, match="tie_release_sigma"):
        pipe(_image(), DRAGS, generator=_gen(), tie_first_frame=True, tie_release_sigma=-1.0, **kwargs)
    # a pipeline setting saved in model_index.json, overridable per call
    PuppetMasterPipeline(**pipe.components, tie_first_frame=True).save_pretrained(tmp_path / "p")
    loaded = PuppetMasterPipeline.from_pretrained(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.tie_first_frame is True
    torch.testing.assert_close(loaded(_image(), DRAGS, generator=_gen(), **kwargs).frames, tied, atol=0, rtol=0)
    torch.testing.assert_close(loaded(_image(), DRAGS, generator=_gen(), tie_first_frame=False, **kwargs).frames,
                               paper, atol=0, rtol=0)


def test_tie_first_frame_decodes_frame_0_to_the_vae_round_trip_and_with_detail_transfer_to_the_input():
    """With an image VAE (frames decoded independently): frame 0 = D(E(image)); plus detail transfer = the image."""
    components = build_components("tiny", seed=2, with_image_encoder=False,
                                  vae=make_image_vae(block_out_channels=(16, 16, 16, 16), layers_per_block=1))
    pipe = PuppetMasterPipeline(**components, tie_first_frame=True)
    pipe.set_progress_bar_config(disable=True)
    image = _image()
    x = pipe._prepare_image(image, 64, 64)  # (1, 3, 64, 64) in [0, 1], as the pipeline sees it
    kwargs = dict(KW, num_inference_steps=2, output_type="pt", generator=_gen())
    z = pipe.encode_first_frame(x * 2 - 1)
    round_trip = ((pipe.decode_latents(z[:, None] * pipe.vae.config.scaling_factor)[0, 0] + 1) / 2).clamp(0, 1)
    assert (round_trip - x[0]).abs().mean() > 0.05  # the random VAE is far from the identity
    frames = pipe(image, DRAGS, **kwargs).frames[0]
    torch.testing.assert_close(frames[0], round_trip, atol=1e-5, rtol=0)
    decoded = []  # frames per VAE decode: the tied frame 0 serves as D(E(image)), not decoded twice
    decode = pipe.vae.decode
    pipe.vae.decode = lambda z, *a, **k: decoded.append(z.shape[0]) or decode(z, *a, **k)
    restored = pipe(image, DRAGS, detail_transfer_radius=1.0, **kwargs).frames[0]
    torch.testing.assert_close(restored[0], x[0], atol=1e-5, rtol=0)
    assert decoded == [4]
    decoded.clear()
    untied = pipe(image, DRAGS, tie_first_frame=False, **kwargs).frames[0]
    assert (untied[0] - round_trip).abs().max() > 0.05
    untied_restored = pipe(image, DRAGS, tie_first_frame=False, detail_transfer_radius=1.0, **kwargs).frames[0]
    assert decoded == [4, 4, 1] and (untied_restored[0] - x[0]).abs().max() > 1e-3


def test_the_model_states_its_sampling_defaults_and_a_call_overrides_them(pipe, tmp_path):
    """``num_inference_steps`` / guidance in ``model_index.json`` are the call's defaults; a call's values win and
    are never written into the model (what a distilled few-step student relies on)."""
    from puppet_master.pipelines.pipeline_puppet_master import PAPER_SAMPLING

    assert pipe.sampling_settings()["num_inference_steps"] == PAPER_SAMPLING["num_inference_steps"] == 50
    student = PuppetMasterPipeline(**pipe.components, num_inference_steps=3, min_guidance_scale=1.0,
                                   max_guidance_scale=1.0)
    student.save_pretrained(tmp_path / "student")
    loaded = PuppetMasterPipeline.from_pretrained(tmp_path / "student")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.sampling_settings() == {**loaded.sampling_settings(), "num_inference_steps": 3,
                                          "min_guidance_scale": 1.0, "max_guidance_scale": 1.0}
    calls, steps = [], []
    forward = loaded.unet.forward
    loaded.unet.forward = lambda *a, **k: calls.append(a[0].shape[0] if a else k["sample"].shape[0]) or forward(*a, **k)
    kwargs = dict(KW, output_type="latent", generator=_gen(1),
                  callback_on_step_end=lambda p, i, t, kw: steps.append(i) or kw)
    default = loaded(_image(), DRAGS, **kwargs).frames
    assert steps == [0, 1, 2] and not loaded.do_classifier_free_guidance and calls == [1, 1, 1]  # no CFG: batch 1
    same = pipe(_image(), DRAGS, num_inference_steps=3, max_guidance_scale=1.0, **{**kwargs, "generator": _gen(1)})
    torch.testing.assert_close(default, same.frames, atol=0, rtol=0)
    steps.clear()
    loaded(_image(), DRAGS, num_inference_steps=5, **{**kwargs, "generator": _gen(1)})
    assert len(steps) == 5 and loaded.config.num_inference_steps == 3


def test_the_options_offer_the_pipelines_scheduler_names():
    from puppet_master.options import SCHEDULER_NAMES as OFFERED
    from puppet_master.pipelines.schedulers import SCHEDULER_NAMES

    assert OFFERED == SCHEDULER_NAMES
