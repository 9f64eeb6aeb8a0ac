"""Leaner forwards for three diffusers layers of SVD's UNet (same parameters, same results).

The drag UNet is built from diffusers' spatio-temporal blocks. Three of their layers do
work in ``forward`` that costs kernels, host time or a ``torch.compile`` graph break
without changing the result for this model:

* ``AlphaBlender`` (``learned_with_images``) allocates a ones tensor, a ``where`` and
  several element-wise kernels on every call to mix spatial and temporal features;
  :class:`AlphaBlender` computes the same blend ``α·x_spatial + (1 − α)·x_temporal`` with
  ``α = sigmoid(mix_factor)`` (1 for image-only frames) as one ``lerp``.
* ``Upsample2D`` checks the torch version (``is_torch_version``) inside ``forward``;
  :class:`Upsample2D` is nearest ×2 then the 3×3 convolution, nothing else.
* the temporal ResNet's ``Conv3d`` has a ``(3, 1, 1)`` kernel: a 1-D convolution over
  frames. :class:`TemporalConv3d` runs it as a ``(3, 1)`` 2-D convolution over
  ``(frames, h·w)``, which oneDNN (CPU) runs about 2–4× faster than ``slow_conv3d``.

:func:`install_fast_layers` swaps the class of each such module in place: parameters,
buffers and state-dict keys stay exactly those of diffusers (the released weights load
unchanged) and outputs agree to float rounding (``tests/test_unet.py``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.resnet import AlphaBlender as _DiffusersAlphaBlender
from diffusers.models.upsampling import Upsample2D as _DiffusersUpsample2D


# Adapted from diffusers.models.resnet.AlphaBlender.forward (diffusers 0.42): the same blend as one torch.lerp.
# Relies on AlphaBlender's attributes merge_strategy, mix_factor and switch_spatial_to_temporal_mix.
class AlphaBlender(_DiffusersAlphaBlender):
    """diffusers' ``AlphaBlender`` with a one-kernel blend (``torch.lerp``).

    Shapes as in diffusers: ``x_spatial``, ``x_temporal`` ``(B, C, N, h, w)`` with
    ``image_only_indicator (B, N)``, or ``(B·N, L, C)``; returns the same shape.
    """

    def forward(self, x_spatial: torch.Tensor, x_temporal: torch.Tensor, image_only_indicator: torch.Tensor | None = None) -> torch.Tensor:
        if self.merge_strategy != "learned_with_images":
            return super().forward(x_spatial, x_temporal, image_only_indicator)
        if image_only_indicator is None:
            raise ValueError("Please provide image_only_indicator to use learned_with_images merge strategy")
        dtype = torch.promote_types(x_spatial.dtype, x_temporal.dtype)  # mixed under autocast
        alpha = torch.sigmoid(self.mix_factor).to(dtype)
        alpha = torch.where(image_only_indicator.bool(), torch.ones_like(alpha), alpha)  # (B, N)
        if x_spatial.ndim == 5:
            alpha = alpha[:, None, :, None, None]
        elif x_spatial.ndim == 3:
            alpha = alpha.reshape(-1)[:, None, None]
        else:
            raise ValueError(f"Unexpected ndims {x_spatial.ndim}. Dimensions should be 3 or 5")
        if self.switch_spatial_to_temporal_mix:
            alpha = 1.0 - alpha
        return torch.lerp(x_temporal.to(dtype), x_spatial.to(dtype), alpha)


# Adapted from diffusers.models.upsampling.Upsample2D.forward (diffusers 0.42), the path SVD's UNet takes;
# relies on its attributes norm, use_conv_transpose, interpolate, use_conv, name and conv / Conv2d_0.
class Upsample2D(_DiffusersUpsample2D):
    """diffusers' ``Upsample2D`` as the UNet uses it: nearest ×2 (or to ``output_size``), then the conv."""

    def forward(self, hidden_states: torch.Tensor, output_size: tuple[int, int] | None = None, *args, **kwargs) -> torch.Tensor:
        if self.norm is not None or self.use_conv_transpose or not self.interpolate:
            return super().forward(hidden_states, output_size, *args, **kwargs)
        if output_size is None:
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        else:
            hidden_states = F.interpolate(hidden_states, size=output_size, mode="nearest")
        if self.use_conv:
            conv = self.conv if self.name == "conv" else self.Conv2d_0
            hidden_states = conv(hidden_states)
        return hidden_states


class TemporalConv3d(nn.Conv3d):
    """``Conv3d`` with a ``(k, 1, 1)`` kernel run as a ``(k, 1)`` ``Conv2d`` over ``(N, h·w)``.

    Input ``(B, C, N, h, w)`` → output ``(B, C_out, N, h, w)``; same weight tensor
    ``(C_out, C, k, 1, 1)`` as the ``Conv3d`` it replaces.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n, h, w = x.shape
        out = F.conv2d(
            x.reshape(b, x.shape[1], n, h * w), self.weight.squeeze(-1), self.bias,
            stride=self.stride[:2], padding=self.padding[:2], dilation=self.dilation[:2], groups=self.groups,
        )
        return out.view(b, out.shape[1], out.shape[2], h, w)


def _is_temporal_conv(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv3d
        and module.kernel_size[1:] == (1, 1)
        and module.stride[1:] == (1, 1)
        and module.padding[1:] == (0, 0)
        and module.dilation[1:] == (1, 1)
        and module.padding_mode == "zeros"
    )


# Leans on diffusers internals (CONTRIBUTING.md, "Upgrading diffusers"): the classes are swapped on modules
# diffusers built, so their constructors' attributes and parameter names must stay those the forwards above read.
def install_fast_layers(model: nn.Module) -> int:
    """Swap the classes of diffusers' ``AlphaBlender``, ``Upsample2D`` and ``(k,1,1)`` ``Conv3d`` modules in place.

    Only the ``forward`` changes; parameters, buffers and state-dict keys are untouched.

    Returns:
        The number of modules swapped.
    """
    swapped = 0
    for module in model.modules():
        if type(module) is _DiffusersAlphaBlender:
            module.__class__ = AlphaBlender
        elif type(module) is _DiffusersUpsample2D:
            module.__class__ = Upsample2D
        elif _is_temporal_conv(module):
            module.__class__ = TemporalConv3d
        else:
            continue
        swapped += 1
    return swapped
