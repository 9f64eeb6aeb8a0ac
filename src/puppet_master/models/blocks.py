"""Down/up UNet blocks of SVD with drag modulation and drag tokens (paper §3.2, docs/design.md §4 A–B).

Each block is SVD's ``CrossAttn{Down,Up}BlockSpatioTemporal`` with, after every ResNet
layer and before its spatio-temporal transformer:

* **modulation** ``h ← h·(1+γ) + β`` with ``(γ, β) = flow_convs[j](encoding)``
  (shift only, ``h ← h + β``, when ``use_modulate=False``);
* **drag tokens**: for every slot, the (gradient-stopped) modulated features and the
  2D sin-cos positional embedding sampled at the start and at the frame-n point,
  through ``drag_token_mlps[j]``, appended to the cross-attention context; unused
  slots give zero tokens.

Everything that depends only on the drags (encodings, sampling neighbours and weights,
the sampled positional embeddings, and at sampling time the modulation parameters) comes
precomputed in a :class:`~puppet_master.models.drag_modules.DragConditioning`; per layer
the blocks only apply the modulation and gather the features at the drag points.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from diffusers.models.resnet import Downsample2D, SpatioTemporalResBlock, Upsample2D
from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

from .drag_modules import DragConditioning, DragEmbedding, gather_taps, make_drag_token_mlp


# Adapted from the attention lists of diffusers.models.unets.unet_3d_blocks.CrossAttnDownBlockSpatioTemporal
# and CrossAttnUpBlockSpatioTemporal (diffusers 0.42): one TransformerSpatioTemporalModel per layer.
def _spatio_temporal_transformers(num_layers, channels, heads, cross_attention_dim, layers_per_transformer) -> nn.ModuleList:
    """One diffusers ``TransformerSpatioTemporalModel`` per layer, as in SVD's blocks."""
    if isinstance(layers_per_transformer, int):
        layers_per_transformer = [layers_per_transformer] * num_layers
    return nn.ModuleList(
        TransformerSpatioTemporalModel(heads, channels // heads, in_channels=channels,
                                       num_layers=layers_per_transformer[i], cross_attention_dim=cross_attention_dim)
        for i in range(num_layers)
    )


