"""An image VAE with ``AutoencoderKL``'s encoder and a tiny, fast decoder in the same latent space (docs/design.md §5).

The embedded default model decodes 14 frames per video; on a CPU its ``AutoencoderKL``
decoder costs more than the few-step UNet. This model keeps the KL encoder *unchanged*
(weights copied, so the UNet's conditioning latent is exactly the one it was trained on)
and decodes with diffusers' ``DecoderTiny`` (TAESD's decoder, Bohan 2023: 3×3 convolutions
and ReLUs, no group norms or attention; channels-last friendly), trained by
:func:`puppet_master.training.tiny_vae.distil_tiny_vae` to reproduce the KL decoder's output.
It is the diffusers analogue of ``AutoencoderKLTemporalDecoder`` (same encoder, another
decoder): ``encode`` returns the same ``AutoencoderKLOutput``, ``decode`` a ``DecoderOutput``.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, DecoderTiny, DiagonalGaussianDistribution, Encoder
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class AutoencoderKLTinyDecoder(ModelMixin, ConfigMixin):
    """``AutoencoderKL``'s encoder (posterior ``N(μ, σ²)``) with a ``DecoderTiny``.

    Shapes: ``encode`` takes ``(B, in_channels, H, W)`` in [−1, 1] (any float dtype) and
    returns a posterior over ``(B, latent_channels, H/f, W/f)`` *unscaled* latents, f =
    ``2 ** (len(block_out_channels) − 1)``; ``decode`` takes such latents and returns
    ``(B, out_channels, H, W)`` in about [−1, 1]. ``scaling_factor`` is the teacher's:
    the diffusion model sees ``latents × scaling_factor``.

    Args:
        in_channels, out_channels, down_block_types, block_out_channels, layers_per_block,
        act_fn, latent_channels, norm_num_groups, mid_block_add_attention, use_quant_conv:
            the encoder's, as ``AutoencoderKL``'s.
        decoder_block_out_channels, num_decoder_blocks, decoder_act_fn, upsample_fn: the
            tiny decoder's, as ``AutoencoderTiny``'s (one entry per level, as many levels as
            the encoder).
        scaling_factor: the latent scaling factor of the diffusion model that uses it.
        force_upcast: as diffusers' VAEs (False: runs in any dtype).

    Raises:
        ValueError: decoder lists whose length is not the encoder's number of levels.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4,
        block_out_channels: tuple[int, ...] = (32, 64, 128, 128),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 8,
        mid_block_add_attention: bool = True,
        use_quant_conv: bool = True,
        decoder_block_out_channels: tuple[int, ...] = (32, 32, 32, 32),
        num_decoder_blocks: tuple[int, ...] = (3, 3, 3, 1),
        decoder_act_fn: str = "relu",
        upsample_fn: str = "nearest",
        scaling_factor: float = 0.18215,
        force_upcast: bool = False,
    ) -> None:
        super().__init__()
        levels = len(block_out_channels)
        if len(decoder_block_out_channels) != levels or len(num_decoder_blocks) != levels:
            raise ValueError(f"the decoder needs {levels} levels like the encoder, got decoder_block_out_channels="
                             f"{list(decoder_block_out_channels)}, num_decoder_blocks={list(num_decoder_blocks)}")
        self.encoder = Encoder(in_channels=in_channels, out_channels=latent_channels, down_block_types=down_block_types,
                               block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                               norm_num_groups=norm_num_groups, act_fn=act_fn, double_z=True,
                               mid_block_add_attention=mid_block_add_attention)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.decoder = DecoderTiny(in_channels=latent_channels, out_channels=out_channels, num_blocks=num_decoder_blocks,
                                   block_out_channels=decoder_block_out_channels, upsampling_scaling_factor=2,
                                   act_fn=decoder_act_fn, upsample_fn=upsample_fn)

    @classmethod
    def from_autoencoder_kl(cls, vae: AutoencoderKL, decoder_block_out_channels: tuple[int, ...] | None = None,
                            num_decoder_blocks: tuple[int, ...] | None = None) -> "AutoencoderKLTinyDecoder":
        """A model with ``vae``'s encoder (weights copied) and a randomly initialised tiny decoder.

        Defaults: 32 channels and blocks (3, …, 3, 1) per level (TAESD's layout, narrower).
        """
        c = vae.config
        levels = len(c.block_out_channels)
        model = cls(in_channels=c.in_channels, out_channels=c.out_channels, down_block_types=tuple(c.down_block_types),
                    block_out_channels=tuple(c.block_out_channels), layers_per_block=c.layers_per_block,
                    act_fn=c.act_fn, latent_channels=c.latent_channels, norm_num_groups=c.norm_num_groups,
                    mid_block_add_attention=c.mid_block_add_attention, use_quant_conv=vae.quant_conv is not None,
                    decoder_block_out_channels=tuple(decoder_block_out_channels or (32,) * levels),
                    num_decoder_blocks=tuple(num_decoder_blocks or (3,) * (levels - 1) + (1,)),
                    scaling_factor=c.scaling_factor)
        model.encoder.load_state_dict(vae.encoder.state_dict())
        if vae.quant_conv is not None:
            model.quant_conv.load_state_dict(vae.quant_conv.state_dict())
        return model.to(next(vae.parameters()).dtype)

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """The posterior of ``x`` ``(B, 3, H, W)`` in [−1, 1], as ``AutoencoderKL.encode``."""
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None) -> DecoderOutput | tuple:
        """Pictures ``(B, 3, H, W)`` in about [−1, 1] from unscaled latents ``(B, C, H/f, W/f)``."""
        sample = self.decoder(z)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None) -> DecoderOutput | tuple:
        """Encode then decode (the posterior mean unless ``sample_posterior``)."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)
