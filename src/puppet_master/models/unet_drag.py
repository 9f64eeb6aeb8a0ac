"""The drag-conditioned spatio-temporal UNet of Puppet-Master (paper §3, App. C; docs/design.md §4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_3d_blocks import UNetMidBlockSpatioTemporal, get_down_block, get_up_block
from diffusers.utils import BaseOutput

from .attention import AllToFirstAttnProcessor
from .blocks import (
    CrossAttnDownBlockSpatioTemporalWithDrags,
    CrossAttnUpBlockSpatioTemporalWithDrags,
    _DragConditionedLayers,
)
from ..drags.warp import DEFAULT_WARP, WarpSettings, warp_latents_by_drags
from .drag_modules import DragConditioning
from .fast_layers import install_fast_layers

_DRAG_DOWN = "CrossAttnDownBlockSpatioTemporal"
_DRAG_UP = "CrossAttnUpBlockSpatioTemporal"


@dataclass
class UNetDragSpatioTemporalConditionOutput(BaseOutput):
    """Output of :class:`UNetDragSpatioTemporalConditionModel`.

    Attributes:
        sample: ``(B, N, out_channels, h, w)``: the raw network output ``F`` (before the
            EDM combination ``c_skip·x + c_out·F``).
    """

    sample: torch.Tensor


# Adapted from diffusers.models.unets.unet_spatio_temporal_condition.UNetSpatioTemporalConditionModel
# (diffusers 0.42): the same layers and state-dict keys, without the added-time embedding, with drag blocks.
class UNetDragSpatioTemporalConditionModel(ModelMixin, AttentionMixin, ConfigMixin):
    """SVD's spatio-temporal UNet with Puppet-Master's drag conditioning.

    Differences from diffusers' ``UNetSpatioTemporalConditionModel`` (docs/design.md §4):

    * input is 8 channels: the noisy latent (4) ⊕ the first frame's clean VAE latent (4,
      the posterior mean, unscaled), repeated over frames;
    * no added-time embedding (fps / motion bucket / noise-augmentation ids are gone);
    * drag modulation (``flow_convs``) and drag tokens (``drag_token_mlps``) in every
      cross-attention down/up block (paper §3.2);
    * all-to-first spatial self-attention (paper eq. 5) in every spatial transformer.

    State-dict keys equal those of the authors' release for the default configuration,
    so their ``model.safetensors`` loads with ``strict=True``.

    Args:
        sample_size: unused, kept for config compatibility.
        in_channels, out_channels: 8 and 4 for SVD's VAE.
        down_block_types, up_block_types: SVD's block types; the cross-attention ones
            get the drag layers.
        block_out_channels, layers_per_block, cross_attention_dim,
        transformer_layers_per_block, num_attention_heads: SVD's sizes.
        addition_time_embed_dim, projection_class_embeddings_input_dim: accepted and
            ignored (the reference constructor takes them; nothing is built from them).
        num_frames: default frame count (the model works for any count).
        num_drags: ``K_max`` drag slots.
        cond_dropout_prob: unused; kept so that configurations of earlier versions and
            of the authors' release load. Classifier-free-guidance dropout of the drags
            happens in one place, the trainer (``TrainConfig.cond_dropout_prob``,
            docs/design.md §5); the forward never drops drags at random.
        pos_embed_dim: width of the sin-cos positional embedding of drag tokens.
        drag_token_cross_attn: drag tokens on/off (ablation, paper Table 2).
        use_modulate: ``True`` scale+shift modulation, ``False`` shift only (ablation).
        drag_embedder_out_channels: widths of the modulation nets.
        drag_modulation: modulation nets on/off (ablation; ``False`` builds none).
        all_to_first_attention: all-to-first spatial attention on/off (ablation).
        drag_warp_image_latents: not in the paper (off by default, so the released
            weights load unchanged). When on, frame ``n`` gets the first-frame latent
            warped along the drags to frame ``n``
            (:func:`~puppet_master.drags.warp.warp_latents_by_drags`) instead of the same
            first-frame latent on every frame: a dense local motion cue that lets a small
            UNet trained from scratch follow drags (the embedded default model uses it;
            recipes/default-model/README.md). Videos whose drags are dropped (CFG) get
            the plain first-frame latent.
        drag_warp_radius: Gaussian radius of a drag's influence on the warp, in latent cells
            (default :class:`~puppet_master.drags.warp.WarpSettings`'s).
        drag_warp_background: weight of "no motion" in the warp (smaller = fuller displacement).

    Raises:
        ValueError: inconsistent block configuration.
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["time_proj"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 8,
        out_channels: int = 4,
        down_block_types: Sequence[str] = (_DRAG_DOWN, _DRAG_DOWN, _DRAG_DOWN, "DownBlockSpatioTemporal"),
        up_block_types: Sequence[str] = ("UpBlockSpatioTemporal", _DRAG_UP, _DRAG_UP, _DRAG_UP),
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 768,
        layers_per_block: int | Sequence[int] = 2,
        cross_attention_dim: int | Sequence[int] = 1024,
        transformer_layers_per_block: int | Sequence[int] = 1,
        num_attention_heads: int | Sequence[int] = (5, 10, 20, 20),
        num_frames: int = 14,
        num_drags: int = 5,
        cond_dropout_prob: float = 0.1,
        pos_embed_dim: int = 64,
        drag_token_cross_attn: bool = True,
        use_modulate: bool = True,
        drag_embedder_out_channels: Sequence[int] = (256, 320, 320),
        drag_modulation: bool = True,
        all_to_first_attention: bool = True,
        drag_warp_image_latents: bool = False,
        drag_warp_radius: float = DEFAULT_WARP.radius,
        drag_warp_background: float = DEFAULT_WARP.background,
    ) -> None:
        super().__init__()
        n_blocks = len(down_block_types)
        if len(up_block_types) != n_blocks:
            raise ValueError(f"need as many up_block_types as down_block_types, got {up_block_types} / {down_block_types}")
        if len(block_out_channels) != n_blocks:
            raise ValueError(f"need one block_out_channels entry per down block, got {block_out_channels}")
        if not 0.0 <= cond_dropout_prob <= 1.0:
            raise ValueError(f"cond_dropout_prob must be in [0, 1], got {cond_dropout_prob}")
        heads = (num_attention_heads,) * n_blocks if isinstance(num_attention_heads, int) else tuple(num_attention_heads)
        xdims = (cross_attention_dim,) * n_blocks if isinstance(cross_attention_dim, int) else tuple(cross_attention_dim)
        layers = [layers_per_block] * n_blocks if isinstance(layers_per_block, int) else list(layers_per_block)
        tlayers = (
            [transformer_layers_per_block] * n_blocks
            if isinstance(transformer_layers_per_block, int)
            else list(transformer_layers_per_block)
        )
        for name, seq in (("num_attention_heads", heads), ("cross_attention_dim", xdims), ("layers_per_block", layers)):
            if len(seq) != n_blocks:
                raise ValueError(f"{name} must have one entry per block ({n_blocks}), got {seq}")

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        time_embed_dim = block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim)

        drag_kwargs = dict(
            num_drags=num_drags,
            pos_embed_dim=pos_embed_dim,
            drag_token_cross_attn=drag_token_cross_attn,
            use_modulate=use_modulate,
            drag_modulation=drag_modulation,
            drag_embedder_out_channels=tuple(drag_embedder_out_channels),
        )
        # both lists registered before the mid block: parameter order as in the release
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            is_final = i == n_blocks - 1
            if block_type == _DRAG_DOWN:
                block = CrossAttnDownBlockSpatioTemporalWithDrags(
                    in_channels=input_channel,
                    out_channels=output_channel,
                    temb_channels=time_embed_dim,
                    num_layers=layers[i],
                    transformer_layers_per_block=tlayers[i],
                    num_attention_heads=heads[i],
                    cross_attention_dim=xdims[i],
                    add_downsample=not is_final,
                    **drag_kwargs,
                )
            else:
                block = get_down_block(
                    block_type,
                    num_layers=layers[i],
                    in_channels=input_channel,
                    out_channels=output_channel,
                    temb_channels=time_embed_dim,
                    add_downsample=not is_final,
                    resnet_eps=1e-5,
                    resnet_act_fn="silu",
                    num_attention_heads=heads[i],
                    cross_attention_dim=xdims[i],
                    transformer_layers_per_block=tlayers[i],
                )
            self.down_blocks.append(block)

        self.mid_block = UNetMidBlockSpatioTemporal(
            block_out_channels[-1],
            temb_channels=time_embed_dim,
            transformer_layers_per_block=tlayers[-1],
            cross_attention_dim=xdims[-1],
            num_attention_heads=heads[-1],
        )

        rev_channels = list(reversed(block_out_channels))
        rev_heads, rev_layers = list(reversed(heads)), list(reversed(layers))
        rev_xdims, rev_tlayers = list(reversed(xdims)), list(reversed(tlayers))
        output_channel = rev_channels[0]
        for i, block_type in enumerate(up_block_types):
            is_final = i == n_blocks - 1
            prev_output_channel, output_channel = output_channel, rev_channels[i]
            input_channel = rev_channels[min(i + 1, n_blocks - 1)]
            if block_type == _DRAG_UP:
                block = CrossAttnUpBlockSpatioTemporalWithDrags(
                    in_channels=input_channel,
                    out_channels=output_channel,
                    prev_output_channel=prev_output_channel,
                    temb_channels=time_embed_dim,
                    resolution_idx=i,
                    num_layers=rev_layers[i] + 1,
                    transformer_layers_per_block=rev_tlayers[i],
                    resnet_eps=1e-5,
                    num_attention_heads=rev_heads[i],
                    cross_attention_dim=rev_xdims[i],
                    add_upsample=not is_final,
                    **drag_kwargs,
                )
            else:
                block = get_up_block(
                    block_type,
                    num_layers=rev_layers[i] + 1,
                    in_channels=input_channel,
                    out_channels=output_channel,
                    prev_output_channel=prev_output_channel,
                    temb_channels=time_embed_dim,
                    add_upsample=not is_final,
                    resnet_eps=1e-5,
                    resolution_idx=i,
                    resnet_act_fn="silu",
                    num_attention_heads=rev_heads[i],
                    cross_attention_dim=rev_xdims[i],
                    transformer_layers_per_block=rev_tlayers[i],
                )
            self.up_blocks.append(block)

        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=32, eps=1e-5)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

        self._has_drag_layers = any(isinstance(b, _DragConditionedLayers) for b in [*self.down_blocks, *self.up_blocks])
        for name, block in self.named_children():
            if isinstance(block, nn.ModuleList):
                for i, sub in enumerate(block):
                    if isinstance(sub, _DragConditionedLayers):
                        sub.drag_key = f"{name}.{i}"
        self._all_to_first: list[AllToFirstAttnProcessor] = []
        self.set_all_to_first_attention(all_to_first_attention)
        # leaner forwards of three diffusers layers (same weights and keys; models/fast_layers.py)
        install_fast_layers(self)
        # Works around a diffusers internal (CONTRIBUTING.md, "Upgrading diffusers"): diffusers 0.42 creates
        # AlphaBlender.mix_factor with torch.Tensor([...]), which ignores a `with torch.device(...)` context,
        # so it is moved where every other parameter was built
        device = self.conv_in.weight.device
        for module in self.modules():
            for store in (module._parameters, module._buffers):
                mix = store.get("mix_factor")
                if mix is not None and mix.device != device:
                    moved = mix.detach().to(device)
                    store["mix_factor"] = nn.Parameter(moved, mix.requires_grad) if isinstance(mix, nn.Parameter) else moved

    # ------------------------------------------------------------------ attention
    def spatial_self_attention_names(self) -> list[str]:
        """Processor names of the spatial self-attentions (``…transformer_blocks.{i}.attn1``)."""
        return [
            f"{name}.processor"
            for name, module in self.named_modules()
            if name.endswith(".attn1") and ".transformer_blocks." in name and "temporal_transformer_blocks" not in name
        ]

    def set_all_to_first_attention(self, enabled: bool = True) -> None:
        """Switch all-to-first attention on (default) or off in every spatial self-attention.

        Off gives diffusers' standard scaled-dot-product self-attention (ablation).
        Other attention layers always use diffusers' ``AttnProcessor2_0``.
        """
        names = set(self.spatial_self_attention_names())
        processors = {}
        self._all_to_first = []
        for name in self.attn_processors:
            if enabled and name in names:
                proc = AllToFirstAttnProcessor(self.config.num_frames)
                self._all_to_first.append(proc)
                processors[name] = proc
            else:
                processors[name] = AttnProcessor2_0()
        self.set_attn_processor(processors)

    def set_default_attn_processor(self) -> None:
        """Restore the model's own processors (all-to-first as configured)."""
        self.set_all_to_first_attention(self.config.all_to_first_attention)

    # ------------------------------------------------------------------ drags
    def drag_block_resolutions(self, height: int, width: int) -> dict[str, tuple[int, int]]:
        """``{block key: (h, w)}`` of every drag block, for a latent of ``height × width``.

        Up block ``i`` runs at the resolution of down block ``n − 1 − i``.
        """
        sizes = []
        h, w = height, width
        for block in self.down_blocks:
            sizes.append((h, w))
            if getattr(block, "downsamplers", None) is not None:
                h, w = (h + 1) // 2, (w + 1) // 2
        out = {}
        for i, block in enumerate(self.down_blocks):
            if isinstance(block, _DragConditionedLayers):
                out[block.drag_key] = sizes[i]
        for i, block in enumerate(self.up_blocks):
            if isinstance(block, _DragConditionedLayers):
                out[block.drag_key] = sizes[len(sizes) - 1 - i]
        return out

    def drag_block_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Distinct spatial sizes ``(h, w)`` at which drag blocks run, for a latent of ``height × width``."""
        return list(dict.fromkeys(self.drag_block_resolutions(height, width).values()))

    def prepare_drag_conditioning(
        self,
        drags: torch.Tensor,
        height: int,
        width: int,
        image_latents: torch.Tensor | None = None,
        precompute_modulation: bool = False,
    ) -> DragConditioning:
        """Derive everything that depends only on the drags, once per sampling call (docs/design.md §3).

        Pass the result as ``drag_conditioning`` to every :meth:`forward` of a sampling
        loop: the forward then only applies it (no host round-trip, CUDA-graph safe).

        Args:
            drags: ``(B, N, num_drags, 4)`` normalised (docs/design.md §2), any float dtype;
                give float32 to a half-precision model (positions are computed in float32 and
                the results cast to the model's dtype).
            height, width: latent size.
            image_latents: ``(B, C, h, w)`` first-frame latents of the same call; with
                ``drag_warp_image_latents`` their warp along the drags is computed here
                (the forward must then get the same ``image_latents``).
            precompute_modulation: also run the modulation nets (paper eq. 4) now, under
                ``torch.no_grad``: they depend only on the drags and the weights, so a
                sampling loop with fixed weights needs them once, not at every step. Do
                not use it for training, or after changing the weights.

        Raises:
            ValueError: bad shape, or ``K`` differs from ``config.num_drags``.
        """
        if drags.ndim != 4 or drags.shape[-1] != 4:
            raise ValueError(f"drags must have shape (B, N, K, 4), got {tuple(drags.shape)}")
        if drags.shape[2] != self.config.num_drags:
            raise ValueError(f"drags have {drags.shape[2]} slots but the model takes num_drags={self.config.num_drags}")
        resolutions = self.drag_block_resolutions(height, width)
        warp = image_latents is not None and self.config.drag_warp_image_latents
        cond = DragConditioning.prepare(
            drags,
            list(resolutions.values()),
            pos_embed_dim=self.config.pos_embed_dim if self.config.drag_token_cross_attn else None,
            image_latents=image_latents if warp else None,
            warp=self.warp_settings if warp else DEFAULT_WARP,
            dtype=self.dtype,
        )
        if precompute_modulation and self.config.drag_modulation:
            with torch.no_grad():
                for block in [*self.down_blocks, *self.up_blocks]:
                    if isinstance(block, _DragConditionedLayers) and block.drag_modulation:
                        encoding = cond.encoding(*resolutions[block.drag_key]).to(self.dtype)
                        cond.modulation[block.drag_key] = [
                            block.modulation(j, encoding) for j in range(len(block.flow_convs))
                        ]
        return cond

    @property
    def warp_settings(self) -> WarpSettings:
        """The drag warp's settings of this model (``drag_warp_radius``, ``drag_warp_background``)."""
        return WarpSettings.from_config(self.config)

    @property
    def spatial_stride(self) -> int:
        """Factor by which the UNet downsamples; latent sizes must be multiples of it."""
        return 2 ** sum(getattr(b, "downsamplers", None) is not None for b in self.down_blocks)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        image_latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor | None = None,
        drags: torch.Tensor | None = None,
        force_drop_ids: torch.Tensor | None = None,
        drag_conditioning: DragConditioning | None = None,
        return_dict: bool = True,
    ) -> UNetDragSpatioTemporalConditionOutput | tuple[torch.Tensor]:
        """Predict ``F`` for noisy video latents.

        Args:
            sample: ``(B, N, 4, h, w)`` EDM-scaled noisy latents ``c_in·(x + σε)``;
                ``h, w`` multiples of :attr:`spatial_stride`.
            timestep: ``(B,)``, scalar tensor or number: the noise conditioning
                ``c_noise = 0.25·ln σ`` (docs/design.md §5).
            image_latents: ``(B, 4, h, w)`` clean first-frame latent (VAE mean, unscaled).
            encoder_hidden_states: ``(B, T, cross_attention_dim)`` image tokens (T = 1
                for SVD's CLIP embedding).
            added_time_ids: accepted and ignored (SVD's added-time ids are not used).
            drags: ``(B, N, num_drags, 4)`` normalised (docs/design.md §2), any float dtype;
                ``None`` = no drags. Positions are computed in float32 whatever the model's
                precision (give float32 drags to a half-precision model: a bf16 coordinate
                can land in the neighbouring latent cell).
            force_drop_ids: optional ``(B,)``; videos with value 1 get their drags
                zeroed (deterministic; the forward has no random dropout).
            drag_conditioning: precomputed :meth:`prepare_drag_conditioning` (then
                ``drags`` and ``force_drop_ids`` are ignored).
            return_dict: return an output object (default) or a tuple.

        Returns:
            :class:`UNetDragSpatioTemporalConditionOutput` with ``sample (B, N, out, h, w)``.

        Raises:
            ValueError: on inconsistent shapes.
        """
        if sample.ndim != 5:
            raise ValueError(f"sample must be (B, N, C, h, w), got {tuple(sample.shape)}")
        batch_size, num_frames, _, height, width = sample.shape
        stride = self.spatial_stride
        if height % stride or width % stride:
            raise ValueError(f"latent size {height}x{width} must be a multiple of the UNet stride {stride}")
        if image_latents.ndim != 4 or image_latents.shape[0] != batch_size or image_latents.shape[-2:] != (height, width):
            raise ValueError(f"image_latents must be (B, C, h, w) matching sample, got {tuple(image_latents.shape)}")

        cond = None
        if self._has_drag_layers and (self.config.drag_modulation or self.config.drag_token_cross_attn):
            if drag_conditioning is None:
                if drags is None:
                    drags = sample.new_zeros(batch_size, num_frames, self.config.num_drags, 4, dtype=torch.float32)
                drags = drags.float()  # positions in float32; prepare_drag_conditioning casts what it derives
                if force_drop_ids is not None:
                    keep = (force_drop_ids.to(drags.device) != 1).to(drags.dtype)
                    drags = drags * keep[:, None, None, None]
                cond = self.prepare_drag_conditioning(drags, height, width, image_latents=image_latents)
            else:
                cond = drag_conditioning
            if cond.drags.shape[:2] != (batch_size, num_frames):
                raise ValueError(
                    f"drags have batch/frames {tuple(cond.drags.shape[:2])} but sample has {(batch_size, num_frames)}"
                )

        for proc in self._all_to_first:
            proc.num_frames = num_frames

        frame_latents = image_latents[:, None].expand(-1, num_frames, -1, -1, -1)
        if self.config.drag_warp_image_latents:
            warp = self.warp_settings
            if cond is not None and cond.warped_latents is not None:  # computed once per sampling call
                frame_latents = cond.warped_latents
            elif cond is not None:
                frame_latents = warp_latents_by_drags(image_latents, cond.drags, warp.radius, warp.background)
            elif drags is not None:
                frame_latents = warp_latents_by_drags(image_latents, drags.float(), warp.radius, warp.background)
        sample = torch.cat([sample, frame_latents.to(sample.dtype)], dim=2)

        timesteps = timestep
        if not torch.is_tensor(timesteps):  # a Python number: pass a tensor to stay on the device
            timesteps = torch.full((batch_size,), float(timesteps), dtype=torch.float32, device=sample.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(batch_size)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype))

        sample = sample.flatten(0, 1)
        emb = emb.repeat_interleave(num_frames, dim=0)
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(num_frames, dim=0)

        sample = self.conv_in(sample)
        image_only_indicator = torch.zeros(batch_size, num_frames, dtype=sample.dtype, device=sample.device)

        down_block_res_samples = (sample,)
        for block in self.down_blocks:
            if isinstance(block, CrossAttnDownBlockSpatioTemporalWithDrags):
                sample, res_samples = block(
                    hidden_states=sample,
                    temb=emb,
                    encoder_hidden_states=encoder_hidden_states,
                    image_only_indicator=image_only_indicator,
                    drag_conditioning=cond,
                )
            elif getattr(block, "has_cross_attention", False):
                sample, res_samples = block(
                    hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states,
                    image_only_indicator=image_only_indicator,
                )
            else:
                sample, res_samples = block(hidden_states=sample, temb=emb, image_only_indicator=image_only_indicator)
            down_block_res_samples += res_samples

        sample = self.mid_block(
            hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states,
            image_only_indicator=image_only_indicator,
        )

        for block in self.up_blocks:
            res_samples = down_block_res_samples[-len(block.resnets) :]
            down_block_res_samples = down_block_res_samples[: -len(block.resnets)]
            if isinstance(block, CrossAttnUpBlockSpatioTemporalWithDrags):
                sample = block(
                    hidden_states=sample,
                    temb=emb,
                    res_hidden_states_tuple=res_samples,
                    encoder_hidden_states=encoder_hidden_states,
                    image_only_indicator=image_only_indicator,
                    drag_conditioning=cond,
                )
            elif getattr(block, "has_cross_attention", False):
                sample = block(
                    hidden_states=sample, temb=emb, res_hidden_states_tuple=res_samples,
                    encoder_hidden_states=encoder_hidden_states, image_only_indicator=image_only_indicator,
                )
            else:
                sample = block(
                    hidden_states=sample, temb=emb, res_hidden_states_tuple=res_samples,
                    image_only_indicator=image_only_indicator,
                )

        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        sample = sample.reshape(batch_size, num_frames, *sample.shape[1:])
        if not return_dict:
            return (sample,)
        return UNetDragSpatioTemporalConditionOutput(sample=sample)

    # ------------------------------------------------------------------ SVD init
    @classmethod
    def from_svd_unet(
        cls,
        svd_unet: nn.Module,
        num_drags: int = 5,
        **drag_config,
    ) -> "UNetDragSpatioTemporalConditionModel":
        """Build a drag UNet from a pretrained SVD ``UNetSpatioTemporalConditionModel``.

        Copies every shared weight, drops SVD's added-time embedding
        (``add_time_proj`` / ``add_embedding``) and keeps the modulation out-convs at
        zero (docs/design.md §4), so that with all-to-first attention and drag tokens off the
        new model computes what SVD computes with a zero added-time embedding.

        Args:
            svd_unet: diffusers ``UNetSpatioTemporalConditionModel`` (e.g.
                ``UNetSpatioTemporalConditionModel.from_pretrained(svd, subfolder="unet")``).
            num_drags: ``K_max``.
            **drag_config: other drag options of the constructor (``pos_embed_dim``,
                ``drag_token_cross_attn``, ``use_modulate``, ``drag_modulation``,
                ``drag_embedder_out_channels``, ``all_to_first_attention``,
                ``cond_dropout_prob``, ``num_frames``).

        Raises:
            ValueError: if the SVD UNet's weights do not fit (e.g. another architecture).
        """
        src = svd_unet.config
        kwargs = dict(
            in_channels=src.in_channels,
            out_channels=src.out_channels,
            down_block_types=tuple(src.down_block_types),
            up_block_types=tuple(src.up_block_types),
            block_out_channels=tuple(src.block_out_channels),
            layers_per_block=src.layers_per_block,
            cross_attention_dim=src.cross_attention_dim,
            transformer_layers_per_block=src.transformer_layers_per_block,
            num_attention_heads=src.num_attention_heads,
            num_frames=drag_config.pop("num_frames", 14),
            num_drags=num_drags,
        )
        kwargs.update(drag_config)
        model = cls(**kwargs)
        state = {k: v for k, v in svd_unet.state_dict().items() if not k.startswith(("add_embedding.", "add_time_proj."))}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"SVD UNet has weights the drag UNet cannot take: {unexpected[:5]}")
        not_drag = [k for k in missing if ".flow_convs." not in k and ".drag_token_mlps." not in k]
        if not_drag:
            raise ValueError(f"SVD UNet lacks weights the drag UNet needs: {not_drag[:5]}")
        model.zero_init_modulation()
        return model.to(dtype=next(svd_unet.parameters()).dtype)

    def zero_init_modulation(self) -> None:
        """Zero the out-convs of every modulation net (training then starts from the backbone)."""
        for block in list(self.down_blocks) + list(self.up_blocks):
            for emb in getattr(block, "flow_convs", []):
                nn.init.zeros_(emb.conv_out.weight)
                nn.init.zeros_(emb.conv_out.bias)
