"""Drag-conditioned image-to-video sampling (paper §3, App. C; docs/design.md §5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder, AutoencoderTiny, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from safetensors.torch import load_file

from ..drags import DragSet
from ..drags.warp import warp_images_by_drags, warp_latents_by_drags
from ..errors import ModelLoadError, UserInputError
from ..models import AutoencoderKLTinyDecoder, DragConditioning, UNetDragSpatioTemporalConditionModel
from . import chroma
from .components import load_svd_components
from .cuda_graph import GraphedUNet
from .model_source import check_model_folder, resolve_model
from .pipeline_svd_base import FirstFrameTie, SVDStylePipeline, guidance_scales

__all__ = ["PAPER_SAMPLING", "SAMPLING_DEFAULTS", "PuppetMasterPipeline", "PuppetMasterPipelineOutput", "guidance_scales",
           "load_unet_state_dict"]


#: The paper's sampling (§3): 50 Euler steps, CFG weight rising from 1 at the first frame to 5 at the last.
PAPER_SAMPLING = {"num_inference_steps": 50, "min_guidance_scale": 1.0, "max_guidance_scale": 5.0}

#: Every sampling setting a model may state in ``model_index.json``, with its default when it does not: the
#: paper's sampling, and the three settings not in the paper off (class docstring).
SAMPLING_DEFAULTS = {**PAPER_SAMPLING, "warp_init_sigma": None, "detail_transfer_radius": None,
                     "tie_first_frame": False, "tie_release_sigma": 0.0, "chroma_anchor_sigma": None}


@dataclass
class PuppetMasterPipelineOutput(BaseOutput):
    """Output of :class:`PuppetMasterPipeline`.

    Attributes:
        frames: per video a list of ``N`` PIL images (``output_type="pil"``), or an array
            ``(B, N, H, W, 3)`` in [0, 1] (``"np"``), or a tensor ``(B, N, 3, H, W)`` in
            [0, 1] (``"pt"``), or the latents ``(B, N, 4, h, w)`` (``"latent"``).
    """

    frames: Any


class PuppetMasterPipeline(SVDStylePipeline):
    """Generate a video of an object's parts moving as the drags say (Puppet-Master).

    Components:
        vae: ``AutoencoderKLTemporalDecoder`` (SVD's VAE), or ``AutoencoderKL`` (an image
            VAE), or :class:`~puppet_master.models.AutoencoderKLTinyDecoder` (an image VAE's
            encoder with a tiny decoder distilled from its decoder: the embedded default
            model's), or ``AutoencoderTiny``, or any diffusers VAE with ``encode``/``decode``
            and ``config.scaling_factor``.
        image_encoder: ``CLIPVisionModelWithProjection`` (optional; without it the UNet
            gets a zero image embedding).
        feature_extractor: ``CLIPImageProcessor`` for the image encoder (optional).
        unet: :class:`~puppet_master.models.UNetDragSpatioTemporalConditionModel`.
        scheduler: ``EulerDiscreteScheduler`` with SVD's EDM configuration (the paper's),
            or another diffusers scheduler of the same EDM parameterisation
            (:mod:`puppet_master.pipelines.schedulers`: EDM Euler, DPM-Solver++ 2M/3M).

    Sampling (docs/design.md §5; the loop is :class:`~.pipeline_svd_base.SVDStylePipeline`'s,
    shared with DragAnything): ``num_inference_steps`` scheduler steps over Karras σ; the UNet
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

    **Not in the paper:** ``tie_first_frame`` (a ``model_index.json`` setting or a call
    argument; off by default) holds frame 0 at the input while sampling: frame 0 of the
    generated video is by definition the input image, so after every scheduler step (and
    at the start) frame 0's latent is replaced by ``scaling_factor · z_first + σ_next · ε₀``
    (``z_first`` the first frame's VAE latent, ``ε₀`` frame 0's own initial noise, ``σ_next``
    the σ the step reached; :class:`~.pipeline_svd_base.FirstFrameTie`). The other frames
    attend to a frame 0 that is the input at every noise level, and at the final σ = 0
    frame 0 is exactly the input's latent, so it decodes to the input's VAE round trip (and
    with detail transfer, to the input itself). ``tie_release_sigma`` (default 0) stops the
    tie below that σ: e.g. a value under the schedule's last non-zero σ keeps the last step's
    own frame 0, which every step still saw tied (frame 0 then matches its neighbours as the
    model made them, and stays close to the input; the default model's setting, docs/design.md §5).

    **Not in the paper:** chroma anchoring (``chroma_anchor_sigma``, a ``model_index.json``
    setting or a call argument; off by default) takes the colour of every decoded frame at
    scales coarser than a Gaussian of that many pixels from the input warped along the drags
    (the UNet's :attr:`~puppet_master.models.UNetDragSpatioTemporalConditionModel.warp_settings`),
    and keeps the generated luma at every scale and the generated chroma below that scale
    (:func:`~puppet_master.pipelines.chroma.anchor_chroma`, after detail transfer). It removes
    the colour blotches a small model drifts into on inputs unlike its training data; the
    motion and the shapes, which live in the luma, stay the model's. The released weights do
    not need it (SVD's autoencoder and a large UNet keep the colours); the default model
    ships it (docs/design.md §5).
    """

    model_cpu_offload_seq = "image_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKLTemporalDecoder | AutoencoderKL | AutoencoderKLTinyDecoder | AutoencoderTiny,
        unet: UNetDragSpatioTemporalConditionModel,
        scheduler: EulerDiscreteScheduler,
        image_encoder=None,
        feature_extractor=None,
        warp_init_sigma: float | None = None,
        detail_transfer_radius: float | None = None,
        tie_first_frame: bool = False,
        tie_release_sigma: float | None = None,
        num_inference_steps: int | None = None,
        min_guidance_scale: float | None = None,
        max_guidance_scale: float | None = None,
        chroma_anchor_sigma: float | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae, image_encoder=image_encoder, feature_extractor=feature_extractor, unet=unet, scheduler=scheduler
        )
        # not in the paper (None / False = the paper's sampling and decoding); saved in model_index.json
        self.register_to_config(warp_init_sigma=warp_init_sigma, detail_transfer_radius=detail_transfer_radius,
                                tie_first_frame=tie_first_frame, tie_release_sigma=tie_release_sigma,
                                chroma_anchor_sigma=chroma_anchor_sigma)
        # the model's own sampling defaults (None = the paper's, PAPER_SAMPLING), e.g. a few-step student's
        self.register_to_config(num_inference_steps=num_inference_steps, min_guidance_scale=min_guidance_scale,
                                max_guidance_scale=max_guidance_scale)
        self._init_video_processing()
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

    # ------------------------------------------------------------------ what differs from DragAnything
    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this many pixels (VAE factor × UNet stride: 64 for SVD's)."""
        return self.vae_scale_factor * self.unet.spatial_stride

    @torch.no_grad()
    def transfer_details(self, video: torch.Tensor, image: torch.Tensor, first_latent: torch.Tensor,
                         drags: torch.Tensor, radius: float, reconstruction: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """Detail transfer (not in the paper; class docstring): ``video + warp(image − D(E(image)))``.

        Args:
            video: decoded frames ``(B, N, 3, H, W)`` in [−1, 1].
            image: the input ``(B, 3, H, W)`` in [−1, 1].
            first_latent: its VAE posterior mean ``(B, C, H/f, W/f)`` (unscaled,
                :meth:`encode_first_frame`).
            drags: normalised drags ``(B, N, K, 4)`` (docs/design.md §2).
            radius: Gaussian radius of the drag displacement field, in latent cells (> 0).
            reconstruction: ``D(E(image))`` ``(B, 3, H, W)`` in [−1, 1] when already decoded
                (frame 0 of a video sampled with the first-frame tie); ``None`` decodes it.

        Returns:
            ``(B, N, 3, H, W)`` float32 in [−1, 1].
        """
        if reconstruction is None:
            scaled = first_latent[:, None].float() * self.vae.config.scaling_factor
            reconstruction = self.decode_latents(scaled)[:, 0]  # (B, 3, H, W)
        residual = image.to(reconstruction.device, torch.float32) - reconstruction
        moved = warp_images_by_drags(residual, drags.float().to(residual.device), self.vae_scale_factor, radius,
                                     self.unet.warp_settings.background)
        return (video.float() + moved.to(video.device)).clamp(-1, 1)

    @torch.no_grad()
    def anchor_chroma(self, video: torch.Tensor, image: torch.Tensor, drags: torch.Tensor, sigma: float
                      ) -> torch.Tensor:
        """Chroma anchoring (not in the paper; class docstring).

        Args:
            video: decoded frames ``(B, N, 3, H, W)`` in [−1, 1].
            image: the input ``(B, 3, H, W)`` in [−1, 1].
            drags: normalised drags ``(B, N, K, 4)`` (docs/design.md §2).
            sigma: Gaussian standard deviation in pixels (> 0).

        Returns:
            ``(B, N, 3, H, W)`` float32 in [−1, 1]: ``video``'s luma, its chroma finer than
            ``sigma`` and the chroma coarser than ``sigma`` of ``image`` warped along ``drags``
            (:func:`~puppet_master.pipelines.chroma.anchor_chroma`). The correction is computed
            at ``1/f`` of the resolution, ``f`` the largest divisor of the VAE's factor with
            ``f ≤ sigma / 2`` (4 for 8 pixels), where a Gaussian of ``sigma / f ≥ 2`` pixels
            is still well sampled.
        """
        warp = self.unet.warp_settings
        factor = max(f for f in range(1, self.vae_scale_factor + 1)
                     if self.vae_scale_factor % f == 0 and (f == 1 or f <= sigma / 2))
        small = torch.nn.functional.avg_pool2d(image.to(video.device, torch.float32), factor)
        moved = warp_images_by_drags(small, drags.float().to(video.device), self.vae_scale_factor // factor,
                                     warp.radius, warp.background)
        # (−1, 1): a colour that would leave the range is desaturated, not clipped, so the luma stays the model's
        return chroma.anchor_chroma(video, moved, sigma, value_range=(-1.0, 1.0)).clamp(-1, 1)

    def _unet_call(self, sample, timestep, image_latents, encoder_hidden_states, drag_conditioning) -> torch.Tensor:
        return self.unet(
            sample, timestep, image_latents=image_latents, encoder_hidden_states=encoder_hidden_states,
            drag_conditioning=drag_conditioning,
        ).sample

    def _predict(self, latent_model_input: torch.Tensor, t: torch.Tensor, conditioning: "_DragCall") -> torch.Tensor:
        unet_call = self._graphed_unet or self._unet_call
        return unet_call(latent_model_input.to(self.unet.dtype), t, conditioning.first_latent, conditioning.embeddings,
                         conditioning.drags)

    # ------------------------------------------------------------------ inputs
    def _check_drags(self, drags, num_frames: int, batch_size: int) -> None:
        k_max = self.unet.config.num_drags
        if isinstance(drags, DragSet):  # one set of drags for every image
            if drags.num_drags > k_max:
                raise UserInputError(f"{drags.num_drags} drags do not fit in the model's {k_max} slots")
            return
        try:
            tensor = torch.as_tensor(drags, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise UserInputError(f"drags must be a DragSet or a tensor (B, {num_frames}, {k_max}, 4), got "
                                 f"{type(drags).__name__}") from exc
        if tensor.ndim == 3:
            tensor = tensor[None]
        if tensor.ndim != 4 or tensor.shape[1:] != (num_frames, k_max, 4):
            raise UserInputError(
                f"drags tensor must be (B, {num_frames}, {k_max}, 4) normalised (docs/design.md §2), got {tuple(tensor.shape)}"
            )
        if not torch.isfinite(tensor).all():
            raise UserInputError("drags contain NaN or inf")
        if tensor.shape[0] not in (1, batch_size):
            raise UserInputError(f"{tensor.shape[0]} drag sets for {batch_size} images")

    def _prepare_drags(self, drags, num_frames: int, batch_size: int) -> torch.Tensor:
        """Drags (:meth:`check_inputs` checked them) as a float32 tensor ``(B, N, K_max, 4)``."""
        if isinstance(drags, DragSet):
            tensor = drags.resample(num_frames).to_tensor(self.unet.config.num_drags)[None]
        else:
            tensor = torch.as_tensor(drags, dtype=torch.float32)
            tensor = tensor[None] if tensor.ndim == 3 else tensor
        return tensor.expand(batch_size, -1, -1, -1) if tensor.shape[0] == 1 and batch_size > 1 else tensor

    def check_inputs(self, image, drags, height: int, width: int, num_frames: int, num_inference_steps: int,
                     output_type: str, latents: torch.Tensor | None = None,
                     warp_init_sigma: float | None = None, detail_transfer_radius: float | None = None,
                     callback_on_step_end_tensor_inputs: Sequence[str] | None = None, scheduler: Any = None,
                     generator=None, tie_release_sigma: float | None = None,
                     chroma_anchor_sigma: float | None = None) -> None:
        """Every argument check of :meth:`__call__`, before anything is encoded.

        Raises:
            UserInputError: a bad image, drags, size, count, output type, setting, latents
                shape, number of generators, callback input or scheduler name.
        """
        super().check_inputs(height, width, num_frames, num_inference_steps, output_type,
                             callback_on_step_end_tensor_inputs, scheduler)
        batch_size = self._check_image(image)
        self._check_drags(drags, num_frames, batch_size)
        if warp_init_sigma is not None and not warp_init_sigma >= 0:
            raise UserInputError(f"warp_init_sigma must be >= 0 (0 or None: sampling from pure noise), got {warp_init_sigma}")
        if detail_transfer_radius is not None and not detail_transfer_radius >= 0:
            raise UserInputError(
                f"detail_transfer_radius must be >= 0 (0 or None: no detail transfer), got {detail_transfer_radius}")
        if tie_release_sigma is not None and not tie_release_sigma >= 0:
            raise UserInputError(
                f"tie_release_sigma must be >= 0 (0: frame 0 held at the input down to σ = 0), got {tie_release_sigma}")
        if chroma_anchor_sigma is not None and not 0 <= chroma_anchor_sigma <= max(height, width):
            raise UserInputError(f"chroma_anchor_sigma must be between 0 (0 or None: no chroma anchoring) and the "
                                 f"frame size {max(height, width)} pixels, got {chroma_anchor_sigma}")
        self._check_latents(latents, (batch_size, num_frames, self.unet.config.out_channels,
                                      height // self.vae_scale_factor, width // self.vae_scale_factor), generator)

    def prepare_latents(self, batch_size: int, num_frames: int, num_channels_latents: int, height: int, width: int,
                        dtype: torch.dtype, device: torch.device, generator, latents: torch.Tensor | None = None,
                        scheduler=None, begin: int = 0, warp_init_sigma: float | None = None,
                        image_latents: torch.Tensor | None = None, drags: torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Starting latents and their noise (:meth:`SVDStylePipeline.prepare_latents`), with the warped start.

        With ``warp_init_sigma`` (not in the paper; class docstring) the start is the first-frame
        latent ``image_latents (B, C, h, w)`` (unscaled) warped along ``drags (B, N, K, 4)``
        to every frame (:func:`~puppet_master.drags.warp.warp_latents_by_drags`, with the
        UNet's :attr:`~puppet_master.models.UNetDragSpatioTemporalConditionModel.warp_settings`),
        scaled, plus the noise times the σ of step ``begin``; otherwise pure noise.
        """
        start = None
        if warp_init_sigma:
            warp = self.unet.warp_settings
            warped = warp_latents_by_drags(image_latents.float(), drags.float(), warp.radius, warp.background)
            start = warped * self.vae.config.scaling_factor
        return super().prepare_latents(batch_size, num_frames, num_channels_latents, height, width, dtype, device,
                                       generator, latents, scheduler=scheduler, start_latents=start, begin=begin)

    def sampling_settings(self, **given) -> dict:
        """The settings a call samples with: each given value, else the model's (``model_index.json``), else the paper's.

        Args:
            given: any of ``num_inference_steps``, ``min_guidance_scale``,
                ``max_guidance_scale``, ``warp_init_sigma``, ``detail_transfer_radius``,
                ``tie_first_frame``, ``tie_release_sigma``, ``chroma_anchor_sigma``; ``None``
                means not given.

        Returns:
            All eight, resolved (:data:`PAPER_SAMPLING` for the paper's; the settings not in
            the paper default to ``None`` / ``False`` / 0, the paper's sampling and decoding).
        """
        unknown = set(given) - set(SAMPLING_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown sampling settings {sorted(unknown)}")
        resolved = {}
        for name, paper in SAMPLING_DEFAULTS.items():
            value = given.get(name)
            if value is None:
                value = self.config.get(name)
            resolved[name] = paper if value is None else value
        return resolved

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        image,
        drags,
        num_frames: int = 14,
        height: int = 256,
        width: int = 256,
        num_inference_steps: int | None = None,
        min_guidance_scale: float | None = None,
        max_guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        decode_chunk_size: int | None = None,
        callback_on_step_end: Callable[["PuppetMasterPipeline", int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        return_dict: bool = True,
        warp_init_sigma: float | None = None,
        detail_transfer_radius: float | None = None,
        tie_first_frame: bool | None = None,
        scheduler: str | SchedulerMixin | None = None,
        tie_release_sigma: float | None = None,
        chroma_anchor_sigma: float | None = None,
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
            height, width: output size in pixels; multiples of :attr:`size_multiple`
                (8 × the UNet stride).
            num_inference_steps: denoising steps; ``None`` uses the model's setting
                (``model_index.json``), else the paper's 50 (:data:`PAPER_SAMPLING`).
            min_guidance_scale, max_guidance_scale: CFG weight at the first / last frame;
                ``max_guidance_scale ≤ 1`` disables CFG (one UNet call per step, as a
                distilled few-step model samples). ``None`` uses the model's setting, else the
                paper's 1 and 5.
            generator: ``torch.Generator`` (or one per video) for the initial noise
                (reproducible output).
            latents: optional initial noise ``(B, N, 4, h, w)`` (before σ scaling).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            decode_chunk_size: frames decoded at once. Default: all, except 8 for an image
                VAE on a GPU (it decodes frames independently, so the output is the same and
                the peak memory bounded); SVD's temporal decoder mixes frames, so it gets all
                of them unless told otherwise.
            callback_on_step_end: ``f(pipe, step, timestep, callback_kwargs) -> dict`` called
                after every step with the tensors named in
                ``callback_on_step_end_tensor_inputs``; a returned ``"latents"`` replaces them.
            callback_on_step_end_tensor_inputs: names of the tensors passed to the callback
                (``_callback_tensor_inputs``: ``"latents"``).
            return_dict: return :class:`PuppetMasterPipelineOutput` (default) or a tuple.
            warp_init_sigma: not in the paper: start from the drag-warped first-frame latent
                at this noise level (see the class docstring); ``None`` uses the
                pipeline's setting, ``0`` forces the paper's sampling from pure noise.
                ``latents``, if given, is then the noise added to the warped latent.
            detail_transfer_radius: not in the paper: add the input's detail lost by the
                autoencoder back to the decoded frames, moved along the drags by a field of
                this radius in latent cells (class docstring); ``None`` uses the pipeline's
                setting, ``0`` decodes as the paper does. Ignored for ``output_type="latent"``.
            tie_first_frame: not in the paper: hold frame 0's latent at the first frame's
                (class docstring); ``None`` uses the pipeline's setting.
            scheduler: sample this call with a named scheduler
                (:data:`~puppet_master.pipelines.schedulers.SCHEDULER_NAMES`, built from the
                pipeline's scheduler configuration) or a given diffusers scheduler; ``None``
                uses the pipeline's. The pipeline's own scheduler is not changed.
            tie_release_sigma: not in the paper: σ below which the tie no longer holds frame 0
                (class docstring); ``None`` uses the pipeline's setting, else 0 (held to the end).
            chroma_anchor_sigma: not in the paper: take the colour coarser than a Gaussian of
                this many pixels from the input moved along the drags (class docstring);
                ``None`` uses the pipeline's setting, ``0`` keeps the generated colour.
                Ignored for ``output_type="latent"``.

        Raises:
            UserInputError: bad image, drags, sizes or options.
        """
        # 0. settings: the call's, else the pipeline's (model_index.json), else the paper's
        settings = self.sampling_settings(
            num_inference_steps=num_inference_steps, min_guidance_scale=min_guidance_scale,
            max_guidance_scale=max_guidance_scale, warp_init_sigma=warp_init_sigma,
            detail_transfer_radius=detail_transfer_radius, tie_first_frame=tie_first_frame,
            tie_release_sigma=tie_release_sigma, chroma_anchor_sigma=chroma_anchor_sigma)
        num_inference_steps = settings["num_inference_steps"]
        min_guidance_scale, max_guidance_scale = settings["min_guidance_scale"], settings["max_guidance_scale"]
        init_sigma, detail_radius = settings["warp_init_sigma"], settings["detail_transfer_radius"]
        tie = bool(settings["tie_first_frame"])

        # 1. every argument check, before any encoding
        self.check_inputs(image, drags, height, width, num_frames, num_inference_steps, output_type, latents,
                          init_sigma, detail_radius, callback_on_step_end_tensor_inputs, scheduler, generator,
                          settings["tie_release_sigma"], settings["chroma_anchor_sigma"])
        self._guidance_scale = max_guidance_scale
        device = self._execution_device
        pixels = self._prepare_image(image, height, width)  # (B, 3, H, W) in [0, 1]
        batch_size = pixels.shape[0]
        drag_tensor = self._prepare_drags(drags, num_frames, batch_size).to(device, torch.float32)  # positions in float32

        # 2. the conditions: CLIP embedding, first-frame latent, drags (unconditional branch first under CFG)
        unet_dtype = self.unet.dtype
        embeddings = self.encode_image_embedding(pixels.to(device)).to(device, unet_dtype)
        first_latent = self.encode_first_frame(pixels * 2 - 1).to(device, unet_dtype)
        cond_latent, cond_drags = first_latent, drag_tensor  # the conditional branch's, for the warps and the tie
        if self.do_classifier_free_guidance:
            embeddings = torch.cat([torch.zeros_like(embeddings), embeddings])
            first_latent = torch.cat([torch.zeros_like(first_latent), first_latent])
            drag_tensor = torch.cat([torch.zeros_like(drag_tensor), drag_tensor])
        h_lat, w_lat = height // self.vae_scale_factor, width // self.vae_scale_factor
        # everything that depends only on the drags, once per call (not per step)
        drag_conditioning = self.unet.prepare_drag_conditioning(
            drag_tensor, h_lat, w_lat, image_latents=first_latent, precompute_modulation=True
        )

        # 3. schedule and starting latents
        sampler = self._scheduler_for_call(scheduler)
        timesteps, begin = self.prepare_timesteps(sampler, num_inference_steps, device, init_sigma)
        latents, noise = self.prepare_latents(
            batch_size, num_frames, self.unet.config.out_channels, height, width, torch.float32, device, generator,
            latents, scheduler=sampler, begin=begin, warp_init_sigma=init_sigma, image_latents=cond_latent,
            drags=cond_drags,
        )
        first_frame_tie = None
        if tie:  # not in the paper (class docstring)
            first_frame_tie = FirstFrameTie(cond_latent.float() * self.vae.config.scaling_factor, noise[:, 0].float(),
                                            float(settings["tie_release_sigma"] or 0.0))

        # 4. denoising
        latents = self.denoise(
            latents, timesteps, _DragCall(embeddings, first_latent, drag_conditioning),
            guidance_scales(num_frames, min_guidance_scale, max_guidance_scale), scheduler=sampler,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, first_frame_tie=first_frame_tie,
            description=self._progress_description(len(timesteps), num_inference_steps, init_sigma),
        )

        # 5. decoding
        if output_type == "latent":
            frames = latents
        else:
            video = self.decode_video(latents, decode_chunk_size)  # (B, N, 3, H, W) in [-1, 1]
            if detail_radius:
                # frame 0 held at the first frame's latent decodes to D(E(image)) (an image VAE
                # decodes frames independently): no second decode of it
                reconstruction = None
                if (first_frame_tie is not None and not self._temporal_vae
                        and torch.equal(latents[:, 0], first_frame_tie.latent.to(latents.dtype))):
                    reconstruction = video[:, 0]
                video = self.transfer_details(video, pixels * 2 - 1, cond_latent, cond_drags, detail_radius,
                                              reconstruction=reconstruction)
            if settings["chroma_anchor_sigma"]:
                video = self.anchor_chroma(video, pixels * 2 - 1, cond_drags, float(settings["chroma_anchor_sigma"]))
            frames = self.postprocess_video(video, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return PuppetMasterPipelineOutput(frames=frames)


@dataclass(frozen=True)
class _DragCall:
    """The per-call conditioning of the drag UNet (CFG-doubled: unconditional first)."""

    embeddings: torch.Tensor
    first_latent: torch.Tensor
    drags: DragConditioning


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
