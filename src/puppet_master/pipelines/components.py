"""Builders for the pipeline's components: SVD's published configurations and tiny copies.

Real weights cannot be downloaded on every machine, so tests and benchmarks build the
same classes with random weights: ``"full"`` has SVD-img2vid's published sizes
(docs/design.md §5), ``"tiny"`` is small enough to run a whole pipeline on a laptop CPU in
seconds.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
)
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from ..errors import ModelLoadError
from ..models import UNetDragSpatioTemporalConditionModel

#: SVD-img2vid's scheduler configuration (docs/design.md §5).
SVD_SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    interpolation_type="linear",
    use_karras_sigmas=True,
    sigma_min=0.002,
    sigma_max=700.0,
    timestep_spacing="leading",
    timestep_type="continuous",
    steps_offset=1,
)

#: Sizes of the components with random weights built by :func:`build_components`.
SIZES: dict[str, dict[str, Any]] = {
    "full": dict(
        vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2),
        clip=dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120,
                  image_size=224, patch_size=14, projection_dim=1024),
        unet=dict(),
    ),
    "tiny": dict(
        vae=dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1),
        clip=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  image_size=32, patch_size=8, projection_dim=32),
        unet=dict(
            block_out_channels=(32, 64, 64, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            num_attention_heads=(1, 2, 2, 2),
            pos_embed_dim=16,
            drag_embedder_out_channels=(16, 32, 32),
        ),
    ),
    # the embedded default model (``assets/default-model``): an image VAE with 8x down-sampling to
    # 4 channels (256x256 -> 32x32x4, SVD's latent shape; the earlier 16x / 8-channel VAE blurred
    # objects too much for the flow error, recipes/default-model/README.md), no image encoder, and a drag
    # UNet sized to run 14 frames at 256x256 in under a minute on 2 CPU cores
    "small": dict(
        vae=dict(kind="image", block_out_channels=(32, 64, 128, 128), layers_per_block=1, latent_channels=4),
        clip=None,
        unet=dict(
            in_channels=8,
            out_channels=4,
            block_out_channels=(32, 64, 64, 64),
            layers_per_block=1,
            cross_attention_dim=64,
            num_attention_heads=(1, 2, 2, 2),
            pos_embed_dim=16,
            drag_embedder_out_channels=(16, 32, 32),
        ),
    ),
}


def make_scheduler() -> EulerDiscreteScheduler:
    """SVD's ``EulerDiscreteScheduler`` (EDM, Karras σ, v-prediction, continuous timesteps).

    Always built on the CPU, also inside a ``with torch.device(...)`` context: the
    scheduler keeps its tables (``alphas_cumprod``, ``sigmas``) on the host and moves only
    the timesteps to the device in ``set_timesteps``.
    """
    with torch.device("cpu"):
        return EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG)


def make_vae(block_out_channels=(128, 256, 512, 512), layers_per_block: int = 2) -> AutoencoderKLTemporalDecoder:
    """SVD's temporal-decoder VAE (3 → 4 latent channels, 8× down, scaling 0.18215)."""
    return AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=4,
        scaling_factor=0.18215,
    )


def make_image_vae(block_out_channels=(32, 64, 128, 128), layers_per_block: int = 1, latent_channels: int = 4,
                   scaling_factor: float = 1.0):
    """A ``diffusers.AutoencoderKL`` with ``f = 2**(len(block_out_channels)-1)``× down-sampling.

    Images ``(B, 3, H, W)`` in [−1, 1] (H, W multiples of f) encode to latents
    ``(B, latent_channels, H/f, W/f)``; ``scaling_factor`` multiplies latents before the
    UNet (set to 1/std by :func:`train_vae`).
    """
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        # >= 4 channels per GroupNorm group (SD: 128 / 32): one channel per group normalises away each
        # channel's mean over the image, i.e. the colour of flat regions (measured: grey reconstructions)
        norm_num_groups=max(1, min(32, min(block_out_channels) // 4)),
        scaling_factor=scaling_factor,
        sample_size=256,
    )


def make_image_encoder(**clip_kwargs):
    """``CLIPVisionModelWithProjection`` and its ``CLIPImageProcessor`` (SVD uses ViT-H/14)."""
    config = CLIPVisionConfig(**clip_kwargs)
    encoder = CLIPVisionModelWithProjection(config)
    size = config.image_size
    processor = CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return encoder, processor


def build_components(size: str = "tiny", seed: int = 0, with_image_encoder: bool = True, vae=None,
                     **unet_overrides) -> dict:
    """Random-weight components for :class:`~puppet_master.pipelines.PuppetMasterPipeline`.

    Args:
        size: ``"tiny"`` (seconds on CPU), ``"small"`` (the embedded default model's
            architecture: 8x image VAE with 4 latent channels as in SD/SVD, no image encoder) or
            ``"full"`` (SVD-img2vid's sizes, 1.68 B UNet parameters; build it on a GPU or
            the ``meta`` device).
        seed: seed of the random weights.
        with_image_encoder: include a CLIP image encoder (else the UNet sees zero
            image embeddings); ignored for sizes without one.
        vae: a (trained) VAE to use instead of a random one; the UNet's latent channels
            follow its ``latent_channels``.
        **unet_overrides: constructor arguments of the UNet to change.

    Returns:
        dict with ``vae``, ``image_encoder``, ``feature_extractor``, ``unet``, ``scheduler``.

    Raises:
        ValueError: unknown ``size``.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    spec = SIZES[size]
    torch.manual_seed(seed)
    if vae is None:
        vae_spec = dict(spec["vae"])
        if vae_spec.pop("kind", "temporal") == "image":
            vae = make_image_vae(**vae_spec)
        else:
            vae = make_vae(**vae_spec)
    encoder = processor = None
    unet_kwargs = dict(spec["unet"])
    latent_channels = vae.config.latent_channels
    unet_kwargs.update(in_channels=2 * latent_channels, out_channels=latent_channels)
    if with_image_encoder and spec["clip"] is not None:
        encoder, processor = make_image_encoder(**spec["clip"])
        unet_kwargs.setdefault("cross_attention_dim", spec["clip"]["projection_dim"])
    unet_kwargs.update(unet_overrides)
    unet = UNetDragSpatioTemporalConditionModel(**unet_kwargs)
    return dict(vae=vae, image_encoder=encoder, feature_extractor=processor, unet=unet, scheduler=make_scheduler())


def load_svd_components(svd, torch_dtype: torch.dtype | None = None) -> dict:
    """VAE, CLIP image encoder, feature extractor and scheduler of a Stable Video Diffusion img2vid folder.

    Args:
        svd: folder or hub id of ``stabilityai/stable-video-diffusion-img2vid`` (or -xt), with
            its usual subfolders.
        torch_dtype: dtype of the VAE and the image encoder (``None``: as stored).

    Returns:
        dict with ``vae``, ``image_encoder``, ``feature_extractor`` and ``scheduler``.

    Raises:
        ModelLoadError: a missing folder or subfolder.
    """
    try:
        return dict(
            vae=AutoencoderKLTemporalDecoder.from_pretrained(svd, subfolder="vae", torch_dtype=torch_dtype),
            image_encoder=CLIPVisionModelWithProjection.from_pretrained(svd, subfolder="image_encoder", dtype=torch_dtype),
            feature_extractor=CLIPImageProcessor.from_pretrained(svd, subfolder="feature_extractor"),
            scheduler=EulerDiscreteScheduler.from_pretrained(svd, subfolder="scheduler"),
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load Stable Video Diffusion components from {str(svd)!r}: {exc}") from exc
