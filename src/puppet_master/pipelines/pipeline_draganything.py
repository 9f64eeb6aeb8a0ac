"""DragAnything: entity-level drags on Stable Video Diffusion (Wu et al. 2024), as a diffusers pipeline.

Each drag moves the *entity* under its start point (a mask of the first frame). Per
frame the ControlNet (:class:`~puppet_master.models.DragAnythingControlNetModel`) sees a
Gaussian disc on every entity's trajectory point and the entity's DIFT feature vector
painted into the same disc (:mod:`puppet_master.entity`); its residuals steer SVD's frozen
UNet. Sampling is SVD's (docs/design.md §5), the loop shared with Puppet-Master
(:class:`~.pipeline_svd_base.SVDStylePipeline`): EDM Euler over Karras σ (or another
scheduler of :mod:`.schedulers`), the first-frame latent concatenated to the noisy latents,
CLIP image embedding, ``fps``/``motion_bucket_id``/noise-augmentation micro-conditioning,
and classifier-free guidance rising linearly over the frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..drags import DragSet
from ..entity import (
    DIFT_ENSEMBLE,
    DIFT_TIMESTEP,
    DIFT_UP_BLOCK,
    MAX_RADIUS,
    DiftFeaturizer,
    DragAnythingConditions,
    assign_drags_to_masks,
    draganything_conditions,
    entity_features,
    inscribed_radius,
    pool_channels,
    resize_mask,
    segment_entities,
)
from ..errors import ModelLoadError, UserInputError
from ..models import DragAnythingControlNetModel, UNetSpatioTemporalControlNetConditionModel
from ..preprocessing import Letterbox, letterbox
from .model_source import check_component_configs, device_and_dtype, resolve_model
from .pipeline_svd_base import SVDStylePipeline, guidance_scales

#: The release's resolution (width × height) and entity-feature modes.
DEFAULT_WIDTH, DEFAULT_HEIGHT = 576, 320
ENTITY_FEATURE_MODES = ("vector", "first-channel")


@dataclass
class DragAnythingPipelineOutput(BaseOutput):
    """Output of :class:`DragAnythingPipeline`.

    Attributes:
        frames: per video a list of ``N`` PIL images (``"pil"``), an array ``(B, N, H, W, 3)``
            in [0, 1] (``"np"``), a tensor ``(B, N, 3, H, W)`` in [0, 1] (``"pt"``), or the
            latents ``(B, N, 4, h, w)`` (``"latent"``).
            With ``keep_aspect`` the frames are the image's part of the model frame
            (``letterbox.size``), the latents the whole frame.
        conditions: the :class:`~puppet_master.entity.DragAnythingConditions` used (model resolution).
        masks: the entity mask of each drag, bool ``(H, W)`` at the model resolution.
        letterbox: with ``keep_aspect``, where the image sat in the model frame
            (:class:`~puppet_master.preprocessing.Letterbox`); ``None`` when it was stretched.
    """

    frames: Any
    conditions: DragAnythingConditions | None = None
    masks: list[np.ndarray] | None = None
    letterbox: Letterbox | None = None


@dataclass(frozen=True)
class _ControlNetCall:
    """The per-call conditioning of SVD's UNet and the ControlNet (CFG-doubled: unconditional first)."""

    embeddings: torch.Tensor
    image_latents: torch.Tensor
    added_time_ids: torch.Tensor
    cond_embedding: torch.Tensor
    scale: float


