"""The drag-conditioning layers: modulation net (A) and drag tokens (B) (paper §3.2, docs/design.md §4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..drags.encoding import encode_drags, used_drag_slots
from ..drags.warp import DEFAULT_WARP, WarpSettings, warp_latents_by_drags


class DragEmbedding(nn.Module):
    """Small conv net mapping a drag encoding to modulation parameters (paper eq. 4).

    ``conv_in`` (3×3, ``6·K → widths[0]``) → SiLU → for each consecutive pair of
    ``widths``: 3×3 conv at the same width + SiLU, 3×3 conv to the next width + SiLU
    → ``conv_out`` (3×3, to ``out_channels``), zero-initialised so that training starts
    from the unmodulated backbone. Parameter names (``conv_in``, ``blocks.{m}``,
    ``conv_out``) follow the authors' release.

    Shapes: input ``(B·N, 6·K, h, w)`` → output ``(B·N, out_channels, h, w)``.
    """

    def __init__(self, in_channels: int, out_channels: int, widths: Sequence[int] = (256, 320, 320)) -> None:
        super().__init__()
        widths = list(widths)
        if not widths:
            raise ValueError("drag_embedder_out_channels must name at least one width")
        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
        self.conv_out = nn.Conv2d(widths[-1], out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, encoding: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(encoding))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)


def sincos_pos_embed_2d(dim: int, height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Fixed 2D sine-cosine positional embedding on an ``height × width`` grid (MAE style).

    The first ``dim/2`` channels encode the column (x) index and the last ``dim/2``
    the row (y) index; each half is ``[sin(p·ω_i), cos(p·ω_i)]`` with
    ``ω_i = 10000^(−i/(dim/4))``. Computed in float64 on ``device``.

    Returns:
        float64 tensor ``(dim, height, width)``.

    Raises:
        ValueError: if ``dim`` is not a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"pos_embed_dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64, device=device) / quarter)

    def one_axis(size: int) -> torch.Tensor:
        out = torch.arange(size, dtype=torch.float64, device=device)[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)  # (size, dim/2)

    ex = one_axis(width)[None].expand(height, width, dim // 2)
    ey = one_axis(height)[:, None].expand(height, width, dim // 2)
    return torch.cat([ex, ey], dim=-1).permute(2, 0, 1).contiguous()


def make_drag_token_mlp(in_features: int, width: int) -> nn.Sequential:
    """``Linear(in → width) → SiLU → Linear(width → width)``; keys ``0.*`` and ``2.*`` as released."""
    return nn.Sequential(nn.Linear(in_features, width), nn.SiLU(), nn.Linear(width, width))


def sample_at_points(features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``features`` at normalised points (border padding, ``align_corners=False``).

    The reference definition of the drag-token sampling (one ``grid_sample``);
    :func:`bilinear_taps` and :func:`gather_taps` compute the same values with one
    index gather.

    Args:
        features: ``(M, C, h, w)``.
        points: ``(M, K, 2)`` normalised ``(x, y)`` in [0, 1] (x right, y down).

    Returns:
        ``(M, K, C)``.
    """
    grid = (points * 2 - 1)[:, None]  # (M, 1, K, 2)
    out = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0].transpose(1, 2)


@dataclass(frozen=True)
class BilinearTaps:
    """The four neighbours and weights of bilinear sampling at ``K`` points, for an ``h × w`` grid.

    Attributes:
        index: int64 ``(M, 4·K)``: flat cell indices ``i·w + j`` of the four neighbours of
            each point (point-major, then the corners nw, ne, sw, se).
        weight: float ``(M, K, 4)``: their bilinear weights (summing to 1).
    """

    index: torch.Tensor
    weight: torch.Tensor


