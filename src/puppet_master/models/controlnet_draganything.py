"""DragAnything's ControlNet branch for Stable Video Diffusion (Wu et al. 2024, §3.3–3.4).

A trainable copy of SVD's encoder (``conv_in``, time embeddings, down blocks, mid block)
reads the same 8-channel input as the frozen UNet plus an embedding of the per-frame
conditions: the 2D-Gaussian trajectory maps and the entity-feature maps
(:mod:`puppet_master.entity`). Zero-initialised 1×1 convolutions (``controlnet_*``) map
every skip connection and the mid-block output to residuals that
:class:`~puppet_master.models.UNetSpatioTemporalControlNetConditionModel` adds to its own.

Module names, state-dict keys and shapes equal the released ``DragAnythingSDVModel``
(``weijiawu/DragAnything``), so its ``config.json`` + weights load with
:meth:`DragAnythingControlNetModel.from_pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_3d_blocks import UNetMidBlockSpatioTemporal, get_down_block
from diffusers.utils import BaseOutput

from .unet_svd_controlnet import svd_time_embedding


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


@dataclass
class DragAnythingControlNetOutput(BaseOutput):
    """Residuals for the SVD UNet.

    Attributes:
        down_block_res_samples: one ``(B·N, C_j, h_j, w_j)`` tensor per skip connection of
            the UNet (12 for SVD), already multiplied by ``conditioning_scale``.
        mid_block_res_sample: ``(B·N, C_mid, h/8, w/8)`` (latent h, w), likewise scaled.
    """

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor


class DragAnythingConditioningEmbedding(nn.Module):
    """Embeds the per-frame trajectory and entity maps at pixel resolution into the latent grid.

    Two convolution stacks, each ending in a zero-initialised 3×3 convolution, whose outputs
    are summed:

    * trajectory maps ``(B, N, 3, H, W)``: ``conv_in`` (3×3) then, per stage, a 3×3 and a
      stride-2 3×3 convolution, SiLU after each, then ``conv_out``;
    * entity maps ``(B, N, C_e, H, W)``: per stage a 3×3 and a stride-2 3×3 convolution,
      SiLU after each (no input convolution), then ``conv_out_feature``.

    Args:
        embedding_channels: output channels (SVD's ``block_out_channels[0]``, 320).
        conditioning_channels: channels of the trajectory maps (3).
        block_out_channels: widths of the trajectory stack (16, 32, 96, 256).
        entity_block_out_channels: widths of the entity stack; the first is ``C_e``
            (160, 160, 256, 256).

    Both stacks down-sample by ``2**(len − 1)`` (8, the VAE factor, in the release).

    Raises:
        ValueError: stacks of different depth (their outputs could not be summed).
    """

    def __init__(
        self,
        embedding_channels: int,
        conditioning_channels: int = 3,
        block_out_channels: Sequence[int] = (16, 32, 96, 256),
        entity_block_out_channels: Sequence[int] = (160, 160, 256, 256),
    ) -> None:
        super().__init__()
        if len(block_out_channels) != len(entity_block_out_channels):
            raise ValueError(
                "the trajectory and entity stacks must down-sample equally: "
                f"{tuple(block_out_channels)} vs {tuple(entity_block_out_channels)}"
            )
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(block_out_channels[:-1], block_out_channels[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = _zero(nn.Conv2d(block_out_channels[-1], embedding_channels, kernel_size=3, padding=1))
        self.blocks_feature = nn.ModuleList()
        for c_in, c_out in zip(entity_block_out_channels[:-1], entity_block_out_channels[1:]):
            self.blocks_feature.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks_feature.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.conv_out_feature = _zero(
            nn.Conv2d(entity_block_out_channels[-1], embedding_channels, kernel_size=3, padding=1)
        )

    def forward(self, trajectory_maps: torch.Tensor, entity_maps: torch.Tensor) -> torch.Tensor:
        """Embed the conditions.

        Args:
            trajectory_maps: ``(B, N, 3, H, W)``, values in [0, 255] (the release's scale).
            entity_maps: ``(B, N, C_e, H, W)``.

        Returns:
            ``(B·N, embedding_channels, H/8, W/8)`` (for the release's 4-stage stacks).
        """
        x = F.silu(self.conv_in(trajectory_maps.flatten(0, 1)))
        for conv in self.blocks:
            x = F.silu(conv(x))
        y = entity_maps.flatten(0, 1)
        for conv in self.blocks_feature:
            y = F.silu(conv(y))
        return self.conv_out(x) + self.conv_out_feature(y)


# Adapted from the encoder half of diffusers.models.unets.unet_spatio_temporal_condition.
# UNetSpatioTemporalConditionModel (diffusers 0.42) and diffusers' ControlNetModel's zero convolutions.
class DragAnythingControlNetModel(ModelMixin, AttentionMixin, ConfigMixin):
    """DragAnything's ControlNet (the release's ``DragAnythingSDVModel``).

    Built from diffusers' SVD blocks with the configuration of SVD's UNet. The constructor
    accepts every entry of the released ``config.json`` (``out_channels`` and
    ``up_block_types`` are stored and unused: the branch has no decoder).

    Args:
        sample_size, in_channels, down_block_types, block_out_channels,
        addition_time_embed_dim, projection_class_embeddings_input_dim, layers_per_block,
        cross_attention_dim, transformer_layers_per_block, num_attention_heads, num_frames:
            as in SVD's UNet config (copied by :meth:`from_unet`).
        out_channels, up_block_types: unused.
        conditioning_channels: channels of the trajectory maps (3: an RGB copy of the gray map).
        conditioning_embedding_out_channels: trajectory-map stack widths.
        entity_embedding_out_channels: entity-map stack widths; the first entry is the
            number of channels of the entity maps (160 = SD-1.5's 320 DIFT channels
            average-pooled in pairs). Not in the released config; its default is the
            release's (hard-coded there).

    Raises:
        ValueError: inconsistent block configuration.
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["time_proj", "add_time_proj"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 8,
        out_channels: int = 4,
        down_block_types: Sequence[str] = (
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        up_block_types: Sequence[str] = (
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ),
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 768,
        layers_per_block: int | Sequence[int] = 2,
        cross_attention_dim: int | Sequence[int] = 1024,
        transformer_layers_per_block: int | Sequence[int] = 1,
        num_attention_heads: int | Sequence[int] = (5, 10, 20, 20),
        num_frames: int = 25,
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256),
        entity_embedding_out_channels: Sequence[int] = (160, 160, 256, 256),
    ) -> None:
        super().__init__()
        n = len(down_block_types)
        if len(block_out_channels) != n:
            raise ValueError(f"need one block_out_channels entry per down block, got {block_out_channels}")
        heads = (num_attention_heads,) * n if isinstance(num_attention_heads, int) else tuple(num_attention_heads)
        xdims = (cross_attention_dim,) * n if isinstance(cross_attention_dim, int) else tuple(cross_attention_dim)
        layers = (layers_per_block,) * n if isinstance(layers_per_block, int) else tuple(layers_per_block)
        tlayers = (
            (transformer_layers_per_block,) * n
            if isinstance(transformer_layers_per_block, int)
            else tuple(transformer_layers_per_block)
        )
        for name, seq in (("num_attention_heads", heads), ("cross_attention_dim", xdims), ("layers_per_block", layers),
                          ("transformer_layers_per_block", tlayers)):
            if len(seq) != n:
                raise ValueError(f"{name} must have one entry per block ({n}), got {seq}")

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        time_embed_dim = block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim)
        self.add_time_proj = Timesteps(addition_time_embed_dim, True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)

        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList()
        self.controlnet_cond_embedding = DragAnythingConditioningEmbedding(
            embedding_channels=block_out_channels[0],
            conditioning_channels=conditioning_channels,
            block_out_channels=tuple(conditioning_embedding_out_channels),
            entity_block_out_channels=tuple(entity_embedding_out_channels),
        )

        def zero_conv(channels: int) -> nn.Conv2d:
            return _zero(nn.Conv2d(channels, channels, kernel_size=1))

        output_channel = block_out_channels[0]
        self.controlnet_down_blocks.append(zero_conv(output_channel))  # the conv_in skip
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            is_final = i == n - 1
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=layers[i],
                    transformer_layers_per_block=tlayers[i],
                    in_channels=input_channel,
                    out_channels=output_channel,
                    temb_channels=time_embed_dim,
                    add_downsample=not is_final,
                    resnet_eps=1e-5,
                    cross_attention_dim=xdims[i],
                    num_attention_heads=heads[i],
                    resnet_act_fn="silu",
                )
            )
            for _ in range(layers[i] + (0 if is_final else 1)):
                self.controlnet_down_blocks.append(zero_conv(output_channel))
        self.controlnet_mid_block = zero_conv(block_out_channels[-1])
        self.mid_block = UNetMidBlockSpatioTemporal(
            block_out_channels[-1],
            temb_channels=time_embed_dim,
            transformer_layers_per_block=tlayers[-1],
            cross_attention_dim=xdims[-1],
            num_attention_heads=heads[-1],
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_unet(
        cls,
        unet,
        load_weights_from_unet: bool = True,
        conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256),
        entity_embedding_out_channels: Sequence[int] = (160, 160, 256, 256),
    ) -> "DragAnythingControlNetModel":
        """A ControlNet with the configuration (and by default the encoder weights) of an SVD UNet.

        Copies ``conv_in``, the time and added-time embeddings, the down blocks and the mid
        block (the release's training start copied all but ``add_embedding``, which it left
        random; copying it too is the better start). The ``controlnet_*`` convolutions and
        the conditioning embedding's output convolutions stay zero, so the untrained branch
        leaves the UNet's output unchanged.

        Args:
            unet: a ``UNetSpatioTemporalConditionModel`` (or the residual subclass).
            load_weights_from_unet: copy the weights (else random init).
        """
        cfg = unet.config
        model = cls(
            sample_size=cfg.sample_size,
            in_channels=cfg.in_channels,
            out_channels=cfg.out_channels,
            down_block_types=tuple(cfg.down_block_types),
            up_block_types=tuple(cfg.up_block_types),
            block_out_channels=tuple(cfg.block_out_channels),
            addition_time_embed_dim=cfg.addition_time_embed_dim,
            projection_class_embeddings_input_dim=cfg.projection_class_embeddings_input_dim,
            layers_per_block=cfg.layers_per_block,
            cross_attention_dim=cfg.cross_attention_dim,
            transformer_layers_per_block=cfg.transformer_layers_per_block,
            num_attention_heads=cfg.num_attention_heads,
            num_frames=cfg.num_frames,
            conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
            entity_embedding_out_channels=tuple(entity_embedding_out_channels),
        )
        if load_weights_from_unet:
            for name in ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block"):
                getattr(model, name).load_state_dict(getattr(unet, name).state_dict())
        return model.to(unet.dtype)

    # ------------------------------------------------------------------ forward
    @property
    def entity_channels(self) -> int:
        """Channels ``C_e`` of the entity maps this model takes (160 in the release)."""
        return int(self.config.entity_embedding_out_channels[0])

    @property
    def condition_stride(self) -> int:
        """Pixels per latent cell of the condition maps (8 in the release)."""
        return 2 ** (len(self.config.conditioning_embedding_out_channels) - 1)

    def embed_conditions(self, trajectory_maps: torch.Tensor, entity_maps: torch.Tensor) -> torch.Tensor:
        """The conditioning embedding ``(B·N, C0, h, w)`` added to ``conv_in``'s output.

        It does not depend on the noise level: a sampler computes it once per video and
        passes it to :meth:`forward` as ``conditioning_embedding``.

        Args:
            trajectory_maps: ``(B, N, 3, H, W)`` in [0, 255].
            entity_maps: ``(B, N, C_e, H, W)``.
        """
        dtype = self.conv_in.weight.dtype
        return self.controlnet_cond_embedding(trajectory_maps.to(dtype), entity_maps.to(dtype))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        trajectory_maps: torch.Tensor | None = None,
        entity_maps: torch.Tensor | None = None,
        conditioning_embedding: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        return_dict: bool = True,
    ) -> DragAnythingControlNetOutput | tuple:
        """Residuals for the SVD UNet.

        Args:
            sample: ``(B, N, in_channels, h, w)``, the UNet's own input (scaled noisy latents
                ⊕ first-frame latent).
            timestep: EDM ``c_noise`` (scalar or ``(B,)``).
            encoder_hidden_states: ``(B, 1, cross_attention_dim)``.
            added_time_ids: ``(B, 3)``.
            trajectory_maps, entity_maps: the conditions (see :meth:`embed_conditions`),
                ``(B, N, 3, H, W)`` and ``(B, N, C_e, H, W)`` with ``H = 8·h``.
            conditioning_embedding: precomputed :meth:`embed_conditions` output instead of
                the two maps.
            conditioning_scale: factor on every residual (``controlnet_cond_scale``).
            return_dict: return :class:`DragAnythingControlNetOutput` or a tuple.

        Raises:
            ValueError: neither the maps nor an embedding given, or their shapes do not
                match ``sample``.
        """
        batch_size, num_frames = sample.shape[:2]
        if conditioning_embedding is None:
            if trajectory_maps is None or entity_maps is None:
                raise ValueError("give trajectory_maps and entity_maps, or a conditioning_embedding")
            conditioning_embedding = self.embed_conditions(trajectory_maps, entity_maps)
        expected = (batch_size * num_frames, self.config.block_out_channels[0], *sample.shape[-2:])
        if tuple(conditioning_embedding.shape) != expected:
            raise ValueError(
                f"condition embedding has shape {tuple(conditioning_embedding.shape)}, expected {expected}: "
                f"the condition maps must be {self.condition_stride}x the latent size, one per frame"
            )
        emb = svd_time_embedding(self, sample, timestep, added_time_ids)
        emb = emb.repeat_interleave(num_frames, dim=0)
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(num_frames, dim=0)
        image_only_indicator = torch.zeros(batch_size, num_frames, dtype=sample.dtype, device=sample.device)

        hidden = self.conv_in(sample.flatten(0, 1)) + conditioning_embedding.to(sample.dtype)
        skips: tuple[torch.Tensor, ...] = (hidden,)
        for block in self.down_blocks:
            kwargs = dict(hidden_states=hidden, temb=emb, image_only_indicator=image_only_indicator)
            if getattr(block, "has_cross_attention", False):
                kwargs["encoder_hidden_states"] = encoder_hidden_states
            hidden, res = block(**kwargs)
            skips = skips + tuple(res)
        hidden = self.mid_block(
            hidden_states=hidden,
            temb=emb,
            encoder_hidden_states=encoder_hidden_states,
            image_only_indicator=image_only_indicator,
        )
        down = tuple(conv(s) * conditioning_scale for conv, s in zip(self.controlnet_down_blocks, skips))
        mid = self.controlnet_mid_block(hidden) * conditioning_scale
        if not return_dict:
            return (down, mid)
        return DragAnythingControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)
