"""The drag UNet's training loss and its random draws (docs/design.md §5), free of the config layer.

:class:`~puppet_master.training.Trainer` (accelerate, latent-cache files) and
:mod:`puppet_master.training.recipe` (latents held in device memory) both train with
:func:`edm_denoising_loss`; they differ only in how they draw the noise.
"""

from __future__ import annotations

import torch

from .. import edm
from ..drags.encoding import used_drag_slots


def sample_noise(keys: torch.Tensor, seed: int, shape: tuple[int, ...], p_mean: float, p_std: float,
                 cond_dropout: float, image_dropout: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample σ, ε and dropout flags, each a function of ``(seed, key)`` only.

    Returns:
        ``sigma (B,)``, ``eps (B, *shape)``, ``drop_drags (B,)`` bool, ``drop_image (B,)`` bool.
    """
    sig, eps, dd, di = [], [], [], []
    for key in keys.tolist():
        g = torch.Generator().manual_seed(int(seed) * 1_000_000_007 + int(key))
        sig.append(edm.sigma_from_normal(torch.randn(1, generator=g), p_mean, p_std))
        eps.append(torch.randn(shape, generator=g))
        u = torch.rand(2, generator=g)
        dd.append(u[0] < cond_dropout)
        di.append(u[1] < image_dropout)
    return torch.cat(sig), torch.stack(eps), torch.stack(dd), torch.stack(di)


def motion_weights(latents: torch.Tensor, weight: float, scale: float) -> torch.Tensor:
    """Per-pixel loss weights that emphasise where the clip moves.

    ``m_n = max-pool₃ₓ₃( mean_c |x_n − x_0| )`` is how much frame ``n``'s latent differs
    from the first frame's around each cell; the weight is
    ``1 + weight · min(m_n / scale, 1)``: 1 where nothing moves (and on frame 0), up to
    ``1 + weight`` on moving parts. Most pixels of a part-level clip are static, so the
    plain loss is dominated by copying frame 0; this term makes the small moving region
    count (a training choice of ours, not in the paper).

    Args:
        latents: ``(B, N, C, h, w)`` clean latents (any float dtype).
        weight: extra weight on moving cells (``≥ 0``; 0 gives all ones).
        scale: latent difference (mean over channels) counted as fully moving (``> 0``).

    Returns:
        ``(B, N, 1, h, w)`` weights of ``latents.dtype``.
    """
    b, n, _, h, w = latents.shape
    if weight <= 0:
        return torch.ones(b, n, 1, h, w, dtype=latents.dtype, device=latents.device)
    diff = (latents - latents[:, :1]).abs().mean(dim=2)  # (B, N, h, w)
    diff = torch.nn.functional.max_pool2d(diff.reshape(b * n, 1, h, w), 3, stride=1, padding=1)
    return 1 + weight * (diff.reshape(b, n, 1, h, w) / scale).clamp(max=1)


def largest_drag_motion(drags: torch.Tensor) -> float:
    """Largest start-to-last-frame displacement of a clip's used drags, normalised image units.

    Args:
        drags: ``(N, K, 4)`` normalised (docs/design.md §2); unused slots are all zeros.

    Returns:
        ``max_k ‖p_k^{N−1} − p_k^0‖₂`` over used slots, 0.0 if no slot is used.
    """
    used = used_drag_slots(drags[None])[0]
    if not bool(used.any()):
        return 0.0
    last = drags[-1, used]
    return float((last[:, 2:4] - last[:, 0:2]).norm(dim=-1).max())


def edm_denoising_loss(unet, latents: torch.Tensor, image_latents: torch.Tensor, embedding: torch.Tensor,
                       drags: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor, drop_drags: torch.Tensor,
                       drop_image: torch.Tensor, frame_weights: torch.Tensor, motion_weight: float = 0.0,
                       motion_scale: float = 0.25, non_first_frame_weight: float = 1.0,
                       weight_increasing: bool = False, scale_model_input: bool = True) -> torch.Tensor:
    """EDM loss of a batch for given noise draws (mean over samples), docs/design.md §5.

    ``D = c_skip·(x+σε) + c_out·F(c_in·(x+σε), c_noise)``, loss ``λ(σ)·‖D − x‖²`` averaged
    over frames (with ``frame_weights``), channels and pixels; with ``motion_weight > 0``
    each pixel's squared error is first multiplied by :func:`motion_weights`. Dropped
    drags (CFG, paper §3.1) are zeroed; a dropped image zeroes the first-frame latent and
    the image embedding.

    Options of the authors' training script (the defaults are EDM-consistent):

    * ``non_first_frame_weight = w > 1``: frames ``1…N−1`` weigh ``w`` (frame 0 weighs 1);
      with ``weight_increasing`` the weights rise linearly from 1 at frame 0 to ``w`` at the
      last frame. Not renormalised (the loss scale grows, as in the authors' script).
    * ``scale_model_input = False``: the UNet sees ``x + σε`` without ``c_in`` (the
      authors' training does this while their sampler applies ``c_in``; a model trained so
      expects unscaled inputs, which our sampler does not give it).

    Args:
        unet: the drag UNet.
        latents: ``(B, N, C, h, w)`` clean latents, scaled by the VAE factor.
        image_latents: ``(B, C, h, w)`` unscaled first-frame latents.
        embedding: ``(B, 1, D)`` image embeddings.
        drags: ``(B, N, K, 4)`` normalised drags.
        sigma: ``(B,)`` noise levels; ``eps``: ``(B, N, C, h, w)`` unit noise.
        drop_drags, drop_image: ``(B,)`` bool dropout flags.
        frame_weights: ``(N,)``.

    Returns:
        scalar loss: float32 (float64 for float64 inputs).
    """
    x = latents
    b, n = x.shape[:2]
    keep_drags = (~drop_drags).to(x.device, x.dtype)
    keep_image = (~drop_image).to(x.device, x.dtype)
    noisy = x + edm.append_dims(sigma, x.ndim) * eps
    pc = edm.preconditioning(edm.append_dims(sigma, x.ndim))
    out = unet(
        pc.c_in * noisy if scale_model_input else noisy,
        pc.c_noise.reshape(b),
        image_latents=image_latents * edm.append_dims(keep_image, 4),
        encoder_hidden_states=embedding * edm.append_dims(keep_image, 3),
        drags=drags * edm.append_dims(keep_drags, 4),
    ).sample
    out = out.to(torch.promote_types(out.dtype, torch.float32))  # half precision → float32; float64 stays
    denoised = pc.c_skip * noisy + pc.c_out * out
    pixel_w = motion_weights(x, motion_weight, motion_scale)
    per_frame = (pixel_w * (denoised - x) ** 2).mean(dim=(2, 3, 4))  # (B, N)
    if weight_increasing:
        authors_w = torch.linspace(1.0, non_first_frame_weight, n, device=x.device)
    else:
        authors_w = torch.full((n,), float(non_first_frame_weight), device=x.device)
        authors_w[0] = 1.0
    per_sample = (per_frame * frame_weights * authors_w).mean(dim=1) * edm.loss_weight(sigma)
    return per_sample.mean()