def bilinear_taps(points: torch.Tensor, height: int, width: int, dtype: torch.dtype | None = None) -> BilinearTaps:
    """Neighbours and weights of ``grid_sample(bilinear, border, align_corners=False)`` at ``points``.

    The coordinate arithmetic is ``grid_sample``'s: ``x_pix = ((2x − 1 + 1)·w − 1) / 2``,
    clipped to ``[0, w − 1]`` (border padding), likewise for ``y``; a neighbour outside
    the grid (only at the clipped border, where its weight is 0) is clamped to the edge.

    Args:
        points: ``(M, K, 2)`` normalised ``(x, y)`` (x right, y down; 0 and 1 are the
            outer edges of the first and last cells).
        height, width: grid size.
        dtype: dtype of the weights (default: that of ``points``).

    Returns:
        :class:`BilinearTaps` with ``index (M, 4K)`` and ``weight (M, K, 4)``.
    """
    grid = points * 2 - 1
    x = (((grid[..., 0] + 1) * width - 1) / 2).clamp(0, width - 1)
    y = (((grid[..., 1] + 1) * height - 1) / 2).clamp(0, height - 1)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    gx, gy = 1 - fx, 1 - fy
    weight = torch.stack([gx * gy, fx * gy, gx * fy, fx * fy], dim=-1)  # nw, ne, sw, se
    j0, i0 = x0.long(), y0.long()
    j1, i1 = (j0 + 1).clamp_max(width - 1), (i0 + 1).clamp_max(height - 1)
    index = torch.stack([i0 * width + j0, i0 * width + j1, i1 * width + j0, i1 * width + j1], dim=-1)
    return BilinearTaps(index=index.flatten(1), weight=weight.to(dtype or points.dtype))


def gather_taps(features: torch.Tensor, taps: BilinearTaps) -> torch.Tensor:
    """Bilinear samples of ``features (M, C, h, w)`` at the points of ``taps``: ``(M, K, C)``.

    Equal to :func:`sample_at_points` (to float rounding) with one gather over the
    flattened grid instead of a ``grid_sample`` call.
    """
    m, c = features.shape[:2]
    k = taps.weight.shape[1]
    flat = features.reshape(m, c, -1)
    picked = torch.gather(flat, 2, taps.index[:, None].expand(m, c, 4 * k)).view(m, c, k, 4)
    return (picked * taps.weight[:, None].to(features.dtype)).sum(-1).transpose(1, 2)


