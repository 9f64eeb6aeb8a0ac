"""The sampling machinery Puppet-Master and DragAnything share (docs/design.md §5).

Both are image-to-video models on Stable Video Diffusion's design: EDM sampling over Karras σ
with a v-prediction UNet, the first frame's VAE latent as the image condition, a CLIP image
embedding, classifier-free guidance whose weight rises linearly over the frames, and a
decode of every frame at the end. :class:`SVDStylePipeline` holds that once, shaped like
diffusers' ``StableVideoDiffusionPipeline``: :meth:`~SVDStylePipeline.check_inputs` before
any encoding, :meth:`~SVDStylePipeline.prepare_latents`, the ``guidance_scale`` /
``do_classifier_free_guidance`` / ``num_timesteps`` properties, noise from diffusers'
``randn_tensor``, and ``callback_on_step_end`` with ``callback_on_step_end_tensor_inputs``.
The denoising loop (:meth:`~SVDStylePipeline.denoise`) uses only the scheduler API, so any
compatible diffusers scheduler samples (:mod:`.schedulers`).

A pipeline adds its components, its conditioning and :meth:`~SVDStylePipeline._predict`: the
UNet output for the (CFG-doubled) scaled latents — the drag UNet with its drag conditioning
(:class:`~puppet_master.pipelines.PuppetMasterPipeline`) or SVD's UNet with ControlNet
residuals (:class:`~puppet_master.pipelines.DragAnythingPipeline`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKLTemporalDecoder, AutoencoderTiny, DiffusionPipeline

# Leans on a private diffusers helper (CONTRIBUTING.md, "Upgrading diffusers"): the antialiased resize SVD's
# pipeline applies before CLIP; importing it keeps our image embedding equal to diffusers' SVD pipeline's
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _resize_with_antialiasing,
)
from diffusers.models.autoencoders.vae import DecoderTiny
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor

from ..errors import UserInputError
from .schedulers import SCHEDULER_NAMES, scheduler_from_name

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def guidance_scales(num_frames: int, min_guidance_scale: float, max_guidance_scale: float) -> torch.Tensor:
    """Per-frame CFG weights rising linearly from ``min`` (frame 0) to ``max`` (frame N−1). Shape ``(N,)``."""
    return torch.linspace(min_guidance_scale, max_guidance_scale, num_frames)


@dataclass(frozen=True)
class FirstFrameTie:
    """Frame 0 held at the conditioning first frame while sampling (not in the paper; docs/design.md §5).

    At noise level σ frame 0's latent is ``latent + σ·noise``: the clean first-frame latent
    noised with frame 0's own initial noise, so the tie is deterministic and at the final
    σ = 0 frame 0 is exactly ``latent``. Below ``release_sigma`` frame 0 is left as the
    sampler made it: with a ``release_sigma`` between 0 and the schedule's last non-zero σ
    only the last step's output for frame 0 is the model's own, every step still sees the
    tied frame 0 as input.

    Attributes:
        latent: ``(B, C, h, w)`` float32, the first frame's latent times the VAE's scaling factor.
        noise: ``(B, C, h, w)`` float32, frame 0 of the initial noise (before any σ scaling).
        release_sigma: σ below which frame 0 is no longer replaced (0: held down to σ = 0).
    """

    latent: torch.Tensor
    noise: torch.Tensor
    release_sigma: float = 0.0

    def holds(self, sigma: torch.Tensor | float) -> bool:
        """Whether frame 0 is replaced at noise level ``sigma``."""
        return not float(sigma) < self.release_sigma

    def apply(self, latents: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``latents (B, N, C, h, w)`` with frame 0 replaced by ``latent + sigma·noise`` (unchanged below ``release_sigma``)."""
        if not self.holds(sigma):
            return latents
        sigma = torch.as_tensor(sigma, dtype=torch.float32).to(latents.device)
        tied = latents.clone()
        tied[:, 0] = (self.latent + sigma * self.noise).to(latents.dtype)
        return tied


