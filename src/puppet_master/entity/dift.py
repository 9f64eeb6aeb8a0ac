"""DragAnything's entity representation: diffusion features (DIFT) of the first frame.

DIFT (Tang et al. 2023) reads a Stable Diffusion UNet's intermediate up-block activations
for a slightly noised copy of an image. DragAnything (Wu et al. 2024, §3.3) takes them
from an SD-1.5 UNet (ChilloutMix in the release) with the empty prompt at DDPM timestep
261, output of up block 3 (320 channels at 1/8 of the image size), averaged over an
ensemble of 8 copies with independent VAE samples and noise; an entity's
representation is the mean of that map over the entity's mask.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import ModelLoadError
from .masks import resize_mask

#: The release's DIFT settings.
DIFT_TIMESTEP = 261
DIFT_UP_BLOCK = 3
DIFT_ENSEMBLE = 8


class _Captured(Exception):
    """Raised by the forward hook to stop the UNet once the wanted up block has run."""


class DiftFeaturizer:
    """Diffusion features of images from any diffusers SD-1.5-style ``UNet2DConditionModel``.

    Args:
        unet: ``UNet2DConditionModel``.
        vae: ``AutoencoderKL`` of the same model (only its encoder is used).
        text_encoder: ``CLIPTextModel`` (encodes the empty prompt once).
        tokenizer: ``CLIPTokenizer``.
        scheduler: a diffusers scheduler with ``add_noise`` and the model's training
            betas (``DDIMScheduler`` from the model's ``scheduler`` folder in the release).
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler) -> None:
        self.unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler = unet, vae, text_encoder, tokenizer, scheduler
        self._prompt: torch.Tensor | None = None

    @classmethod
    def load_components(cls, sd15: str, torch_dtype: torch.dtype | None = None) -> dict:
        """Load ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and a ``DDIMScheduler`` from an SD-1.5 folder or hub id.

        Raises:
            ModelLoadError: missing folder, subfolder or files.
        """
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            return dict(
                unet=UNet2DConditionModel.from_pretrained(sd15, subfolder="unet", torch_dtype=torch_dtype),
                vae=AutoencoderKL.from_pretrained(sd15, subfolder="vae", torch_dtype=torch_dtype),
                text_encoder=CLIPTextModel.from_pretrained(sd15, subfolder="text_encoder", dtype=torch_dtype),
                tokenizer=CLIPTokenizer.from_pretrained(sd15, subfolder="tokenizer"),
                scheduler=DDIMScheduler.from_pretrained(sd15, subfolder="scheduler"),
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load Stable Diffusion 1.5 components from {str(sd15)!r}: {exc}") from exc

    @classmethod
    def from_pretrained(cls, sd15: str, torch_dtype: torch.dtype | None = None) -> "DiftFeaturizer":
        """A featurizer from an SD-1.5 folder or hub id (see :meth:`load_components`)."""
        return cls(**cls.load_components(sd15, torch_dtype))

    @property
    def channels(self) -> list[int]:
        """Channels of each up block's output (index 3 → 320 for SD-1.5)."""
        return list(reversed(self.unet.config.block_out_channels))

    @torch.no_grad()
    def empty_prompt_embedding(self) -> torch.Tensor:
        """Text-encoder output ``(1, L, D)`` for the empty prompt, padded to the tokenizer's length."""
        device = self.unet.device
        if self._prompt is None or self._prompt.device != device:
            ids = self.tokenizer(
                "", padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.text_encoder.device)
            self._prompt = self.text_encoder(ids)[0].to(device)
        return self._prompt

    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor,
        timestep: int = DIFT_TIMESTEP,
        up_ft_index: int = DIFT_UP_BLOCK,
        ensemble_size: int = DIFT_ENSEMBLE,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """DIFT feature maps.

        Args:
            image: ``(B, 3, H, W)`` in [−1, 1] (H, W multiples of 8).
            timestep: DDPM timestep of the added noise (0..999).
            up_ft_index: which up block's output to read (0 = lowest resolution).
            ensemble_size: noised copies averaged per image.
            generator: for the VAE samples and the noise (reproducible features).

        Returns:
            float32 ``(B, C, H/8, W/8)`` for ``up_ft_index = 3`` (``C`` = the UNet's
            ``block_out_channels[0]``, 320 for SD-1.5); lower indices give coarser,
            wider maps (index 1: 1/16 of the image).

        Raises:
            ValueError: bad ``up_ft_index``, ``ensemble_size`` or image shape.
        """
        if not 0 <= up_ft_index < len(self.unet.up_blocks):
            raise ValueError(f"up_ft_index must be in [0, {len(self.unet.up_blocks) - 1}], got {up_ft_index}")
        if ensemble_size < 1:
            raise ValueError(f"ensemble_size must be at least 1, got {ensemble_size}")
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W) in [-1, 1], got {tuple(image.shape)}")
        device, dtype = self.unet.device, self.unet.dtype
        prompt = self.empty_prompt_embedding().to(dtype).expand(ensemble_size, -1, -1)
        t = torch.tensor(timestep, dtype=torch.long, device=device)
        captured: dict[str, torch.Tensor] = {}

        def hook(_module, _inputs, output):
            captured["ft"] = output
            raise _Captured

        features = []
        handle = self.unet.up_blocks[up_ft_index].register_forward_hook(hook)
        try:
            for img in image:
                batch = img[None].expand(ensemble_size, -1, -1, -1).to(self.vae.device, self.vae.dtype)
                latents = self.vae.encode(batch).latent_dist.sample(generator=generator) * self.vae.config.scaling_factor
                noise = torch.randn(latents.shape, generator=generator,
                                    device=generator.device if generator is not None else "cpu", dtype=torch.float32)
                noisy = self.scheduler.add_noise(latents.float(), noise.to(latents.device), t.expand(ensemble_size).to(latents.device))
                try:
                    self.unet(noisy.to(device, dtype), t, encoder_hidden_states=prompt)
                except _Captured:
                    pass
                features.append(captured.pop("ft").float().mean(0))
        finally:
            handle.remove()
        return torch.stack(features)


