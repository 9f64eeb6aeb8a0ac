"""Chroma anchoring: the low-frequency colour of generated frames taken from the input moved along the drags.

Not in the paper (docs/design.md §5, "Chroma anchoring"). A small UNet trained on few
objects drifts in colour on inputs unlike its training data: cyan, magenta and green
blotches that grow over the frames. Part-level motion moves colour with the parts and
creates none, so the input's colour, moved along the drags by the drag displacement field
(:func:`~puppet_master.drags.warp.warp_images_by_drags`), is a good estimate of every
frame's colour at coarse scales. :func:`anchor_chroma` keeps what the model generated of
the luma (brightness, where the motion and the shapes are) at every scale and the chroma
finer than a Gaussian of ``sigma`` pixels, and takes the chroma coarser than that from
the moved input.

Colour space: YCbCr of ITU-R BT.601 (full range, no offsets), applied to values in
[−1, 1] or [0, 1] alike (the transform is linear).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["anchor_chroma", "gaussian_blur", "gaussian_matrix", "rgb_to_ycbcr", "ycbcr_to_rgb"]

#: RGB → (Y, Cb, Cr), ITU-R BT.601 full range (JPEG's), without the 0.5 chroma offset.
_RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114],
                              [-0.168736, -0.331264, 0.5],
                              [0.5, -0.418688, -0.081312]], dtype=torch.float64)
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)


def _mix(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"expected (..., 3, H, W) colour images, got {tuple(x.shape)}")
    return torch.einsum("ij,...jhw->...ihw", matrix.to(x.device, x.dtype), x)


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` RGB → YCbCr (BT.601 full range, zero-centred chroma); same shape and dtype."""
    return _mix(_RGB_TO_YCBCR, x)


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr`."""
    return _mix(_YCBCR_TO_RGB, x)


def gaussian_matrix(size: int, sigma: float, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """``(size, size)`` matrix ``M`` with ``M @ v`` = ``v`` blurred by a Gaussian of ``sigma`` samples.

    The kernel reaches 3 σ and is normalised to sum 1; samples beyond the ends repeat the end
    values (replicate borders), folded into the matrix, so every row sums to 1.
    """
    r = max(1, int(3 * sigma + 0.5))
    offsets = torch.arange(-r, r + 1, device=device)
    kernel = torch.exp(-0.5 * (offsets.to(torch.float64) / sigma) ** 2)
    kernel = (kernel / kernel.sum()).expand(size, -1).contiguous()
    columns = (torch.arange(size, device=device)[:, None] + offsets[None]).clamp(0, size - 1)
    matrix = torch.zeros(size, size, dtype=torch.float64, device=device)
    return matrix.scatter_add_(1, columns, kernel).to(dtype)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``(..., H, W)`` with standard deviation ``sigma`` pixels, in float32.

    Separable, as two matrix products (:func:`gaussian_matrix`): fast on CPUs, where a
    depthwise convolution with a long kernel is not. Borders are replicated, so a constant
    image stays constant.

    Raises:
        ValueError: ``sigma`` not > 0, or ``x`` has fewer than 2 dimensions.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 pixels, got {sigma}")
    if x.ndim < 2:
        raise ValueError(f"expected (..., H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    x = x.float()
    return gaussian_matrix(h, sigma, x.dtype, x.device) @ x @ gaussian_matrix(w, sigma, x.dtype, x.device).T


def anchor_chroma(video: torch.Tensor, reference: torch.Tensor, sigma: float,
                  value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Replace the chroma of ``video`` coarser than ``sigma`` pixels by that of ``reference``.

    ``out = ycbcr_to_rgb(Y_v, C_v + G_σ * (C_r − C_v))`` per frame: ``Y`` the luma of
    ``video`` (unchanged), ``C`` the two chroma channels, ``G_σ`` a Gaussian of ``sigma``
    pixels (:func:`gaussian_blur`). ``reference`` may be smaller than ``video`` by an integer
    factor ``f``: the correction ``G_σ * (C_r − C_v)`` is then computed at the reference's
    resolution (``video`` average-pooled by ``f``, the Gaussian ``σ / f``) and up-sampled
    bilinearly, ``f²`` times less work for a correction this smooth. Not in the paper
    (module docstring).

    Args:
        video: generated frames ``(B, N, 3, H, W)``, RGB in [−1, 1] (any range works: linear).
        reference: ``(B, N, 3, H / f, W / f)`` in the same range, e.g. the input warped along
            the drags to every frame (:func:`~puppet_master.drags.warp.warp_images_by_drags`).
        sigma: Gaussian standard deviation in pixels of ``video`` (> 0), e.g. the VAE's
            8-pixel cell.
        value_range: ``(low, high)`` of valid values, e.g. ``(-1, 1)``: ``video`` is clamped
            to it first, and a pixel whose new colour would leave it has its chroma scaled
            down just enough to stay inside (its luma kept), so the output needs no clamping
            that would change its luma. ``None``: neither, the output may leave the range.

    Returns:
        ``(B, N, 3, H, W)`` float32; the luma is ``video``'s (clamped to ``value_range``)
        exactly, up to rounding; where ``video``'s chroma already matches ``reference``'s at
        coarse scales it is unchanged.

    Raises:
        ValueError: not ``(B, N, 3, H, W)``, ``reference`` of other leading dimensions or not
            smaller by one integer factor; ``sigma`` not > 0.
    """
    if video.ndim != 5 or video.shape[2] != 3 or reference.shape[:3] != video.shape[:3] or reference.ndim != 5:
        raise ValueError(f"video and reference must both be (B, N, 3, H, W), got {tuple(video.shape)} and "
                         f"{tuple(reference.shape)}")
    b, n, _, h, w = video.shape
    factor = h // reference.shape[-2]
    if factor < 1 or reference.shape[-2] * factor != h or reference.shape[-1] * factor != w:
        raise ValueError(f"reference size {tuple(reference.shape[-2:])} must be the video's {(h, w)} divided by one "
                         f"integer factor")
    video = video.float() if value_range is None else video.float().clamp(*value_range)
    ours = rgb_to_ycbcr(video)
    chroma = ours[:, :, 1:].reshape(b * n, 2, h, w)
    small = F.avg_pool2d(chroma, factor) if factor > 1 else chroma
    theirs = rgb_to_ycbcr(reference.float().to(video.device))[:, :, 1:].reshape(small.shape)
    correction = gaussian_blur(theirs - small, sigma / factor)
    if factor > 1:
        correction = F.interpolate(correction, size=(h, w), mode="bilinear", align_corners=False)
    luma = ours[:, :, :1]
    rgb = ycbcr_to_rgb(torch.cat([luma, (chroma + correction).reshape(b, n, 2, h, w)], dim=2))
    if value_range is None:
        return rgb
    return _keep_in_range(luma, rgb - luma, *value_range)


def _keep_in_range(luma: torch.Tensor, colour: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``luma + t · colour`` with the largest ``t ∈ [0, 1]`` per pixel that keeps every channel in
    ``[low, high]`` (``luma`` ``(..., 1, H, W)`` inside the range; ``colour`` = RGB − luma, which has
    zero luma, so the result's luma is ``luma`` for every ``t``)."""
    inf = torch.tensor(float("inf"), device=colour.device)
    up = torch.where(colour > 0, (high - luma) / colour.clamp(min=1e-12), inf)
    down = torch.where(colour < 0, (low - luma) / colour.clamp(max=-1e-12), inf)
    t = torch.minimum(up, down).amin(dim=-3, keepdim=True).clamp(0, 1)
    return luma + t * colour