# Adapted from diffusers.pipelines.stable_video_diffusion.StableVideoDiffusionPipeline (diffusers 0.42):
# check_inputs, prepare_latents, the guidance properties, the denoising loop with callback_on_step_end.
class SVDStylePipeline(DiffusionPipeline):
    """Base of the SVD-style image-to-video pipelines (module docstring).

    Subclasses register ``vae``, ``unet``, ``scheduler`` (and optionally ``image_encoder``,
    ``feature_extractor``), call :meth:`_init_video_processing` in ``__init__`` and implement
    :meth:`_predict` and :attr:`size_multiple`.
    """

    _callback_tensor_inputs = ["latents"]
    _optional_components = ["image_encoder", "feature_extractor"]

    def _init_video_processing(self) -> None:
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.video_processor = VideoProcessor(do_resize=True, vae_scale_factor=self.vae_scale_factor)

    # ------------------------------------------------------------------ call state (as diffusers' SVD pipeline)
    @property
    def guidance_scale(self) -> float:
        """The CFG weight of the last frame (``max_guidance_scale``) of the current call."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the current call guides (``max_guidance_scale > 1``): the UNet then runs on a doubled batch."""
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        """Denoising steps the current (or last) call runs (fewer than asked with a warped start)."""
        return self._num_timesteps

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this many pixels."""
        raise NotImplementedError

    # ------------------------------------------------------------------ encoders
    # Adapted from diffusers' StableVideoDiffusionPipeline._encode_image (diffusers 0.42).
    @torch.no_grad()
    def encode_image_embedding(self, image: torch.Tensor) -> torch.Tensor:
        """CLIP image token ``(B, 1, D)`` of images ``(B, 3, H, W)`` in [0, 1], as SVD computes it.

        Without an image encoder: zeros of the UNet's cross-attention width.
        """
        if self.image_encoder is None:
            dim = self.unet.config.cross_attention_dim
            dim = dim if isinstance(dim, int) else dim[0]
            return torch.zeros(image.shape[0], 1, dim, device=self._execution_device, dtype=self.unet.dtype)
        size = self.image_encoder.config.image_size
        pixels = _resize_with_antialiasing(image * 2.0 - 1.0, (size, size))
        pixels = ((pixels + 1.0) / 2.0).clamp(0, 1)
        pixels = self.feature_extractor(
            images=pixels, do_normalize=True, do_center_crop=False, do_resize=False, do_rescale=False, return_tensors="pt"
        ).pixel_values
        dtype = next(self.image_encoder.parameters()).dtype
        embeds = self.image_encoder(pixels.to(self._execution_device, dtype)).image_embeds
        return embeds[:, None]

    @torch.no_grad()
    def encode_first_frame(self, image: torch.Tensor) -> torch.Tensor:
        """Clean first-frame latent ``(B, C, H/f, W/f)`` (f = VAE down-sampling): the VAE posterior mean, *not* scaled.

        A ``diffusers.AutoencoderTiny`` (a deterministic encoder, e.g. distilled from the model's
        VAE by :mod:`puppet_master.training.tiny_vae`) returns its latents, trained to equal that mean.

        Args:
            image: ``(B, 3, H, W)`` in [−1, 1].
        """
        dtype = next(self.vae.parameters()).dtype
        encoded = self.vae.encode(image.to(self._execution_device, dtype))
        if self._tiny_vae:  # a deterministic encoder: its latents are the mean
            return encoded.latents
        return encoded.latent_dist.mode()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> torch.Tensor:
        """Decode ``(B, N, 4, h, w)`` latents (scaled by the VAE factor) to ``(B, N, 3, H, W)`` in [−1, 1].

        A tiny decoder (``DecoderTiny``: plain convolutions, no group norms) runs in channels-last
        memory format, about 1.6× faster on a CPU (benchmarks/README.md, "The tiny decoder").
        """
        b, n = latents.shape[:2]
        flat = latents.flatten(0, 1) / self.vae.config.scaling_factor
        chunk = decode_chunk_size or n
        memory_format = torch.contiguous_format
        if isinstance(getattr(self.vae, "decoder", None), DecoderTiny):
            memory_format = torch.channels_last
            self.vae.decoder.to(memory_format=memory_format)  # a no-op once the weights are so
        frames = []
        for i in range(0, flat.shape[0], chunk):
            part = flat[i : i + chunk].to(next(self.vae.parameters()).dtype).contiguous(memory_format=memory_format)
            kwargs = {"num_frames": part.shape[0]} if self._temporal_vae else {}
            frames.append(self.vae.decode(part, **kwargs).sample)
        return torch.cat(frames).float().reshape(b, n, *frames[0].shape[1:])

    @property
    def _tiny_vae(self) -> bool:
        """The VAE is a ``diffusers.AutoencoderTiny`` (deterministic encoder, no group norms)."""
        return isinstance(self.vae, AutoencoderTiny)

    @property
    def _temporal_vae(self) -> bool:
        """The VAE decodes frames jointly (SVD's temporal decoder takes ``num_frames``).

        Known by its class: diffusers before 0.42 wraps ``decode`` in a hook that hides its signature."""
        return isinstance(self.vae, AutoencoderKLTemporalDecoder)

    @staticmethod
    def _check_image(image) -> int:
        """Check an input image (PIL image, ``uint8`` array ``(H, W, 3)``, tensor ``(B, 3, H, W)`` / ``(3, H, W)``).

        Returns:
            The batch size it gives.

        Raises:
            UserInputError: another type, or a tensor of another shape.
        """
        if isinstance(image, torch.Tensor):
            if image.ndim not in (3, 4) or image.shape[-3] != 3:
                raise UserInputError(f"image tensor must be (3, H, W) or (B, 3, H, W) in [0, 1], got {tuple(image.shape)}")
            return image.shape[0] if image.ndim == 4 else 1
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[-1] != 3:
                raise UserInputError(f"image array must be (H, W, 3), got {image.shape}")
            return 1
        if not isinstance(image, PIL.Image.Image):
            raise UserInputError(f"image must be a PIL image, numpy array or tensor, got {type(image).__name__}")
        return 1

    def _prepare_image(self, image, height: int, width: int) -> torch.Tensor:
        """The input (:meth:`_check_image`) as ``(B, 3, height, width)`` float32 in [0, 1] (resized, aspect not kept)."""
        self._check_image(image)
        if isinstance(image, torch.Tensor):
            img = image[None] if image.ndim == 3 else image
            img = img.float()
            if img.shape[-2:] != (height, width):
                img = torch.nn.functional.interpolate(img, size=(height, width), mode="bicubic", antialias=True)
            return img.clamp(0, 1)
        if isinstance(image, np.ndarray):
            image = PIL.Image.fromarray(image.astype(np.uint8) if image.dtype != np.uint8 else image)
        return (self.video_processor.preprocess(image.convert("RGB"), height=height, width=width) + 1) / 2

    # ------------------------------------------------------------------ checks
    def check_inputs(
        self,
        height: int,
        width: int,
        num_frames: int,
        num_inference_steps: int,
        output_type: str,
        callback_on_step_end_tensor_inputs: Sequence[str] | None = None,
        scheduler: Any = None,
    ) -> None:
        """The argument checks every SVD-style call shares (subclasses add theirs); nothing is encoded yet.

        Raises:
            UserInputError: sizes that are not positive multiples of :attr:`size_multiple`, fewer
                than 2 frames or 1 step, an unknown output type, callback tensor inputs the
                pipeline does not offer, or an unknown scheduler name.
        """
        stride = self.size_multiple
        if height <= 0 or width <= 0 or height % stride or width % stride:
            raise UserInputError(f"height and width must be positive multiples of {stride}, got {width}x{height} "
                                 "(width x height)")
        if num_frames < 2:
            raise UserInputError(f"num_frames must be at least 2, got {num_frames}")
        if num_inference_steps < 1:
            raise UserInputError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        if output_type not in OUTPUT_TYPES:
            raise UserInputError(f"output_type must be {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        unknown = [k for k in callback_on_step_end_tensor_inputs or () if k not in self._callback_tensor_inputs]
        if unknown:
            raise UserInputError(f"callback_on_step_end_tensor_inputs may name {self._callback_tensor_inputs}, "
                                 f"got {unknown}")
        if isinstance(scheduler, str) and scheduler not in SCHEDULER_NAMES:
            raise UserInputError(f"unknown scheduler {scheduler!r}: choose one of {', '.join(SCHEDULER_NAMES)}")

    @staticmethod
    def _check_latents(latents: torch.Tensor | None, shape: tuple[int, ...], generator=None) -> None:
        """The given initial noise has ``shape``; a list of generators has one per video (``shape[0]``)."""
        if latents is not None and tuple(latents.shape) != tuple(shape):
            raise UserInputError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
        if isinstance(generator, list) and len(generator) != shape[0]:
            raise UserInputError(f"{len(generator)} generators for {shape[0]} videos: give one per video")

    # ------------------------------------------------------------------ schedule and latents
    def _scheduler_for_call(self, scheduler: Any = None):
        """The scheduler of this call: the pipeline's, a named one built from its configuration, or the one given.

        A name (:data:`~.schedulers.SCHEDULER_NAMES`) builds a new scheduler for this call only:
        the pipeline's own (what ``save_pretrained`` writes) is left as it is.

        Raises:
            UserInputError: the pipeline's scheduler is not an EDM v-prediction scheduler the
                name can be built from.
        """
        if scheduler is None:
            return self.scheduler
        if not isinstance(scheduler, str):
            return scheduler
        try:
            return scheduler_from_name(scheduler, self.scheduler.config)
        except ValueError as exc:
            raise UserInputError(f"cannot sample this model with scheduler {scheduler!r}: {exc}") from exc

    @staticmethod
    def prepare_timesteps(scheduler, num_inference_steps: int, device: torch.device,
                          start_sigma: float | None = None) -> tuple[torch.Tensor, int]:
        """Set the schedule; with ``start_sigma``, start at the first step whose σ is at most it.

        Returns:
            ``(timesteps that run, index of the first one in the full schedule)``; with
            ``start_sigma`` the scheduler's begin index is set to that index.
        """
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scheduler.timesteps
        if not start_sigma:
            return timesteps, 0
        sigmas = scheduler.sigmas[: len(timesteps)].to(device)
        begin = min(int((sigmas > start_sigma).sum()), len(timesteps) - 1)
        scheduler.set_begin_index(begin)
        return timesteps[begin:], begin

    def steps_run(self, num_inference_steps: int, start_sigma: float | None = None, scheduler: Any = None) -> int:
        """How many of ``num_inference_steps`` steps a call runs when it starts at ``start_sigma``.

        Counted on a copy of the call's scheduler (:meth:`prepare_timesteps`), so the count is
        the one the progress bar shows; the pipeline's scheduler is not touched.
        """
        sampler = copy.deepcopy(self._scheduler_for_call(scheduler))
        return len(self.prepare_timesteps(sampler, num_inference_steps, torch.device("cpu"), start_sigma)[0])

    def prepare_latents(
        self,
        batch_size: int,
        num_frames: int,
        num_channels_latents: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
        scheduler=None,
        start_latents: torch.Tensor | None = None,
        begin: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The starting latents of the denoising loop, and the noise they were made from.

        Without ``start_latents`` the start is pure noise times the scheduler's
        ``init_noise_sigma`` (the paper's sampling); with them, ``start_latents`` plus the
        noise times the σ of step ``begin`` (an SDEdit-style start, Meng et al. 2022).

        Args:
            batch_size, num_frames, num_channels_latents: ``B``, ``N``, ``C``.
            height, width: in pixels (the latents are ``height / f × width / f``).
            dtype, device: of the noise (float32 for sampling).
            generator: a ``torch.Generator`` (or one per video) for the noise, drawn with
                diffusers' ``randn_tensor`` (on the generator's device, then moved).
            latents: the noise ``(B, N, C, h, w)`` instead of drawing it.
            scheduler: the call's scheduler (default the pipeline's).
            start_latents: ``(B, N, C, h, w)`` clean (scaled) latents to start from, or ``None``.
            begin: index of the first step (:meth:`prepare_timesteps`).

        Returns:
            ``(latents, noise)``, both ``(B, N, C, h, w)``.

        Raises:
            UserInputError: ``latents`` of another shape, or a list of generators of another length.
        """
        scheduler = scheduler if scheduler is not None else self.scheduler
        shape = (batch_size, num_frames, num_channels_latents, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        self._check_latents(latents, shape, generator)
        if latents is None:
            noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            noise = latents.to(device, dtype)
        if start_latents is None:
            return noise * scheduler.init_noise_sigma, noise
        return start_latents.to(device, dtype) + noise * scheduler.sigmas[begin].to(device), noise

    # ------------------------------------------------------------------ the loop
    def _predict(self, latent_model_input: torch.Tensor, t: torch.Tensor, conditioning: Any) -> torch.Tensor:
        """The UNet output ``F`` ``(B', N, C, h, w)`` for scaled latents (``B' = 2B`` under CFG: unconditional first)."""
        raise NotImplementedError

    def _progress_description(self, steps_run: int, num_inference_steps: int, start_sigma: float | None) -> str:
        """The progress bar's description: its configured one (default "denoising"), and what runs of a warped start."""
        base = getattr(self, "_progress_bar_config", {}).get("desc") or "denoising"
        if start_sigma:
            return f"{base} (warped start σ={start_sigma:g}: {steps_run} of {num_inference_steps} steps)"
        return base

    def denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: Any,
        frame_guidance: torch.Tensor,
        scheduler=None,
        callback_on_step_end: Callable[..., dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        first_frame_tie: FirstFrameTie | None = None,
        description: str = "denoising",
    ) -> torch.Tensor:
        """Run the denoising loop: guided UNet predictions, one scheduler step each (docs/design.md §5).

        Args:
            latents: ``(B, N, C, h, w)`` float32 starting latents (:meth:`prepare_latents`).
            timesteps: the timesteps to run (:meth:`prepare_timesteps`).
            conditioning: whatever the pipeline's :meth:`_predict` takes.
            frame_guidance: ``(N,)`` CFG weight per frame (:func:`guidance_scales`); used
                when :attr:`do_classifier_free_guidance`.
            scheduler: the call's scheduler (default the pipeline's).
            callback_on_step_end: ``f(pipe, step, timestep, {name: tensor}) -> dict`` after
                every step; a returned ``"latents"`` replaces the latents.
            callback_on_step_end_tensor_inputs: the tensors passed to it (of
                ``_callback_tensor_inputs``).
            first_frame_tie: hold frame 0 at the first frame (not in the paper), or ``None``.
            description: the progress bar's description.

        Returns:
            The final latents ``(B, N, C, h, w)`` float32.
        """
        scheduler = scheduler if scheduler is not None else self.scheduler
        scales = frame_guidance.to(latents.device)[None, :, None, None, None]
        self._num_timesteps = len(timesteps)
        if first_frame_tie is not None:
            index = scheduler.begin_index if scheduler.begin_index is not None else 0
            latents = first_frame_tie.apply(latents, scheduler.sigmas[index])
        with self.progress_bar(total=len(timesteps)) as progress:
            progress.set_description(description)
            for i, t in enumerate(timesteps):
                latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                latent_model_input = scheduler.scale_model_input(latent_model_input, t)
                noise_pred = self._predict(latent_model_input, t, conditioning).float()
                if self.do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_cond = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + scales * (noise_pred_cond - noise_pred_uncond)
                latents = scheduler.step(noise_pred, t, latents).prev_sample
                if first_frame_tie is not None:
                    latents = first_frame_tie.apply(latents, scheduler.sigmas[scheduler.step_index])
                if callback_on_step_end is not None:
                    tensors = {"latents": latents}
                    callback_kwargs = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = callback_outputs.pop("latents", latents)
                progress.update()
        return latents

    # ------------------------------------------------------------------ output
    def decode_video(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> torch.Tensor:
        """Decode the final latents to ``(B, N, 3, H, W)`` float32 in [−1, 1].

        ``decode_chunk_size=None`` decodes all frames at once, except 8 at a time for an image
        VAE on a GPU (it decodes frames independently, so the output is the same and the peak
        memory bounded); SVD's temporal decoder mixes frames, so it gets all of them.
        """
        if decode_chunk_size is None and latents.device.type == "cuda" and not self._temporal_vae:
            decode_chunk_size = 8
        return self.decode_latents(latents, decode_chunk_size)

    def postprocess_video(self, video: torch.Tensor, output_type: str):
        """``(B, N, 3, H, W)`` in [−1, 1] → PIL frames, ``np`` ``(B, N, H, W, 3)`` or ``pt`` ``(B, N, 3, H, W)`` in [0, 1]."""
        return self.video_processor.postprocess_video(video.permute(0, 2, 1, 3, 4), output_type=output_type)