@dataclass
class DragConditioning:
    """Everything the drag blocks need that depends only on the drags of a call.

    :meth:`UNetDragSpatioTemporalConditionModel.prepare_drag_conditioning` builds it once
    per generation (not per denoising step) and every UNet evaluation reads it; its
    forward builds one itself when given raw ``drags`` (training). Nothing in it is
    recomputed inside the forward, so a forward that receives it makes no host
    round-trip and can be captured in a CUDA graph.

    Attributes:
        drags: float32 ``(B, N, K, 4)`` (docs/design.md §2): positions stay float32 whatever
            the model's precision.
        flat: float32 ``(B·N, K, 4)``: the same, frames folded into the batch.
        used: bool ``(B, K)``: slots that hold a drag in some frame.
        used_flat: ``(B·N, K)`` mask of the same in the model's dtype, one row per frame (for drag tokens).
        encodings: ``{(h, w): (B·N, 6·K, h, w)}`` drag encodings (docs/design.md §3) for
            each drag-block resolution.
        taps: ``{(h, w): BilinearTaps}`` neighbours and weights for sampling features at
            the start and frame-n points (``2K`` points per row: the ``K`` starts, then
            the ``K`` frame-n points).
        pos_tokens: ``{(h, w): (B·N, K, 2P)}``: the sin-cos positional embedding
            (``P = pos_embed_dim``) sampled at the start and at the frame-n point.
        warped_latents: ``(B, N, C, h, w)`` first-frame latents warped along the drags
            (models with ``drag_warp_image_latents``), or ``None``.
        modulation: ``{block key: [(1 + γ, β) per layer]}`` outputs of the modulation
            nets (paper eq. 4), filled by ``prepare_drag_conditioning(...,
            precompute_modulation=True)`` for sampling with fixed weights; empty in
            training, where they are computed in the forward.
    """

    drags: torch.Tensor
    flat: torch.Tensor
    used: torch.Tensor
    encodings: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    used_flat: torch.Tensor | None = None
    taps: dict[tuple[int, int], BilinearTaps] = field(default_factory=dict)
    pos_tokens: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    warped_latents: torch.Tensor | None = None
    modulation: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.used_flat is None:
            self.used_flat = self.used.repeat_interleave(self.drags.shape[1], dim=0).float()

    @classmethod
    def prepare(
        cls,
        drags: torch.Tensor,
        sizes: Sequence[tuple[int, int]],
        pos_embed_dim: int | None = None,
        image_latents: torch.Tensor | None = None,
        warp: WarpSettings = DEFAULT_WARP,
        dtype: torch.dtype | None = None,
    ) -> "DragConditioning":
        """Derive the conditioning of ``drags (B, N, K, 4)`` for the drag blocks at ``sizes``.

        Positions are computed in float32 whatever the model's precision (a bfloat16 drag
        coordinate can be 0.5 px off at 256 px and land in the neighbouring cell), and the
        drags are kept in float32; only the derived encodings, embeddings and masks are cast
        to ``dtype``.

        Args:
            drags: normalised drags (docs/design.md §2).
            sizes: ``(h, w)`` of every drag-block resolution.
            pos_embed_dim: width ``P`` of the drag tokens' positional embedding; ``None``
                skips the token data (models without drag tokens).
            image_latents: ``(B, C, h, w)`` first-frame latents to warp along the drags
                (:func:`~puppet_master.drags.warp.warp_latents_by_drags`), or ``None``.
            warp: settings of that warp (the UNet's, :meth:`WarpSettings.from_config`).
            dtype: dtype of the derived tensors (default: that of ``drags``).
        """
        dtype = dtype or drags.dtype
        drags32 = drags.float()
        flat = drags32.flatten(0, 1)
        cond = cls(drags=drags32, flat=flat, used=used_drag_slots(drags32))
        cond.used_flat = cond.used_flat.to(dtype)
        # (B·N, 2K, 2): the starts, then the frame-n points; sampling positions in float32 whatever the model dtype
        points = torch.cat([flat[..., 0:2], flat[..., 2:4]], dim=1).float()
        for size in dict.fromkeys(map(tuple, sizes)):
            h, w = size
            cond.encodings[size] = encode_drags(drags32, size).flatten(0, 1).to(dtype)
            if pos_embed_dim is not None:
                taps = bilinear_taps(points, h, w)
                cond.taps[size] = taps
                grid = sincos_pos_embed_2d(pos_embed_dim, h, w, device=drags.device).float()
                k = drags.shape[2]
                pos = gather_taps(grid[None].expand(flat.shape[0], -1, -1, -1), taps)  # (B·N, 2K, P)
                cond.pos_tokens[size] = torch.cat([pos[:, :k], pos[:, k:]], dim=-1).to(dtype)
        if image_latents is not None:
            cond.warped_latents = warp_latents_by_drags(image_latents, drags32, warp.radius, warp.background)
        return cond

    @property
    def num_frames(self) -> int:
        return int(self.drags.shape[1])

    def structure(self) -> tuple:
        """Which entries are present (resolutions, modulation keys and layers): equal structures
        give :meth:`tensors` lists that correspond one to one."""
        return (
            tuple(self.encodings), tuple(self.taps), tuple(self.pos_tokens), self.warped_latents is not None,
            tuple((key, tuple(s is None for s, _ in layers)) for key, layers in self.modulation.items()),
        )

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor held, in a fixed order (see :meth:`structure`)."""
        out = [self.drags, self.flat, self.used, self.used_flat, *self.encodings.values()]
        for taps in self.taps.values():
            out += [taps.index, taps.weight]
        out += list(self.pos_tokens.values())
        if self.warped_latents is not None:
            out.append(self.warped_latents)
        for layers in self.modulation.values():
            for scale1, shift in layers:
                out += [shift] if scale1 is None else [scale1, shift]
        return out

    def map_tensors(self, fn) -> "DragConditioning":
        """A new conditioning with ``fn`` applied to every tensor (e.g. ``torch.clone``, a device move)."""
        return DragConditioning(
            drags=fn(self.drags),
            flat=fn(self.flat),
            used=fn(self.used),
            used_flat=fn(self.used_flat),
            encodings={k: fn(v) for k, v in self.encodings.items()},
            taps={k: BilinearTaps(fn(t.index), fn(t.weight)) for k, t in self.taps.items()},
            pos_tokens={k: fn(v) for k, v in self.pos_tokens.items()},
            warped_latents=fn(self.warped_latents) if self.warped_latents is not None else None,
            modulation={
                k: [(fn(s) if s is not None else None, fn(b)) for s, b in layers] for k, layers in self.modulation.items()
            },
        )

    def encoding(self, h: int, w: int) -> torch.Tensor:
        """The ``(B·N, 6·K, h, w)`` encoding at one resolution.

        Raises:
            KeyError: the conditioning was prepared without that resolution.
        """
        return self.encodings[(h, w)]
