"""Random-weight components for :class:`~puppet_master.pipelines.DragAnythingPipeline`.

The released weights (SVD, the DragAnything ControlNet, an SD-1.5 model) cannot be
downloaded on every machine; tests, benchmarks and smoke runs build the same classes at
tiny sizes instead. The ControlNet's zero-initialised output convolutions get small
random weights here, so that the conditions visibly change the (meaningless) videos.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from ..models import (
    DragAnythingControlNetModel,
    UNetSpatioTemporalControlNetConditionModel,
)
from .components import make_image_encoder, make_scheduler, make_vae

#: SD-1.5's DDPM noise schedule (used by DIFT to noise the latents).
SD15_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)

#: Sizes of the tiny random DragAnything (seconds per video on a CPU).
TINY = dict(
    vae=dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1),
    clip=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              image_size=32, patch_size=8, projection_dim=32),
    unet=dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, cross_attention_dim=32,
              num_attention_heads=(1, 2, 2, 2), addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
              num_frames=14),
    controlnet=dict(conditioning_embedding_out_channels=(8, 16, 16, 32), entity_embedding_out_channels=(16, 16, 32, 32)),
    sd_unet=dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
                 norm_num_groups=8),
    sd_vae=dict(block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=8),
    text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, max_length=16),
)


def make_sd15_dift_components(
    unet: dict | None = None, vae: dict | None = None, text: dict | None = None
) -> dict:
    """Random SD-1.5-architecture ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``.

    The tokenizer has a minimal vocabulary (the two CLIP special tokens and single
    letters): DIFT only ever encodes the empty prompt.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    unet_kw = dict(TINY["sd_unet"] if unet is None else unet)
    vae_kw = dict(TINY["sd_vae"] if vae is None else vae)
    text_kw = dict(TINY["text"] if text is None else text)
    max_length = text_kw.pop("max_length")
    sd_unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        **unet_kw,
    )
    n = len(vae_kw["block_out_channels"])
    sd_vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        latent_channels=4,
        scaling_factor=0.18215,
        **vae_kw,
    )
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz"):
        vocab[ch], vocab[ch + "</w>"] = 2 + 2 * i, 3 + 2 * i
    with tempfile.TemporaryDirectory() as folder:
        # a BPE vocabulary without merges, read from its two files: the one way transformers 4 and 5 both build it
        Path(folder, "vocab.json").write_text(json.dumps(vocab))
        Path(folder, "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=max_length)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=len(vocab), max_position_embeddings=max_length, bos_token_id=0, eos_token_id=1,
                       pad_token_id=1, projection_dim=text_kw["hidden_size"], **text_kw)
    )
    return dict(unet=sd_unet, vae=sd_vae, text_encoder=text_encoder, tokenizer=tokenizer,
                scheduler=DDIMScheduler(**SD15_SCHEDULER_CONFIG))


def build_draganything_components(seed: int = 0, with_image_encoder: bool = True, controlnet_init_std: float = 0.02) -> dict:
    """Tiny random-weight components of a :class:`~puppet_master.pipelines.DragAnythingPipeline`.

    Args:
        seed: seed of the random weights.
        with_image_encoder: include a tiny CLIP image encoder.
        controlnet_init_std: standard deviation given to the ControlNet's zero-initialised
            convolutions (0 keeps them zero: the ControlNet then changes nothing).

    Returns:
        keyword arguments of ``DragAnythingPipeline(...)``.
    """
    torch.manual_seed(seed)
    vae = make_vae(**TINY["vae"])
    unet = UNetSpatioTemporalControlNetConditionModel(in_channels=8, out_channels=4, **TINY["unet"])
    controlnet = DragAnythingControlNetModel.from_unet(unet, **TINY["controlnet"])
    if controlnet_init_std > 0:
        zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                      controlnet.controlnet_cond_embedding.conv_out, controlnet.controlnet_cond_embedding.conv_out_feature]
        for conv in zero_convs:
            torch.nn.init.normal_(conv.weight, std=controlnet_init_std)
    encoder = processor = None
    if with_image_encoder:
        encoder, processor = make_image_encoder(**TINY["clip"])
    dift = make_sd15_dift_components()
    return dict(vae=vae, unet=unet, controlnet=controlnet, scheduler=make_scheduler(), image_encoder=encoder,
                feature_extractor=processor, **{f"dift_{k}": v for k, v in dift.items()})
