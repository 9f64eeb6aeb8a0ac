"""Drag-conditioned image-to-video sampling (paper §3, App. C; docs/design.md §5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import (AutoencoderKL, AutoencoderKLTemporalDecoder, DiffusionPipeline, EulerDiscreteScheduler,
                       UNetSpatioTemporalConditionModel)
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
from diffusers.utils import BaseOutput
from diffusers.video_processor import VideoProcessor
from safetensors.torch import load_file

from ..drags import DragSet
from ..drags.warp import warp_images_by_drags, warp_latents_by_drags
from ..errors import ModelLoadError, UserInputError
from ..models import UNetDragSpatioTemporalConditionModel
from .components import load_svd_components
from .cuda_graph import GraphedUNet


@dataclass
class PuppetMasterPipelineOutput(BaseOutput):
    """Output of :class:`PuppetMasterPipeline`.

    Attributes:
        frames: per video a list of ``N`` PIL images (``output_type="pil"``), or an array
            ``(B, N, H, W, 3)`` in [0, 1] (``"np"``), or a tensor ``(B, N, 3, H, W)`` in
            [0, 1] (``"pt"``), or the latents ``(B, N, 4, h, w)`` (``"latent"``).
    """

    frames: Any


def guidance_scales(num_frames: int, min_guidance_scale: float, max_guidance_scale: float) -> torch.Tensor:
    """Per-frame CFG weights rising linearly from ``min`` (frame 0) to ``max`` (frame N−1). Shape ``(N,)``."""
    return torch.linspace(min_guidance_scale, max_guidance_scale, num_frames)


class PuppetMasterPipeline(DiffusionPipeline):
    """Generate a video of an object's parts moving as the drags say (Puppet-Master).

    Components:
        vae: ``AutoencoderKLTemporalDecoder`` (SVD's VAE), or ``AutoencoderKL`` (the
            embedded default model's small image VAE), or any diffusers VAE with
            ``encode``/``decode`` and ``config.scaling_factor``.
        image_encoder: ``CLIPVisionModelWithProjection`` (optional; without it the UNet
            gets a zero image embedding).
        feature_extractor: ``CLIPImageProcessor`` for the image encoder (optional).
        unet: :class:`~puppet_master.models.UNetDragSpatioTemporalConditionModel`.
        scheduler: ``EulerDiscreteScheduler`` with SVD's EDM configuration.

    Sampling (docs/design.md §5): ``num_inference_steps`` Euler steps over Karras σ; the UNet
    sees the scaled noisy latents, the clean first-frame latent (VAE mean, unscaled),
    the image embedding and the drags; classifier-free guidance with an unconditional
    branch of zero drags, zero first-frame latent and zero image embedding, weighted
    per frame from ``min_guidance_scale`` to ``max_guidance_scale``. The drag encodings
    are computed once per call. A UNet configured with ``drag_warp_image_latents`` (the
    embedded default model) warps the first-frame latent along the drags itself, frame by
    frame (:mod:`puppet_master.drags.warp`); the unconditional branch, having no drags,
    gets the plain latent.

    Speed (figures in benchmarks/README.md): everything that depends only on the drags (encodings,
    sampling positions, positional embeddings, warped latents and the modulation nets'
    outputs) is computed once per call. On a GPU, :meth:`enable_cuda_graph` replays each
    denoising step's UNet call from a CUDA graph and :meth:`enable_compile` compiles the
    UNet with ``torch.compile``; weights in ``torch.float16`` or ``torch.bfloat16``
    (``from_pretrained(..., torch_dtype=...)``) run the UNet in that precision (fp16 is
    the faster on most GPUs; bf16 has fp32's range, never overflows, and is the choice
    for training).

    **Not in the paper:** ``warp_init_sigma`` (a pipeline setting stored in
    ``model_index.json``, or a call argument) starts sampling at the first scheduler step
    whose σ is at most ``warp_init_sigma``, from the first-frame latent warped along the
    drags to every frame (:func:`~puppet_master.drags.warp.warp_latents_by_drags`) plus
    noise of that σ, instead of from pure noise at σ_max (SDEdit-style initialisation,
    Meng et al. 2022). The denoiser then only has to correct a warped copy of the input:
    the background and the look of the object start right, and the drags' motion is
    already in the starting point. ``None`` (the default) is the paper's sampling.

    **Not in the paper:** detail transfer (``detail_transfer_radius``, also a
    ``model_index.json`` setting or a call argument) adds back to every decoded frame the
    detail the autoencoder loses on the input — ``image − D(E(image))``, the input minus
    its own VAE round trip — moved along the drags by the drag displacement field
    (:func:`~puppet_master.drags.warp.drag_displacement_field`) of that Gaussian radius in
    latent cells (:func:`~puppet_master.drags.warp.warp_images_by_drags`). A small
    autoencoder blurs and shifts colours (the embedded default model's reconstructs
    Drag-a-Move renders at about 23 dB); with the transfer, frame 0 comes back within the
    generated frame's own error of the input and the static background keeps the input's
    detail. It moves the lost detail with the *requested* drags, whatever motion the UNet
    generated, so it suits a model whose motion follows its drags; ``None`` or ``0`` (the
    default) decodes as the paper does, which is right for SVD's autoencoder.
    """

    model_cpu_offload_seq = "image_encoder->unet->vae"
    _optional_components = ["image_encoder", "feature_extractor"]

    def __init__(
        self,
        vae: AutoencoderKLTemporalDecoder | AutoencoderKL,
        unet: UNetDragSpatioTemporalConditionModel,
        scheduler: EulerDiscreteScheduler,
        image_encoder=None,
        feature_extractor=None,
        warp_init_sigma: float | None = None,
        detail_transfer_radius: float | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae, image_encoder=image_encoder, feature_extractor=feature_extractor, unet=unet, scheduler=scheduler
        )
        # not in the paper (None = the paper's sampling from pure noise); saved in model_index.json
        self.register_to_config(warp_init_sigma=warp_init_sigma, detail_transfer_radius=detail_transfer_radius)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.video_processor = VideoProcessor(do_resize=True, vae_scale_factor=self.vae_scale_factor)
        self._graphed_unet: GraphedUNet | None = None

    # ------------------------------------------------------------------ fast path
    def enable_compile(self, mode: str | None = None, fullgraph: bool = True, dynamic: bool = False,
                       backend: str = "inductor") -> None:
        """Compile the UNet's forward with ``torch.compile`` (in place: weights and state-dict keys unchanged).

        The first call with new shapes compiles (tens of seconds on a GPU for the
        full-size model, minutes on a small CPU); later calls with the same shapes reuse
        it. Combine with :meth:`enable_cuda_graph` (default mode), or pass
        ``mode="reduce-overhead"`` to let torch.compile manage CUDA graphs itself.

        Args:
            mode: ``torch.compile`` mode (``None``/"default", "reduce-overhead",
                "max-autotune", "max-autotune-no-cudagraphs").
            fullgraph: require one graph (the UNet forward has no graph breaks).
            dynamic: compile for dynamic shapes.
            backend: ``torch.compile`` backend (``"inductor"`` generates fused kernels).
        """
        self.unet.compile(mode=mode, fullgraph=fullgraph, dynamic=dynamic, backend=backend)
        if self._graphed_unet is not None:
            self._graphed_unet.reset()

    def enable_cuda_graph(self, enabled: bool = True) -> None:
        """Run each denoising step's UNet call through static buffers, replayed from a CUDA graph on a GPU.

        Shapes are static within a call (batch, frames, size), so the graph is captured
        at the first step of the first call with new shapes and replayed afterwards; a
        call with other shapes captures again. The graph holds its own memory pool
        (about one forward's activations). On a CPU the same static-buffer path runs
        eagerly (no speed-up). Outputs equal the eager pipeline's.
        """
        self._graphed_unet = GraphedUNet(self.unet) if enabled else None

    def disable_cuda_graph(self) -> None:
        """Back to eager UNet calls (frees the captured graph)."""
        self.enable_cuda_graph(False)

    # ------------------------------------------------------------------ assembly
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "PuppetMasterPipeline":
        """``DiffusionPipeline.from_pretrained`` that also accepts ``"default"``: the embedded default model.

        ``"default"`` (when no local folder has that name) loads the small model shipped in
        the package (``puppet_master/assets/default-model``, fp16 weights; pass
        ``dtype=torch.float32`` to compute on a CPU, or use
        :func:`puppet_master.pipelines.load_pipeline`, which does). Everything else is
        diffusers' ``from_pretrained`` (a folder or a hub id).

        A local folder is checked first (:func:`~puppet_master.pipelines.loading.check_model_folder`:
        regular files, bounded configuration files and scheduler sizes).

        Raises:
            ModelLoadError: ``"default"`` asked for but no default model is installed, or a
                local folder that fails the checks.
        """
        from .loading import check_model_folder, resolve_model  # deferred: .loading imports this module

        if str(pretrained_model_name_or_path) == "default" and not Path("default").exists():
            pretrained_model_name_or_path = resolve_model("default")
        if Path(pretrained_model_name_or_path).is_dir():
            check_model_folder(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_svd(
        cls,
        svd: str | Path,
        unet_weights: str | Path | None = None,
        torch_dtype: torch.dtype | None = None,
        **unet_kwargs,
    ) -> "PuppetMasterPipeline":
        """Assemble the pipeline from a Stable Video Diffusion img2vid folder or hub id.

        ``vae``, ``image_encoder``, ``feature_extractor`` and ``scheduler`` come from the
        SVD folder (its usual subfolders). The UNet is either the released Puppet-Master
        checkpoint (``unet_weights``: the authors' ``model.safetensors``, loaded with
        ``strict=True`` into the default configuration) or, without it, SVD's UNet
        converted by :meth:`UNetDragSpatioTemporalConditionModel.from_svd_unet` (the
        starting point of training).

        Args:
            svd: path or hub id of ``stabilityai/stable-video-diffusion-img2vid`` (or -xt).
            unet_weights: path to Puppet-Master weights (``.safetensors``; a ``.pt`` /
                ``.ckpt`` is read with ``torch.load(weights_only=True)``).
            torch_dtype: dtype of every component (e.g. ``torch.float16`` on GPU).
            **unet_kwargs: drag-UNet constructor arguments (e.g. ablation switches).

        Raises:
            ModelLoadError: a missing folder, file or subfolder.
        """
        components = load_svd_components(svd, torch_dtype)
        if unet_weights is not None:
            unet = UNetDragSpatioTemporalConditionModel(**unet_kwargs)
            unet.load_state_dict(load_unet_state_dict(unet_weights), strict=True)
        else:
            try:
                svd_unet = UNetSpatioTemporalConditionModel.from_pretrained(svd, subfolder="unet")
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"cannot load SVD's UNet from {str(svd)!r}: {exc}") from exc
            unet = UNetDragSpatioTemporalConditionModel.from_svd_unet(svd_unet, **unet_kwargs)
        if torch_dtype is not None:
            unet = unet.to(torch_dtype)
        return cls(unet=unet, **components)

    # ------------------------------------------------------------------ encoders
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

        Args:
            image: ``(B, 3, H, W)`` in [−1, 1].
        """
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(image.to(self._execution_device, dtype)).latent_dist.mode()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> torch.Tensor:
        """Decode ``(B, N, 4, h, w)`` latents (scaled by the VAE factor) to ``(B, N, 3, H, W)`` in [−1, 1]."""
        b, n = latents.shape[:2]
        flat = latents.flatten(0, 1) / self.vae.config.scaling_factor
        chunk = decode_chunk_size or n
        # SVD's temporal decoder takes the frame count (known by its class: diffusers before 0.42 wraps
        # ``decode`` in a hook that hides its signature)
        accepts_frames = isinstance(self.vae, AutoencoderKLTemporalDecoder)
        frames = []
        for i in range(0, flat.shape[0], chunk):
            part = flat[i : i + chunk].to(next(self.vae.parameters()).dtype)
            kwargs = {"num_frames": part.shape[0]} if accepts_frames else {}
            frames.append(self.vae.decode(part, **kwargs).sample)
        return torch.cat(frames).float().reshape(b, n, *frames[0].shape[1:])

    @torch.no_grad()
    def transfer_details(self, video: torch.Tensor, image: torch.Tensor, first_latent: torch.Tensor,
                         drags: torch.Tensor, radius: float) -> torch.Tensor:
        """Detail transfer (not in the paper; class docstring): ``video + warp(image − D(E(image)))``.

        Args:
            video: decoded frames ``(B, N, 3, H, W)`` in [−1, 1].
            image: the input ``(B, 3, H, W)`` in [−1, 1].
            first_latent: its VAE posterior mean ``(B, C, H/f, W/f)`` (unscaled,
                :meth:`encode_first_frame`).
            drags: normalised drags ``(B, N, K, 4)`` (docs/design.md §2).
            radius: Gaussian radius of the drag displacement field, in latent cells (> 0).

        Returns:
            ``(B, N, 3, H, W)`` float32 in [−1, 1].
        """
        scaled = first_latent[:, None].float() * self.vae.config.scaling_factor
        reconstruction = self.decode_latents(scaled)[:, 0]  # (B, 3, H, W)
        residual = image.to(reconstruction.device, torch.float32) - reconstruction
        moved = warp_images_by_drags(residual, drags.float().to(residual.device), self.vae_scale_factor, radius,
                                     getattr(self.unet.config, "drag_warp_background", 0.02))
        return (video.float() + moved.to(video.device)).clamp(-1, 1)

    def _unet_call(self, sample, timestep, image_latents, encoder_hidden_states, drag_conditioning) -> torch.Tensor:
        return self.unet(
            sample, timestep, image_latents=image_latents, encoder_hidden_states=encoder_hidden_states,
            drag_conditioning=drag_conditioning,
        ).sample

    # ------------------------------------------------------------------ inputs
    def _prepare_image(self, image, height: int, width: int) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            img = image[None] if image.ndim == 3 else image
            if img.ndim != 4 or img.shape[1] != 3:
                raise UserInputError(f"image tensor must be (3, H, W) or (B, 3, H, W) in [0, 1], got {tuple(image.shape)}")
            img = img.float()
            if img.shape[-2:] != (height, width):
                img = torch.nn.functional.interpolate(img, size=(height, width), mode="bicubic", antialias=True)
            return img.clamp(0, 1)
        if isinstance(image, PIL.Image.Image):
            image = image.convert("RGB")
        elif isinstance(image, np.ndarray):
            image = PIL.Image.fromarray(image.astype(np.uint8) if image.dtype != np.uint8 else image).convert("RGB")
        else:
            raise UserInputError(f"image must be a PIL image, numpy array or tensor, got {type(image).__name__}")
        return (self.video_processor.preprocess(image, height=height, width=width) + 1) / 2

    def _prepare_drags(self, drags, num_frames: int, batch_size: int) -> torch.Tensor:
        k_max = self.unet.config.num_drags
        if isinstance(drags, DragSet):
            tensor = drags.resample(num_frames).to_tensor(k_max)[None]
        else:
            tensor = torch.as_tensor(drags, dtype=torch.float32)
            if tensor.ndim == 3:
                tensor = tensor[None]
            if tensor.ndim != 4 or tensor.shape[1:] != (num_frames, k_max, 4):
                raise UserInputError(
                    f"drags tensor must be (B, {num_frames}, {k_max}, 4) normalised (docs/design.md §2), got {tuple(tensor.shape)}"
                )
            if not torch.isfinite(tensor).all():
                raise UserInputError("drags contain NaN or inf")
        if tensor.shape[0] == 1 and batch_size > 1:
            tensor = tensor.expand(batch_size, -1, -1, -1)
        if tensor.shape[0] != batch_size:
            raise UserInputError(f"{tensor.shape[0]} drag sets for {batch_size} images")
        return tensor

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        image,
        drags,
        num_frames: int = 14,
        height: int = 256,
        width: int = 256,
        num_inference_steps: int = 50,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 5.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        decode_chunk_size: int | None = None,
        callback_on_step_end: Callable[["PuppetMasterPipeline", int, torch.Tensor, dict], dict] | None = None,
        return_dict: bool = True,
        warp_init_sigma: float | None = None,
        detail_transfer_radius: float | None = None,
    ) -> PuppetMasterPipelineOutput | tuple:
        """Animate ``image`` with ``drags``.

        Args:
            image: PIL image, ``uint8`` array ``(H, W, 3)``, or tensor ``(B, 3, H, W)`` /
                ``(3, H, W)`` in [0, 1]. Resized to ``height × width`` (use
                :func:`puppet_master.preprocessing.prepare_input` first to keep the aspect
                ratio and map the drags).
            drags: a :class:`~puppet_master.drags.DragSet` (its pixel coordinates refer to
                the image as given; resampled to ``num_frames``) or a normalised tensor
                ``(B, N, K_max, 4)`` / ``(N, K_max, 4)`` (docs/design.md §2).
            num_frames: ``N`` (14 for the released model; any count works).
            height, width: output size in pixels; multiples of 8 × the UNet stride.
            num_inference_steps: Euler steps (50 in the paper).
            min_guidance_scale, max_guidance_scale: CFG weight at the first / last frame;
                ``max_guidance_scale ≤ 1`` disables CFG.
            generator: ``torch.Generator`` for the initial noise (reproducible output).
            latents: optional initial noise ``(B, N, 4, h, w)`` (before σ_max scaling).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            decode_chunk_size: frames decoded at once. Default: all, except 8 for an image
                VAE on a GPU (it decodes frames independently, so the output is the same and
                the peak memory bounded); SVD's temporal decoder mixes frames, so it gets all
                of them unless told otherwise.
            callback_on_step_end: ``f(pipe, step, timestep, {"latents": …}) -> dict``
                called after every step (may replace ``"latents"``).
            return_dict: return :class:`PuppetMasterPipelineOutput` (default) or a tuple.
            warp_init_sigma: not in the paper: start from the drag-warped first-frame latent
                at this noise level (see the class docstring); ``None`` uses the
                pipeline's setting, ``0`` forces the paper's sampling from pure noise.
                ``latents``, if given, is then the noise added to the warped latent.
            detail_transfer_radius: not in the paper: add the input's detail lost by the
                autoencoder back to the decoded frames, moved along the drags by a field of
                this radius in latent cells (class docstring); ``None`` uses the pipeline's
                setting, ``0`` decodes as the paper does. Ignored for ``output_type="latent"``.

        Raises:
            UserInputError: bad image, drags, sizes or options.
        """
        stride = self.vae_scale_factor * self.unet.spatial_stride
        if height % stride or width % stride or height <= 0 or width <= 0:
            raise UserInputError(f"height and width must be positive multiples of {stride}, got {height}x{width}")
        if num_frames < 2:
            raise UserInputError(f"num_frames must be at least 2, got {num_frames}")
        if num_inference_steps < 1:
            raise UserInputError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise UserInputError(f"output_type must be pil, np, pt or latent, got {output_type!r}")
        device = self._execution_device
        pixels = self._prepare_image(image, height, width)  # (B, 3, H, W) in [0, 1]
        batch_size = pixels.shape[0]
        drag_tensor = self._prepare_drags(drags, num_frames, batch_size).to(device)

        embeddings = self.encode_image_embedding(pixels.to(device))
        first_latent = self.encode_first_frame(pixels * 2 - 1)
        unet_dtype = self.unet.dtype
        embeddings, first_latent = (t.to(device, unet_dtype) for t in (embeddings, first_latent))
        drag_tensor = drag_tensor.to(device, torch.float32)  # positions in float32; the conditioning is cast

        cond_latent, cond_drags = first_latent, drag_tensor  # the conditional branch's, for the warps below
        do_cfg = max_guidance_scale > 1.0
        if do_cfg:
            embeddings = torch.cat([torch.zeros_like(embeddings), embeddings])
            first_latent = torch.cat([torch.zeros_like(first_latent), first_latent])
            drag_tensor = torch.cat([torch.zeros_like(drag_tensor), drag_tensor])
        h_lat, w_lat = height // self.vae_scale_factor, width // self.vae_scale_factor
        # everything that depends only on the drags, once per call (not per step)
        conditioning = self.unet.prepare_drag_conditioning(
            drag_tensor, h_lat, w_lat, image_latents=first_latent, precompute_modulation=True
        )
        unet_call = self._graphed_unet or self._unet_call

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        shape = (batch_size, num_frames, self.unet.config.out_channels, h_lat, w_lat)
        if latents is None:
            latents = torch.randn(shape, generator=generator, device=generator.device if generator is not None else "cpu", dtype=torch.float32)
        elif latents.shape != shape:
            raise UserInputError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        init_sigma = self.config.get("warp_init_sigma") if warp_init_sigma is None else warp_init_sigma
        if init_sigma is not None and init_sigma < 0:
            raise UserInputError(f"warp_init_sigma must be >= 0 (0 or None: sampling from pure noise), got {init_sigma}")
        detail_radius = self.config.get("detail_transfer_radius") if detail_transfer_radius is None else detail_transfer_radius
        if detail_radius is not None and not detail_radius >= 0:
            raise UserInputError(f"detail_transfer_radius must be >= 0 (0 or None: no detail transfer), got {detail_radius}")
        if init_sigma:
            # not in the paper: SDEdit-style start from the drag-warped first frame (class docstring)
            sigmas = self.scheduler.sigmas[:-1].to(device)
            begin = min(int((sigmas > init_sigma).sum()), len(timesteps) - 1)
            warped = warp_latents_by_drags(cond_latent.float(), cond_drags.float(),
                                           getattr(self.unet.config, "drag_warp_radius", 1.5),
                                           getattr(self.unet.config, "drag_warp_background", 0.02))
            timesteps = timesteps[begin:]
            self.scheduler.set_begin_index(begin)
            latents = warped * self.vae.config.scaling_factor + latents.to(device, torch.float32) * sigmas[begin]
        else:
            latents = latents.to(device, torch.float32) * self.scheduler.init_noise_sigma

        scales = guidance_scales(num_frames, min_guidance_scale, max_guidance_scale).to(device)[None, :, None, None, None]
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                model_in = torch.cat([latents] * 2) if do_cfg else latents
                model_in = self.scheduler.scale_model_input(model_in, t)
                pred = unet_call(model_in.to(unet_dtype), t, first_latent, embeddings, conditioning).float()
                if do_cfg:
                    uncond, cond = pred.chunk(2)
                    pred = uncond + scales * (cond - uncond)
                latents = self.scheduler.step(pred, t, latents).prev_sample
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                    latents = out.get("latents", latents)
                progress.update()

        if output_type == "latent":
            frames = latents
        else:
            temporal_vae = isinstance(self.vae, AutoencoderKLTemporalDecoder)
            if decode_chunk_size is None and latents.device.type == "cuda" and not temporal_vae:
                decode_chunk_size = 8  # an image VAE decodes frames independently: chunks bound the memory
            video = self.decode_latents(latents, decode_chunk_size)  # (B, N, 3, H, W) in [-1, 1]
            if detail_radius:
                video = self.transfer_details(video, pixels * 2 - 1, cond_latent, cond_drags, detail_radius)
            frames = self.video_processor.postprocess_video(video.permute(0, 2, 1, 3, 4), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return PuppetMasterPipelineOutput(frames=frames)


def load_unet_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read drag-UNet weights: safetensors (preferred) or a torch file loaded with ``weights_only=True``.

    Common wrappers are removed: a ``state_dict``/``model`` entry and ``module.``/``unet.``
    key prefixes.

    Raises:
        ModelLoadError: missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"UNet weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader error is a bad file for the user
        raise ModelLoadError(f"cannot read UNet weights {str(path)!r}: {exc}") from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    for prefix in ("module.", "unet.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state