def entity_features(feature_map: torch.Tensor, masks: Sequence[np.ndarray]) -> torch.Tensor:
    """Each entity's DIFT vector: the mean of ``feature_map`` over its mask.

    Masks are resized to the feature map's grid as the release does (bilinear on 0/1,
    any non-zero cell counts). A mask too small to cover any cell uses the cell under
    the centre of its largest inscribed circle.

    Args:
        feature_map: ``(C, h, w)``.
        masks: bool ``(H, W)`` masks of the image the features were computed from.

    Returns:
        ``(len(masks), C)`` in ``feature_map``'s dtype.
    """
    import cv2

    c, h, w = feature_map.shape
    out = []
    for mask in masks:
        small = torch.from_numpy(resize_mask(mask, w, h)).to(feature_map.device)
        if not small.any():
            dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
            row, col = np.unravel_index(int(dist.argmax()), dist.shape)
            small[min(row * h // mask.shape[0], h - 1), min(col * w // mask.shape[1], w - 1)] = True
        out.append(feature_map[:, small].mean(dim=1))
    return torch.stack(out) if out else feature_map.new_zeros(0, c)


def pool_channels(features: torch.Tensor, channels: int) -> torch.Tensor:
    """Average consecutive channel groups: ``(..., C) → (..., channels)`` (the release: 320 → 160 in pairs).

    Raises:
        ValueError: ``C`` not a multiple of ``channels``.
    """
    c = features.shape[-1]
    if channels <= 0 or c % channels:
        raise ValueError(
            f"DIFT features have {c} channels, which cannot be pooled to the ControlNet's {channels} entity channels: "
            "use an SD-1.5 UNet matching the ControlNet"
        )
    return features.reshape(*features.shape[:-1], channels, c // channels).mean(-1)
