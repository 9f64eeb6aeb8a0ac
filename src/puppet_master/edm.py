"""EDM formulation of SVD used by both training and sampling (paper §3.1, App. C; docs/design.md §5).

Noise level ``σ``; the noised latent is ``x + σ·ε``; the network ``F`` sees
``c_in·(x + σε)`` and ``c_noise = 0.25·ln σ``; the denoised estimate is
``D = c_skip·(x + σε) + c_out·F`` with (σ_data = 1, v-prediction)

* ``c_in = 1/√(σ²+1)``
* ``c_skip = 1/(σ²+1)``
* ``c_out = −σ/√(σ²+1)``
* training weight ``λ(σ) = 1 + 1/σ²``.

diffusers' ``EulerDiscreteScheduler`` with ``prediction_type="v_prediction"`` and
``timestep_type="continuous"`` implements the same formulas at sampling time;
``tests/test_edm.py`` checks that both agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Mean of log σ in training (docs/design.md §5).
P_MEAN = 0.7
#: Standard deviation of log σ in training (docs/design.md §5).
P_STD = 1.6
#: SVD's VAE latent scaling factor.
VAE_SCALING_FACTOR = 0.18215


@dataclass(frozen=True)
class Preconditioning:
    """The EDM coefficients for a batch of noise levels; each a tensor broadcastable to the latents."""

    c_in: torch.Tensor
    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_noise: torch.Tensor


def preconditioning(sigma: torch.Tensor) -> Preconditioning:
    """EDM coefficients for ``sigma`` (any shape; ``c_noise`` has the same shape)."""
    sigma = torch.as_tensor(sigma)
    s2 = sigma**2 + 1
    return Preconditioning(c_in=s2.rsqrt(), c_skip=1 / s2, c_out=-sigma * s2.rsqrt(), c_noise=0.25 * sigma.log())


def sigma_from_normal(normal: torch.Tensor, p_mean: float = P_MEAN, p_std: float = P_STD) -> torch.Tensor:
    """Map standard-normal draws to training noise levels: ``σ = exp(p_mean + p_std·z)``."""
    return (normal * p_std + p_mean).exp()


def sample_sigmas(
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    p_mean: float = P_MEAN,
    p_std: float = P_STD,
) -> torch.Tensor:
    """Training noise levels: ``log σ ~ N(p_mean, p_std²)``. Returns float32 ``(batch_size,)``."""
    normal = torch.randn(batch_size, generator=generator, device=generator.device if generator is not None else device)
    return sigma_from_normal(normal, p_mean, p_std).to(device)


def loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    """EDM loss weight ``λ(σ) = 1 + 1/σ²`` (σ_data = 1)."""
    return 1 + sigma.pow(-2)


def frame_weights(num_frames: int, ramp: bool = False, device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-frame loss weights ``(num_frames,)``: all ones, or ramping linearly up to 1 when ``ramp``.

    The ramp (``(n+1)/N``) is the authors' optional emphasis on later frames; weights are
    normalised to mean 1 so the loss scale does not change.
    """
    if not ramp:
        return torch.ones(num_frames, device=device)
    w = torch.arange(1, num_frames + 1, dtype=torch.float32, device=device)
    return w / w.mean()


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a ``(B,)`` tensor to ``(B, 1, …, 1)`` with ``ndim`` dims."""
    return t.reshape(t.shape + (1,) * (ndim - t.ndim))


def denoise(network_output: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Denoised estimate ``D = c_skip·noisy + c_out·F``.

    Args:
        network_output: ``F``, same shape as ``noisy``.
        noisy: ``x + σε`` (B, N, C, h, w), *not* multiplied by ``c_in``.
        sigma: ``(B,)``.
    """
    pc = preconditioning(append_dims(sigma.to(noisy.dtype), noisy.ndim))
    return pc.c_skip * noisy + pc.c_out * network_output