class _DragConditionedLayers(nn.Module):
    """Shared drag logic of the down and up blocks (one modulation net / token MLP per layer)."""

    has_cross_attention = True

    def _init_drag_layers(
        self,
        num_layers: int,
        out_channels: int,
        cross_attention_dim: int,
        num_drags: int,
        pos_embed_dim: int,
        drag_token_cross_attn: bool,
        use_modulate: bool,
        drag_modulation: bool,
        drag_embedder_out_channels: Sequence[int],
    ) -> None:
        self.num_drags = num_drags
        self.pos_embed_dim = pos_embed_dim
        self.drag_token_cross_attn = drag_token_cross_attn
        self.use_modulate = use_modulate
        self.drag_modulation = drag_modulation
        if drag_modulation:
            mod_channels = out_channels * 2 if use_modulate else out_channels
            self.flow_convs = nn.ModuleList(
                DragEmbedding(6 * num_drags, mod_channels, drag_embedder_out_channels) for _ in range(num_layers)
            )
        if drag_token_cross_attn:
            self.drag_token_mlps = nn.ModuleList(
                make_drag_token_mlp(2 * out_channels + 2 * pos_embed_dim, cross_attention_dim) for _ in range(num_layers)
            )
        #: name of this block in its UNet (``down_blocks.1``…), the key of its precomputed
        #: modulation in :attr:`DragConditioning.modulation`; set by the UNet.
        self.drag_key: str | None = None

    def modulation(self, layer: int, encoding: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Modulation parameters ``(1 + γ, β)`` of one layer (paper eq. 4); ``(None, β)`` when shift-only.

        Args:
            encoding: ``(B·N, 6·K, h, w)`` drag encoding at this block's resolution.

        Returns:
            two ``(B·N, C, h, w)`` tensors (the first ``None`` with ``use_modulate=False``).
        """
        out = self.flow_convs[layer](encoding)
        if self.use_modulate:
            scale, shift = out.chunk(2, dim=1)
            return 1 + scale, shift
        return None, out

    def _condition(
        self,
        layer: int,
        hidden_states: torch.Tensor,
        context: torch.Tensor,
        cond: DragConditioning | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply modulation and build the cross-attention context for one layer.

        Args:
            hidden_states: ``(B·N, C, h, w)`` after the ResNet layer.
            context: ``(B·N, T, D)`` image-token context (without drag tokens).
            cond: drag conditioning of this call, or ``None`` (no drag layers run).

        Returns:
            ``(hidden_states, context)`` with ``context`` of ``T + K`` tokens when drag
            tokens are on.
        """
        if cond is None:
            return hidden_states, context
        h, w = hidden_states.shape[-2:]
        if self.drag_modulation:
            cached = cond.modulation.get(self.drag_key) if self.drag_key is not None else None
            scale1, shift = cached[layer] if cached is not None else self.modulation(layer, cond.encoding(h, w))
            if scale1 is None:
                hidden_states = hidden_states + shift
            else:
                hidden_states = hidden_states * scale1 + shift
        if self.drag_token_cross_attn:
            # features at the K start points, then at the K frame-n points: (B·N, 2K, C); no gradient
            # flows back into the features through the tokens (paper §3.2)
            feats = gather_taps(hidden_states.detach(), cond.taps[(h, w)])
            k = feats.shape[1] // 2
            pos = cond.pos_tokens[(h, w)].to(feats.dtype)  # (B·N, K, 2P)
            token_in = torch.cat([feats[:, :k], feats[:, k:], pos], dim=-1)  # (B·N, K, 2C + 2P)
            tokens = self.drag_token_mlps[layer](token_in)
            tokens = tokens * cond.used_flat[..., None].to(tokens.dtype)
            context = torch.cat([context, tokens], dim=1)
        return hidden_states, context

    def _resnet(self, resnet: nn.Module, hidden_states, temb, image_only_indicator):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(resnet, hidden_states, temb, image_only_indicator)
        return resnet(hidden_states, temb, image_only_indicator=image_only_indicator)


# Adapted from diffusers.models.unets.unet_3d_blocks.CrossAttnDownBlockSpatioTemporal (diffusers 0.42): the
# same submodules and keys (resnets, attentions, downsamplers), plus the drag layers between ResNet and attention.
class CrossAttnDownBlockSpatioTemporalWithDrags(_DragConditionedLayers):
    """SVD's ``CrossAttnDownBlockSpatioTemporal`` plus drag modulation and drag tokens.

    Forward shapes: ``hidden_states (B·N, C_in, h, w)`` → ``(B·N, C_out, h', w')`` and
    the tuple of skip states, as in diffusers.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int = 1,
        transformer_layers_per_block: int | Sequence[int] = 1,
        num_attention_heads: int = 1,
        cross_attention_dim: int = 1280,
        add_downsample: bool = True,
        num_drags: int = 5,
        pos_embed_dim: int = 64,
        drag_token_cross_attn: bool = True,
        use_modulate: bool = True,
        drag_modulation: bool = True,
        drag_embedder_out_channels: Sequence[int] = (256, 320, 320),
    ) -> None:
        super().__init__()
        self.attentions = _spatio_temporal_transformers(
            num_layers, out_channels, num_attention_heads, cross_attention_dim, transformer_layers_per_block
        )
        self.resnets = nn.ModuleList(
            SpatioTemporalResBlock(
                in_channels=in_channels if i == 0 else out_channels,
                out_channels=out_channels,
                temb_channels=temb_channels,
                eps=1e-6,
            )
            for i in range(num_layers)
        )
        self._init_drag_layers(
            num_layers, out_channels, cross_attention_dim, num_drags, pos_embed_dim,
            drag_token_cross_attn, use_modulate, drag_modulation, drag_embedder_out_channels,
        )
        if add_downsample:
            self.downsamplers = nn.ModuleList(
                [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=1, name="op")]
            )
        else:
            self.downsamplers = None
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        image_only_indicator: torch.Tensor | None = None,
        drag_conditioning: DragConditioning | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        output_states = ()
        for layer, (resnet, attn) in enumerate(zip(self.resnets, self.attentions)):
            hidden_states = self._resnet(resnet, hidden_states, temb, image_only_indicator)
            hidden_states, context = self._condition(layer, hidden_states, encoder_hidden_states, drag_conditioning)
            hidden_states = attn(
                hidden_states, encoder_hidden_states=context, image_only_indicator=image_only_indicator, return_dict=False
            )[0]
            output_states = output_states + (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
            output_states = output_states + (hidden_states,)
        return hidden_states, output_states


# Adapted from diffusers.models.unets.unet_3d_blocks.CrossAttnUpBlockSpatioTemporal (diffusers 0.42): the
# same submodules and keys (resnets, attentions, upsamplers), plus the drag layers between ResNet and attention.
class CrossAttnUpBlockSpatioTemporalWithDrags(_DragConditionedLayers):
    """SVD's ``CrossAttnUpBlockSpatioTemporal`` plus drag modulation and drag tokens.

    ResNet group norms use ``resnet_eps`` (1e-5 in the released model).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        prev_output_channel: int,
        temb_channels: int,
        resolution_idx: int | None = None,
        num_layers: int = 1,
        transformer_layers_per_block: int | Sequence[int] = 1,
        resnet_eps: float = 1e-5,
        num_attention_heads: int = 1,
        cross_attention_dim: int = 1280,
        add_upsample: bool = True,
        num_drags: int = 5,
        pos_embed_dim: int = 64,
        drag_token_cross_attn: bool = True,
        use_modulate: bool = True,
        drag_modulation: bool = True,
        drag_embedder_out_channels: Sequence[int] = (256, 320, 320),
    ) -> None:
        super().__init__()
        resnets = []
        for i in range(num_layers):
            res_skip_channels = in_channels if (i == num_layers - 1) else out_channels
            resnet_in_channels = prev_output_channel if i == 0 else out_channels
            resnets.append(
                SpatioTemporalResBlock(
                    in_channels=resnet_in_channels + res_skip_channels,
                    out_channels=out_channels,
                    temb_channels=temb_channels,
                    eps=resnet_eps,
                )
            )
        self.attentions = _spatio_temporal_transformers(
            num_layers, out_channels, num_attention_heads, cross_attention_dim, transformer_layers_per_block
        )
        self.resnets = nn.ModuleList(resnets)
        self._init_drag_layers(
            num_layers, out_channels, cross_attention_dim, num_drags, pos_embed_dim,
            drag_token_cross_attn, use_modulate, drag_modulation, drag_embedder_out_channels,
        )
        if add_upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
        else:
            self.upsamplers = None
        self.gradient_checkpointing = False
        self.resolution_idx = resolution_idx

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        image_only_indicator: torch.Tensor | None = None,
        drag_conditioning: DragConditioning | None = None,
    ) -> torch.Tensor:
        for layer, (resnet, attn) in enumerate(zip(self.resnets, self.attentions)):
            res_hidden_states = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = torch.cat([hidden_states, res_hidden_states], dim=1)
            hidden_states = self._resnet(resnet, hidden_states, temb, image_only_indicator)
            hidden_states, context = self._condition(layer, hidden_states, encoder_hidden_states, drag_conditioning)
            hidden_states = attn(
                hidden_states, encoder_hidden_states=context, image_only_indicator=image_only_indicator, return_dict=False
            )[0]
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states)
        return hidden_states
