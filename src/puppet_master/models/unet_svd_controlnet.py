"""SVD's spatio-temporal UNet that takes ControlNet residuals (DragAnything, Wu et al. 2024).

DragAnything keeps Stable Video Diffusion's UNet frozen and adds the outputs of a
ControlNet branch (:class:`~puppet_master.models.DragAnythingControlNetModel`) to the
UNet's skip connections and to the output of its mid block. The weights are SVD's
unchanged, so :meth:`from_pretrained` of an SVD folder's ``unet`` subfolder loads them
as they are.
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401 - DiffusionPipeline.from_pretrained finds the load method through this module
from diffusers.models.unets.unet_spatio_temporal_condition import (
    UNetSpatioTemporalConditionModel,
    UNetSpatioTemporalConditionOutput,
)

#: How ControlNet residuals are added to the skip connections (see the class docstring).
RESIDUAL_MODES = ("cumulative", "once")


# Adapted from the time embedding of diffusers' UNetSpatioTemporalConditionModel.forward (diffusers 0.42).
def svd_time_embedding(model, sample: torch.Tensor, timestep, added_time_ids: torch.Tensor) -> torch.Tensor:
    """SVD's conditioning vector: timestep embedding + embedding of the added time ids.

    Works for any module with SVD's ``time_proj``, ``time_embedding``, ``add_time_proj`` and
    ``add_embedding`` (the UNet and the DragAnything ControlNet).

    Args:
        model: the module holding the embedding layers.
        sample: ``(B, N, C, h, w)``; gives batch size, device and dtype.
        timestep: scalar or ``(B,)``: EDM's ``c_noise = 0.25·ln σ`` (docs/design.md §5).
        added_time_ids: ``(B, 3)``: ``(fps − 1, motion_bucket_id, noise_aug_strength)``.

    Returns:
        ``(B, 4·C0)`` in ``sample``'s dtype.
    """
    batch_size = sample.shape[0]
    timesteps = torch.as_tensor(timestep, device=sample.device)
    if timesteps.ndim == 0:
        timesteps = timesteps[None]
    timesteps = timesteps.expand(batch_size)
    emb = model.time_embedding(model.time_proj(timesteps).to(sample.dtype))
    time_embeds = model.add_time_proj(added_time_ids.flatten()).reshape(batch_size, -1).to(emb.dtype)
    return emb + model.add_embedding(time_embeds)


class UNetSpatioTemporalControlNetConditionModel(UNetSpatioTemporalConditionModel):
    """diffusers' ``UNetSpatioTemporalConditionModel`` plus ControlNet residual inputs.

    Same modules, state-dict keys and configuration as SVD's UNet, with one more
    configuration entry:

    Args:
        controlnet_residuals: how ``down_block_additional_residuals`` are added.
            ``"cumulative"`` (default) reproduces DragAnything's released UNet, whose
            residual addition runs after *every* down block over all skip connections
            gathered so far: skip ``j`` of down block ``b`` (the ``conv_in`` output counts
            as block 0) receives its residual ``n_blocks − b`` times (SVD: 4,4,4,4,3,3,3,2,2,2,1,1).
            The released ControlNet was trained that way, so its weights need it.
            ``"once"`` adds each residual once, as diffusers' image ControlNets do.
        (all other arguments: those of ``UNetSpatioTemporalConditionModel``.)

    Raises:
        ValueError: unknown ``controlnet_residuals``.
    """

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
        controlnet_residuals: str = "cumulative",
    ) -> None:
        if controlnet_residuals not in RESIDUAL_MODES:
            raise ValueError(f"controlnet_residuals must be one of {RESIDUAL_MODES}, got {controlnet_residuals!r}")
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            addition_time_embed_dim=addition_time_embed_dim,
            projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
            layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            num_attention_heads=num_attention_heads,
            num_frames=num_frames,
        )

    @property
    def num_skip_connections(self) -> int:
        """Number of skip connections = length of ``down_block_additional_residuals``."""
        return 1 + sum(len(b.resnets) + (1 if b.downsamplers is not None else 0) for b in self.down_blocks)

    # Adapted from diffusers.models.unets.unet_spatio_temporal_condition.UNetSpatioTemporalConditionModel.forward
    # (diffusers 0.42), with the ControlNet residuals added to the skips and the mid block's output.
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNetSpatioTemporalConditionOutput | tuple:
        """Denoiser output for ``sample`` with optional ControlNet residuals.

        Args:
            sample: ``(B, N, in_channels, h, w)``: scaled noisy latents ⊕ first-frame latent.
            timestep: EDM ``c_noise`` (scalar or ``(B,)``).
            encoder_hidden_states: ``(B, 1, cross_attention_dim)`` CLIP image embedding.
            added_time_ids: ``(B, 3)`` (fps − 1, motion bucket, noise augmentation).
            down_block_additional_residuals: one tensor per skip connection
                (:attr:`num_skip_connections`), each ``(B·N, C_j, h_j, w_j)`` like the skip.
            mid_block_additional_residual: ``(B·N, C_mid, h_mid, w_mid)``.
            return_dict: return ``UNetSpatioTemporalConditionOutput`` or a tuple.

        Returns:
            ``sample`` ``(B, N, out_channels, h, w)``: the raw network output ``F``.

        Raises:
            ValueError: wrong number of residuals.
        """
        batch_size, num_frames = sample.shape[:2]
        if down_block_additional_residuals is not None:
            down_block_additional_residuals = tuple(down_block_additional_residuals)
            if len(down_block_additional_residuals) != self.num_skip_connections:
                raise ValueError(
                    f"expected {self.num_skip_connections} down-block residuals, got {len(down_block_additional_residuals)}"
                )
        up_factor = 2**self.num_upsamplers
        forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])

        emb = svd_time_embedding(self, sample, timestep, added_time_ids)
        sample = sample.flatten(0, 1)
        emb = emb.repeat_interleave(num_frames, dim=0)
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(num_frames, dim=0)
        image_only_indicator = torch.zeros(batch_size, num_frames, dtype=sample.dtype, device=sample.device)

        sample = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        cumulative = self.config.controlnet_residuals == "cumulative"
        for block in self.down_blocks:
            kwargs = dict(hidden_states=sample, temb=emb, image_only_indicator=image_only_indicator)
            if getattr(block, "has_cross_attention", False):
                kwargs["encoder_hidden_states"] = encoder_hidden_states
            sample, res = block(**kwargs)
            skips = skips + tuple(res)
            if cumulative and down_block_additional_residuals is not None:
                skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals))
        if not cumulative and down_block_additional_residuals is not None:
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals))

        sample = self.mid_block(
            hidden_states=sample,
            temb=emb,
            encoder_hidden_states=encoder_hidden_states,
            image_only_indicator=image_only_indicator,
        )
        if mid_block_additional_residual is not None:
            sample = sample + mid_block_additional_residual

        upsample_size = None
        for i, block in enumerate(self.up_blocks):
            res = skips[-len(block.resnets) :]
            skips = skips[: -len(block.resnets)]
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            kwargs = dict(
                hidden_states=sample,
                temb=emb,
                res_hidden_states_tuple=res,
                upsample_size=upsample_size,
                image_only_indicator=image_only_indicator,
            )
            if getattr(block, "has_cross_attention", False):
                kwargs["encoder_hidden_states"] = encoder_hidden_states
            sample = block(**kwargs)

        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        sample = sample.reshape(batch_size, num_frames, *sample.shape[1:])
        if not return_dict:
            return (sample,)
        return UNetSpatioTemporalConditionOutput(sample=sample)
