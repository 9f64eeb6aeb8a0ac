import math

import torch

from puppet_master import edm
from puppet_master.pipelines import make_scheduler


def test_preconditioning_formulas():
    sigma = torch.tensor([0.002, 1.0, 10.0, 700.0], dtype=torch.float64)
    pc = edm.preconditioning(sigma)
    torch.testing.assert_close(pc.c_in, 1 / torch.sqrt(sigma**2 + 1))
    torch.testing.assert_close(pc.c_skip, 1 / (sigma**2 + 1))
    torch.testing.assert_close(pc.c_out, -sigma / torch.sqrt(sigma**2 + 1))
    torch.testing.assert_close(pc.c_noise, 0.25 * torch.log(sigma))
    torch.testing.assert_close(edm.loss_weight(sigma), 1 + 1 / sigma**2)


def test_training_sigma_distribution():
    s = edm.sample_sigmas(200_000, generator=torch.Generator().manual_seed(0))
    logs = s.log()
    assert abs(logs.mean().item() - 0.7) < 0.02 and abs(logs.std().item() - 1.6) < 0.02


def test_denoiser_recovers_clean_latent_from_ideal_prediction():
    # with F = (c_skip*(x+σε) - x) / -c_out the denoiser returns x exactly
    x = torch.randn(2, 3, 4, 2, 2, dtype=torch.float64)
    eps = torch.randn_like(x)
    sigma = torch.tensor([0.5, 20.0], dtype=torch.float64)
    noisy = x + edm.append_dims(sigma, 5) * eps
    pc = edm.preconditioning(edm.append_dims(sigma, 5))
    ideal = (x - pc.c_skip * noisy) / pc.c_out
    torch.testing.assert_close(edm.denoise(ideal, noisy, sigma), x)


def test_scheduler_step_agrees_with_edm_module():
    """The sampler (diffusers' Euler, v-prediction) and training's EDM formulas are the same denoiser."""
    sched = make_scheduler()
    sched.set_timesteps(10)
    x = torch.randn(1, 3, 4, 4, 4)
    F = torch.randn_like(x)
    for i in (0, 4, 9):
        sched._step_index = i
        sigma = sched.sigmas[i]
        t = sched.timesteps[i]
        # the timestep the UNet receives is c_noise
        assert math.isclose(float(t), float(edm.preconditioning(sigma).c_noise), rel_tol=1e-5, abs_tol=1e-6)
        # scale_model_input is c_in
        torch.testing.assert_close(sched.scale_model_input(x, t), x * edm.preconditioning(sigma).c_in)
        sched._step_index = i
        prev = sched.step(F, t, x).prev_sample
        denoised = edm.denoise(F, x, sigma.reshape(1))
        expected = x + (x - denoised) / sigma * (sched.sigmas[i + 1] - sigma)  # Euler step on the ODE
        torch.testing.assert_close(prev, expected, atol=1e-4, rtol=1e-4)


def test_frame_weights():
    assert torch.equal(edm.frame_weights(5), torch.ones(5))
    w = edm.frame_weights(4, ramp=True)
    assert torch.all(torch.diff(w) > 0) and abs(w.mean().item() - 1) < 1e-6
