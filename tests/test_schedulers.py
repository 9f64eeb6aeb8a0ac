"""Named diffusers schedulers (pipelines/schedulers.py) in both pipelines (docs/design.md §5)."""

import math

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler, EulerDiscreteScheduler

from puppet_master import edm
from puppet_master.drags import DragSet
from puppet_master.errors import UserInputError
from puppet_master.pipelines import (SCHEDULER_NAMES, DragAnythingPipeline, PuppetMasterPipeline, build_components,
                                     make_scheduler, scheduler_from_name)

KW = dict(num_frames=4, height=64, width=64, output_type="latent")
DRAGS = DragSet.from_pairs([((20, 20), (44, 30))], 64, 64, num_frames=4)


def _image():
    rng = np.random.default_rng(0)
    arr = np.full((64, 64, 3), 255, np.uint8)
    arr[16:48, 16:48] = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    return PIL.Image.fromarray(arr)


def _gen(seed=3):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def conditioned_pipe():
    """A tiny pipeline whose UNet has weights at sensible scales (as tests/test_fast_paths.py's ``_randomised``).

    The default-initialised tiny UNet amplifies float rounding about 10⁵-fold (GroupNorm over
    one-channel groups of nearly flat features), so two mathematically equal samplers that
    round differently end up 0.3 apart on it; with scaled weights the UNet is well
    conditioned and equal samplers give equal latents to float precision.
    """
    p = PuppetMasterPipeline(**build_components("tiny", seed=0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in p.unet.parameters():
            r = torch.randn(param.shape, generator=g)
            param.copy_(r / param[0].numel() ** 0.5 if param.ndim >= 2 else 0.05 * r)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_named_schedulers_give_the_unet_the_edm_inputs(name):
    """Every choice samples the same Karras σ and feeds the UNet c_noise = ¼ ln σ and c_in·x (edm.py)."""
    paper = make_scheduler()
    sched = scheduler_from_name(name, paper.config)
    paper.set_timesteps(10)
    sched.set_timesteps(10)
    torch.testing.assert_close(sched.sigmas, paper.sigmas)
    assert sched.sigmas[-1] == 0 and math.isclose(float(sched.sigmas[0]), 700.0, rel_tol=1e-6)
    assert math.isclose(float(sched.init_noise_sigma), float(paper.init_noise_sigma), rel_tol=1e-6)
    x = torch.randn(1, 3, 4, 4, 4, generator=_gen())
    for i in (0, 4, 9):
        sigma = sched.sigmas[i]
        pc = edm.preconditioning(sigma)
        assert math.isclose(float(sched.timesteps[i]), float(pc.c_noise), rel_tol=1e-5, abs_tol=1e-6)
        sched._step_index = i
        torch.testing.assert_close(sched.scale_model_input(x, sched.timesteps[i]), x * pc.c_in)


def test_the_choices_are_diffusers_schedulers_with_the_edm_settings():
    config = make_scheduler().config
    euler, edm_euler, dpm2, dpm3 = (scheduler_from_name(n, config) for n in SCHEDULER_NAMES)
    assert type(euler) is EulerDiscreteScheduler and dict(euler.config) == dict(make_scheduler().config)
    assert type(edm_euler) is EDMEulerScheduler
    assert type(dpm2) is EDMDPMSolverMultistepScheduler and type(dpm3) is EDMDPMSolverMultistepScheduler
    assert (dpm2.config.solver_order, dpm3.config.solver_order) == (2, 3)
    for s in (edm_euler, dpm2, dpm3):
        assert (s.config.sigma_data, s.config.prediction_type, s.config.rho) == (1.0, "v_prediction", 7.0)
        assert (s.config.sigma_min, s.config.sigma_max) == (0.002, 700.0)
    # built from an EDM configuration, the choices come back the same
    again = scheduler_from_name("dpmpp-2m", edm_euler.config)
    assert dict(again.config) == dict(dpm2.config)
    assert dict(scheduler_from_name("euler", dpm3.config).config) == dict(euler.config)


def test_unknown_or_unfit_schedulers_are_refused(pipe):
    with pytest.raises(UserInputError, match="unknown scheduler 'heun': choose one of euler, edm-euler, dpmpp-2m, dpmpp-3m"):
        scheduler_from_name("heun", make_scheduler().config)
    with pytest.raises(UserInputError, match="choose one of euler, edm-euler"):
        pipe(_image(), DRAGS, num_inference_steps=2, scheduler="ddim", **KW)
    epsilon = EulerDiscreteScheduler(prediction_type="epsilon").config
    with pytest.raises(ValueError, match="not v_prediction"):
        scheduler_from_name("edm-euler", epsilon)
    with pytest.raises(ValueError, match="sigma_data=1"):
        scheduler_from_name("euler", EDMEulerScheduler(prediction_type="v_prediction").config)  # sigma_data 0.5
    other = PuppetMasterPipeline(**{**pipe.components, "scheduler": EulerDiscreteScheduler(prediction_type="epsilon")})
    with pytest.raises(UserInputError, match="cannot sample this model with scheduler 'dpmpp-2m'"):
        other(_image(), DRAGS, num_inference_steps=2, scheduler="dpmpp-2m", **KW)


@pytest.mark.parametrize("warp_init_sigma", [None, 2.0])
def test_edm_euler_equals_the_papers_euler(conditioned_pipe, warp_init_sigma):
    """diffusers' EDMEulerScheduler (σ_data = 1, v-prediction) and SVD's EulerDiscreteScheduler: the same latents."""
    kwargs = dict(KW, num_inference_steps=6, warp_init_sigma=warp_init_sigma)
    paper = conditioned_pipe(_image(), DRAGS, generator=_gen(), **kwargs).frames
    edm_euler = conditioned_pipe(_image(), DRAGS, generator=_gen(), scheduler="edm-euler", **kwargs).frames
    torch.testing.assert_close(edm_euler, paper, atol=1e-5, rtol=0)
    assert paper.abs().max() > 0.5  # not trivially small
    if warp_init_sigma is None:
        other_seed = conditioned_pipe(_image(), DRAGS, generator=_gen(4), scheduler="edm-euler", **kwargs).frames
        assert (other_seed - paper).abs().max() > 0.1
    assert type(conditioned_pipe.scheduler) is EulerDiscreteScheduler  # a per-call choice leaves the pipeline's


def _run_recording_unet_inputs(pipe, monkeypatch, **kwargs):
    """``(latents, the UNet's sample input of every call)`` of one sampling call."""
    seen = []
    real = pipe.unet.forward
    with monkeypatch.context() as m:
        m.setattr(pipe.unet, "forward", lambda s, *a, **k: seen.append(s.clone()) or real(s, *a, **k))
        out = pipe(_image(), DRAGS, generator=_gen(), num_inference_steps=STEPS, **KW, **kwargs).frames
    return out, seen


STEPS = 4
WARP_SIGMA = 2.5  # the last 2 of the 4 steps (σ = 2.27, 0.002) run


@pytest.fixture(scope="module")
def paper_warped_start(pipe):
    """The UNet input of the first step of the paper's sampler with the warped start."""
    with pytest.MonkeyPatch.context() as m:
        return _run_recording_unet_inputs(pipe, m, warp_init_sigma=WARP_SIGMA)[1][0]


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_samples_with_the_warped_start(pipe, name, paper_warped_start, monkeypatch):
    """Each choice runs end to end; the warped start begins at the same step and UNet input as the paper's sampler."""
    out, seen = _run_recording_unet_inputs(pipe, monkeypatch, scheduler=name)
    assert out.shape == (1, 4, 4, 8, 8) and torch.isfinite(out).all()
    assert len(seen) == STEPS and pipe.num_timesteps == STEPS
    warped, seen = _run_recording_unet_inputs(pipe, monkeypatch, scheduler=name, warp_init_sigma=WARP_SIGMA)
    assert torch.isfinite(warped).all() and not torch.allclose(warped, out)
    paper = make_scheduler()
    paper.set_timesteps(STEPS)
    assert len(seen) == int((paper.sigmas[:-1] <= WARP_SIGMA).sum()) == pipe.num_timesteps == 2
    # c_in(σ_begin) · (warped latent · scale + σ_begin · noise), as the paper's sampler starts
    torch.testing.assert_close(seen[0], paper_warped_start, atol=1e-5, rtol=1e-5)


def test_a_saved_pipeline_samples_with_the_scheduler_its_model_index_names(pipe, tmp_path):
    """model_index.json naming EDMEulerScheduler: from_pretrained loads it and samples with it."""
    edm_euler = scheduler_from_name("edm-euler", pipe.scheduler.config)
    PuppetMasterPipeline(**{**pipe.components, "scheduler": edm_euler}).save_pretrained(tmp_path / "p")
    assert '"EDMEulerScheduler"' in (tmp_path / "p" / "model_index.json").read_text()
    loaded = PuppetMasterPipeline.from_pretrained(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is EDMEulerScheduler and loaded.scheduler.config.sigma_data == 1.0
    out = loaded(_image(), DRAGS, generator=_gen(), num_inference_steps=3, **KW).frames
    expected = pipe(_image(), DRAGS, generator=_gen(), num_inference_steps=3, scheduler="edm-euler", **KW).frames
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


@pytest.fixture(scope="module")
def draganything(tiny_draganything_dir):
    da = DragAnythingPipeline.from_pretrained(tiny_draganything_dir)
    da.set_progress_bar_config(disable=True)
    return da


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_samples_draganything(draganything, name):
    da = draganything
    arr = np.full((64, 128, 3), 240, np.uint8)
    arr[20:50, 30:80] = (200, 50, 40)
    mask = np.zeros((64, 128), bool)
    mask[20:50, 30:80] = True
    drags = DragSet.from_pairs([((50, 35), (70, 40))], 128, 64, num_frames=4)
    out = da(PIL.Image.fromarray(arr), drags, masks=[mask], num_frames=4, height=64, width=128, num_inference_steps=3,
             dift_ensemble_size=1, generator=_gen(), output_type="latent", scheduler=name).frames
    assert out.shape == (1, 4, 4, 8, 16) and torch.isfinite(out).all()
    assert da.num_timesteps == 3 and type(da.scheduler) is EulerDiscreteScheduler