class DragAnythingPipeline(SVDStylePipeline):
    """Generate a video in which the dragged entities follow their trajectories (DragAnything).

    Components:
        vae: SVD's ``AutoencoderKLTemporalDecoder``.
        unet: :class:`~puppet_master.models.UNetSpatioTemporalControlNetConditionModel`
            (SVD's UNet weights).
        controlnet: :class:`~puppet_master.models.DragAnythingControlNetModel`.
        scheduler: SVD's ``EulerDiscreteScheduler`` (EDM, Karras σ, v-prediction).
        dift_unet, dift_vae, dift_text_encoder, dift_tokenizer, dift_scheduler: the
            Stable Diffusion 1.5 UNet, VAE, CLIP text encoder, tokenizer and
            ``DDIMScheduler`` that compute the entity features (DIFT, :mod:`puppet_master.entity.dift`).
        image_encoder, feature_extractor: SVD's CLIP image encoder and its processor
            (optional; without them the UNet sees a zero image embedding).
    """

    model_cpu_offload_seq = "dift_text_encoder->dift_vae->dift_unet->image_encoder->controlnet->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKLTemporalDecoder,
        unet: UNetSpatioTemporalControlNetConditionModel,
        controlnet: DragAnythingControlNetModel,
        scheduler: EulerDiscreteScheduler,
        dift_unet,
        dift_vae,
        dift_text_encoder,
        dift_tokenizer,
        dift_scheduler,
        image_encoder=None,
        feature_extractor=None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae, unet=unet, controlnet=controlnet, scheduler=scheduler, dift_unet=dift_unet, dift_vae=dift_vae,
            dift_text_encoder=dift_text_encoder, dift_tokenizer=dift_tokenizer, dift_scheduler=dift_scheduler,
            image_encoder=image_encoder, feature_extractor=feature_extractor,
        )
        self._init_video_processing()

    # ------------------------------------------------------------------ assembly
    @classmethod
    def from_svd(
        cls,
        svd: str | Path,
        controlnet: str | Path | DragAnythingControlNetModel,
        sd15: str | Path,
        torch_dtype: torch.dtype | None = None,
    ) -> "DragAnythingPipeline":
        """Compose the released pieces: SVD img2vid(-xt), the DragAnything ControlNet and an SD-1.5 model.

        Args:
            svd: folder or hub id of ``stabilityai/stable-video-diffusion-img2vid`` (the
                release's demo) or ``-img2vid-xt``: ``vae``, ``unet``, ``image_encoder``,
                ``feature_extractor``, ``scheduler`` subfolders.
            controlnet: the released ControlNet folder (``weijiawu/DragAnything``:
                ``config.json`` + weights) or a loaded model.
            sd15: an SD-1.5 diffusers folder or hub id for the entity features (the release
                uses ChilloutMix, ``windwhinny/chilloutmix``): ``unet``, ``vae``,
                ``text_encoder``, ``tokenizer``, ``scheduler`` subfolders.
            torch_dtype: dtype of every model (e.g. ``torch.float16`` on a GPU).

        Raises:
            ModelLoadError: a missing folder, subfolder or file.
        """
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        try:
            vae = AutoencoderKLTemporalDecoder.from_pretrained(svd, subfolder="vae", torch_dtype=torch_dtype)
            unet = UNetSpatioTemporalControlNetConditionModel.from_pretrained(svd, subfolder="unet", torch_dtype=torch_dtype)
            image_encoder = CLIPVisionModelWithProjection.from_pretrained(svd, subfolder="image_encoder", dtype=torch_dtype)
            feature_extractor = CLIPImageProcessor.from_pretrained(svd, subfolder="feature_extractor")
            scheduler = EulerDiscreteScheduler.from_pretrained(svd, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load Stable Video Diffusion components from {str(svd)!r}: {exc}") from exc
        if not isinstance(controlnet, DragAnythingControlNetModel):
            try:
                controlnet = DragAnythingControlNetModel.from_pretrained(controlnet, torch_dtype=torch_dtype)
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"cannot load the DragAnything ControlNet from {str(controlnet)!r}: {exc}") from exc
        dift = DiftFeaturizer.load_components(str(sd15), torch_dtype)
        return cls(
            vae=vae, unet=unet, controlnet=controlnet, scheduler=scheduler, image_encoder=image_encoder,
            feature_extractor=feature_extractor, **{f"dift_{k}": v for k, v in dift.items()},
        )

    @property
    def featurizer(self) -> DiftFeaturizer:
        """The DIFT featurizer over the ``dift_*`` components."""
        if getattr(self, "_featurizer", None) is None or self._featurizer.unet is not self.dift_unet:
            self._featurizer = DiftFeaturizer(
                self.dift_unet, self.dift_vae, self.dift_text_encoder, self.dift_tokenizer, self.dift_scheduler
            )
        return self._featurizer

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this many pixels (64 for SVD)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.down_blocks) - 1)

    # ------------------------------------------------------------------ conditions
    def entity_masks(self, image: PIL.Image.Image, drags: DragSet, masks: Sequence[np.ndarray] | None) -> list[np.ndarray]:
        """The entity mask of each drag, at the image's size.

        With ``masks`` (bool ``(H, W)`` arrays of the image's size), each drag gets the
        smallest mask containing its start point; without, GrabCut segments the entity
        around each start point (:func:`~puppet_master.entity.segment_entities`).

        Raises:
            UserInputError: masks of another size, or a drag starting outside every mask.
        """
        if masks is None:
            return segment_entities(image, drags.starts)
        self._check_masks(masks, image.size)
        masks = [np.asarray(m).astype(bool) for m in masks]
        return [masks[i] for i in assign_drags_to_masks(drags.starts, masks)]

    @staticmethod
    def _check_masks(masks: Sequence[np.ndarray] | None, size: tuple[int, int]) -> None:
        w, h = size
        for i, m in enumerate(masks or ()):
            m = np.asarray(m)
            if m.shape != (h, w):
                raise UserInputError(f"mask {i + 1} is {m.shape[1]}x{m.shape[0]} but the image is {w}x{h}: give masks of the image's size")

    @torch.no_grad()
    def prepare_conditions(
        self,
        pixels: torch.Tensor,
        drags: DragSet,
        masks: Sequence[np.ndarray],
        max_radius: int | None = MAX_RADIUS,
        entity_feature_mode: str = "vector",
        dift_timestep: int = DIFT_TIMESTEP,
        dift_up_block: int = DIFT_UP_BLOCK,
        dift_ensemble_size: int = DIFT_ENSEMBLE,
        generator: torch.Generator | None = None,
    ) -> DragAnythingConditions:
        """Per-frame conditions at the model resolution.

        Args:
            pixels: the first frame ``(1, 3, H, W)`` in [0, 1] at the model resolution.
            drags: trajectories in pixels of that ``W × H`` image, one frame per video frame.
            masks: one bool ``(H, W)`` entity mask per drag, at the model resolution.
            max_radius: cap of the disc radius in pixels (50 in the release).
            entity_feature_mode: ``"vector"`` paints each entity's pooled DIFT vector (as
                the release's training data does); ``"first-channel"`` paints its first
                DIFT channel on every channel, as the release's demo scripts do.
            dift_timestep, dift_up_block, dift_ensemble_size: DIFT settings (release: 261, 3, 8).
            generator: for DIFT's VAE samples and noise.

        Returns:
            :class:`~puppet_master.entity.DragAnythingConditions` with ``drags.num_frames`` frames.
        """
        if entity_feature_mode not in ENTITY_FEATURE_MODES:
            raise UserInputError(f"entity_feature_mode must be one of {ENTITY_FEATURE_MODES}, got {entity_feature_mode!r}")
        height, width = pixels.shape[-2:]
        fmap = self.featurizer(pixels * 2 - 1, timestep=dift_timestep, up_ft_index=dift_up_block,
                               ensemble_size=dift_ensemble_size, generator=generator)[0]
        feats = entity_features(fmap, masks)  # (K, C_dift)
        c_e = self.controlnet.entity_channels
        if entity_feature_mode == "vector":
            vectors = pool_channels(feats, c_e)
        else:
            vectors = feats[:, :1].expand(-1, c_e).contiguous()
        radii = [inscribed_radius(m, max_radius) for m in masks]
        return draganything_conditions(drags.trajectories, radii, vectors, int(height), int(width))

    @torch.no_grad()
    def embed_conditions(self, conditions: DragAnythingConditions, frame_chunk: int = 8) -> torch.Tensor:
        """The ControlNet's conditioning embedding ``(N, C0, h, w)``, computed ``frame_chunk`` frames at a time."""
        device = self._execution_device
        dtype = self.controlnet.dtype
        parts = []
        for s in range(0, conditions.num_frames, frame_chunk):
            traj = conditions.trajectory_maps[s : s + frame_chunk].to(device, dtype)
            ent = conditions.entity_maps(s, s + frame_chunk).to(device, dtype)
            parts.append(self.controlnet.embed_conditions(traj[None], ent[None]))
        return torch.cat(parts)

    # ------------------------------------------------------------------ what differs from Puppet-Master
    def _predict(self, latent_model_input: torch.Tensor, t: torch.Tensor, conditioning: _ControlNetCall) -> torch.Tensor:
        unet_dtype = self.unet.dtype
        model_in = torch.cat([latent_model_input.to(unet_dtype), conditioning.image_latents], dim=2)
        down, mid = self.controlnet(
            model_in.to(self.controlnet.dtype),
            t,
            encoder_hidden_states=conditioning.embeddings.to(self.controlnet.dtype),
            added_time_ids=conditioning.added_time_ids.to(self.controlnet.dtype),
            conditioning_embedding=conditioning.cond_embedding,
            conditioning_scale=conditioning.scale,
            return_dict=False,
        )
        return self.unet(
            model_in,
            t,
            encoder_hidden_states=conditioning.embeddings,
            added_time_ids=conditioning.added_time_ids,
            down_block_additional_residuals=[d.to(unet_dtype) for d in down],
            mid_block_additional_residual=mid.to(unet_dtype),
        ).sample

    def check_inputs(self, image, drags, masks, height: int, width: int, num_frames: int, num_inference_steps: int,
                     output_type: str, latents: torch.Tensor | None = None, entity_feature_mode: str = "vector",
                     callback_on_step_end_tensor_inputs: Sequence[str] | None = None, scheduler: Any = None,
                     generator=None) -> None:
        """Every argument check of :meth:`__call__`, before any segmentation or encoding.

        Raises:
            UserInputError: a bad image, drags, masks, size, count, output type, entity
                feature mode, latents shape, callback input or scheduler name; components
                that do not belong together.
        """
        super().check_inputs(height, width, num_frames, num_inference_steps, output_type,
                             callback_on_step_end_tensor_inputs, scheduler)
        if self.controlnet.condition_stride != self.vae_scale_factor:
            raise UserInputError(
                f"the ControlNet's condition stride {self.controlnet.condition_stride} differs from the VAE factor "
                f"{self.vae_scale_factor}: the components do not belong together"
            )
        if not isinstance(image, (PIL.Image.Image, np.ndarray)):
            raise UserInputError(f"image must be a PIL image or a uint8 array, got {type(image).__name__}")
        size = image.size if isinstance(image, PIL.Image.Image) else (image.shape[1], image.shape[0])
        if not isinstance(drags, DragSet):
            raise UserInputError(f"drags must be a DragSet, got {type(drags).__name__}")
        if (drags.width, drags.height) != size:
            raise UserInputError(f"drags are for a {drags.width}x{drags.height} image but the image is {size[0]}x{size[1]}")
        self._check_masks(masks, size)
        if entity_feature_mode not in ENTITY_FEATURE_MODES:
            raise UserInputError(f"entity_feature_mode must be one of {ENTITY_FEATURE_MODES}, got {entity_feature_mode!r}")
        self._check_latents(latents, (1, num_frames, self.unet.config.out_channels, height // self.vae_scale_factor,
                                      width // self.vae_scale_factor), generator)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | np.ndarray,
        drags: DragSet,
        masks: Sequence[np.ndarray] | None = None,
        num_frames: int = 14,
        height: int = DEFAULT_HEIGHT,
        width: int = DEFAULT_WIDTH,
        num_inference_steps: int = 25,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 3.0,
        fps: int = 7,
        motion_bucket_id: int = 128,
        noise_aug_strength: float = 0.02,
        controlnet_cond_scale: float = 1.0,
        max_radius: int | None = MAX_RADIUS,
        entity_feature_mode: str = "vector",
        dift_ensemble_size: int = DIFT_ENSEMBLE,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        decode_chunk_size: int | None = None,
        callback_on_step_end: Callable[["DragAnythingPipeline", int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        return_dict: bool = True,
        keep_aspect: bool = False,
        scheduler: str | SchedulerMixin | None = None,
    ) -> DragAnythingPipelineOutput | tuple:
        """Animate ``image`` so that each dragged entity follows its drag.

        Args:
            image: the first frame: PIL image or ``uint8`` array ``(H, W, 3)``, any size;
                resized to ``width × height`` (stretched, as in the release, unless
                ``keep_aspect``).
            drags: a :class:`~puppet_master.drags.DragSet` in pixels of ``image`` (x right,
                y down); resampled to ``num_frames``. Each drag moves the entity under its
                start point.
            masks: entity masks, bool ``(H, W)`` of ``image``'s size (any number; each drag
                takes the smallest containing its start). ``None``: GrabCut per drag.
            num_frames: ``N`` (the release was trained with 25 and demonstrated with 14–20).
            height, width: model resolution in pixels, multiples of :attr:`size_multiple`
                (the release: 320 × 576).
            num_inference_steps: Euler steps (25 in the release).
            min_guidance_scale, max_guidance_scale: CFG weight at the first / last frame
                (1 and 3 in the release; ``max ≤ 1`` disables CFG).
            fps, motion_bucket_id, noise_aug_strength: SVD's micro-conditioning (the UNet
                gets ``fps − 1``); the defaults are what the release's pipeline feeds.
            controlnet_cond_scale: factor on the ControlNet residuals.
            max_radius: cap of the entity disc radius in model pixels (50).
            entity_feature_mode: see :meth:`prepare_conditions`.
            dift_ensemble_size: noised copies averaged for the entity features (8).
            generator: randomness of the initial noise, the noise augmentation and DIFT.
            latents: initial noise ``(1, N, 4, h, w)`` (before σ scaling).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            decode_chunk_size: frames decoded at once (default all).
            callback_on_step_end: ``f(pipe, step, timestep, callback_kwargs) -> dict`` after
                every step, with the tensors named in ``callback_on_step_end_tensor_inputs``.
            callback_on_step_end_tensor_inputs: names of those tensors (``"latents"``).
            return_dict: return :class:`DragAnythingPipelineOutput` or a tuple.
            keep_aspect: keep the image's aspect: scale it to fit the model frame, centre
                it on white (:func:`~puppet_master.preprocessing.letterbox`), map the drags
                and masks with it, and crop the video back to the image's part, so the video
                has the input's aspect (``output_type="latent"`` gives the whole frame).
            scheduler: sample this call with a named scheduler
                (:data:`~puppet_master.pipelines.schedulers.SCHEDULER_NAMES`) or a given
                diffusers scheduler; ``None`` uses the pipeline's (left unchanged).

        Raises:
            UserInputError: bad image, drags, masks, sizes or options.
        """
        # 1. every argument check, before segmentation or encoding
        self.check_inputs(image, drags, masks, height, width, num_frames, num_inference_steps, output_type, latents,
                          entity_feature_mode, callback_on_step_end_tensor_inputs, scheduler, generator)
        if isinstance(image, np.ndarray):
            image = PIL.Image.fromarray(image.astype(np.uint8) if image.dtype != np.uint8 else image)
        image = image.convert("RGB")
        self._guidance_scale = max_guidance_scale
        device = self._execution_device

        # 2. schedule and initial noise (drawn first: the generator then serves augmentation and DIFT)
        sampler = self._scheduler_for_call(scheduler)
        timesteps, _ = self.prepare_timesteps(sampler, num_inference_steps, device)
        latents, _ = self.prepare_latents(1, num_frames, self.unet.config.out_channels, height, width, torch.float32,
                                          device, generator, latents, scheduler=sampler)

        # 3. entities and conditions at the model resolution
        entity_masks = self.entity_masks(image, drags, masks)
        placement = None
        if keep_aspect:
            framed, placement = letterbox(image, width, height)
            model_drags = placement.map_drags(drags)
            left, top, right, bottom = placement.box
            model_masks = []
            for m in entity_masks:
                canvas = np.zeros((height, width), dtype=bool)
                canvas[top:bottom, left:right] = resize_mask(m, *placement.size)
                model_masks.append(canvas)
        else:  # stretched, as the release does
            framed = image
            model_drags = drags.transformed((width / image.size[0], height / image.size[1]), (0.0, 0.0), width, height)
            model_masks = [resize_mask(m, width, height) for m in entity_masks]
        model_drags = model_drags.resample(num_frames)
        pixels = self._prepare_image(framed, height, width).to(device)  # (1, 3, H, W) in [0, 1]
        aug = randn_tensor(pixels.shape, generator=generator, device=device, dtype=torch.float32)
        conditions = self.prepare_conditions(pixels, model_drags, model_masks, max_radius=max_radius,
                                             entity_feature_mode=entity_feature_mode,
                                             dift_ensemble_size=dift_ensemble_size, generator=generator)
        cond_embedding = self.embed_conditions(conditions)

        # 4. image conditions (unconditional branch first under CFG)
        unet_dtype = self.unet.dtype
        embeddings = self.encode_image_embedding(pixels).to(device, unet_dtype)
        first_latent = self.encode_first_frame(pixels * 2 - 1 + noise_aug_strength * aug).to(device, unet_dtype)
        added_time_ids = torch.tensor([[fps - 1, motion_bucket_id, noise_aug_strength]], device=device, dtype=unet_dtype)
        if self.do_classifier_free_guidance:
            embeddings = torch.cat([torch.zeros_like(embeddings), embeddings])
            first_latent = torch.cat([torch.zeros_like(first_latent), first_latent])
            added_time_ids = torch.cat([added_time_ids, added_time_ids])
            cond_embedding = torch.cat([cond_embedding, cond_embedding])  # the release conditions both branches
        image_latents = first_latent[:, None].expand(-1, num_frames, -1, -1, -1)

        # 5. denoising
        latents = self.denoise(
            latents, timesteps,
            _ControlNetCall(embeddings, image_latents, added_time_ids, cond_embedding, controlnet_cond_scale),
            guidance_scales(num_frames, min_guidance_scale, max_guidance_scale), scheduler=sampler,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            description=self._progress_description(len(timesteps), num_inference_steps, None),
        )

        # 6. decoding (and, keeping the aspect, the image's part of the frame)
        if output_type == "latent":
            frames = latents
        else:
            video = self.decode_video(latents, decode_chunk_size)  # (1, N, 3, H, W) in [-1, 1]
            if placement is not None:
                left, top, right, bottom = placement.box
                video = video[..., top:bottom, left:right]
            frames = self.postprocess_video(video, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return DragAnythingPipelineOutput(frames=frames, conditions=conditions, masks=model_masks, letterbox=placement)


def load_draganything_pipeline(model: str | Path, device: str | torch.device = "cpu",
                               torch_dtype: torch.dtype | None = None) -> DragAnythingPipeline:
    """Load a saved :class:`DragAnythingPipeline` (a ``save_pretrained`` folder or hub id).

    Args:
        model: the folder or hub id (there is no built-in DragAnything model).
        device: where to run (``"cpu"``, ``"cuda"``, ``"cuda:1"``…).
        torch_dtype: weights dtype (default: float32 on a CPU, as stored on a GPU).

    Raises:
        ModelLoadError: no model given, a missing or broken folder, or an unavailable device.
    """
    if model is None or str(model) == "default":
        raise ModelLoadError(
            "DragAnything has no built-in model: pass --model DIR, a folder holding a saved DragAnythingPipeline "
            "(README 'DragAnything' shows how to assemble one from the released weights)"
        )
    source = resolve_model(model)
    dev, kwargs = device_and_dtype(device, torch_dtype)
    try:
        pipe = DragAnythingPipeline.from_pretrained(source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any load failure means "cannot load this model"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load DragAnything model {str(model)!r}: {first}") from exc
    check_component_configs(pipe, model)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)
