"""Fine-tuning the drag UNet with accelerate (paper App. C; docs/design.md §5–6).

One loop for CPU, one GPU and many (DDP via ``accelerate launch``): EDM loss with
``log σ ~ N(p_mean, p_std²)``, weight ``λ(σ) = 1 + 1/σ²`` (optional frame ramp),
classifier-free-guidance dropout of the drags (p = 0.1), mixed precision, gradient
accumulation / clipping / checkpointing, EMA of the weights, periodic checkpoints that
resume exactly, validation videos, TensorBoard logging, export of a pipeline folder.

Determinism: the noise level, noise and dropout of a sample are drawn from a generator
seeded by ``(seed, key)`` where ``key`` is the sample's position in the data stream, so
a resumed run and a data-parallel run reproduce the single-process run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader

from .. import edm
from ..errors import UserInputError
from ..models import UNetDragSpatioTemporalConditionModel
from .config import TrainConfig
from .data import PositionSampler, build_mixture, collate, steps_to_positions
from .losses import edm_denoising_loss, motion_weights, sample_noise  # noqa: F401  (re-exported)

DRAG_MODULE_MARKERS = (".flow_convs.", ".drag_token_mlps.")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` returns."""

    losses: list[float] = field(default_factory=list)  # mean loss per optimizer step
    global_step: int = 0
    output_dir: Path | None = None
    pipeline_dir: Path | None = None
    unet: torch.nn.Module | None = None  # the trained (unwrapped, non-EMA) UNet


def edm_loss(unet, batch: dict, config: TrainConfig, frame_weights: torch.Tensor) -> torch.Tensor:
    """EDM training loss of a batch (mean over samples), docs/design.md §5.

    The noise level, noise and dropout flags of each sample come from :func:`sample_noise`
    (a function of ``(config.seed, batch["key"])``); the loss itself is
    :func:`~puppet_master.training.losses.edm_denoising_loss`.
    """
    x = batch["latents"]
    sigma, eps, drop_drags, drop_image = sample_noise(
        batch["key"].cpu(), config.seed, tuple(x.shape[1:]), config.p_mean, config.p_std,
        config.cond_dropout_prob, config.image_dropout_prob,
    )
    return edm_denoising_loss(
        unet, x, batch["image_latents"], batch["embedding"], batch["drags"],
        sigma.to(x.device, x.dtype), eps.to(x.device, x.dtype), drop_drags.to(x.device), drop_image.to(x.device),
        frame_weights, config.motion_weight, config.motion_scale,
    )


def build_unet(config: TrainConfig) -> UNetDragSpatioTemporalConditionModel:
    """The UNet to train, from scratch, SVD or a previous checkpoint (see :class:`ModelConfig`).

    Raises:
        UserInputError: missing pretrained folder.
    """
    m = config.model
    kwargs = dict(m.unet)
    kwargs.setdefault("num_frames", config.data.num_frames)
    kwargs.setdefault("num_drags", config.data.num_drags)
    try:
        if m.init == "scratch":
            unet = UNetDragSpatioTemporalConditionModel(**kwargs)
        elif m.init == "svd":
            from diffusers import UNetSpatioTemporalConditionModel

            svd = UNetSpatioTemporalConditionModel.from_pretrained(m.pretrained, subfolder="unet")
            kwargs.pop("num_frames")
            unet = UNetDragSpatioTemporalConditionModel.from_svd_unet(svd, num_frames=config.data.num_frames, **kwargs)
        else:
            path = Path(m.pretrained)
            sub = "unet" if (path / "unet" / "config.json").is_file() else None
            # model.unet entries override the saved config (e.g. drag_warp_image_latents: true)
            unet = UNetDragSpatioTemporalConditionModel.from_pretrained(m.pretrained, subfolder=sub, **dict(m.unet))
            for key, value in m.unet.items():
                if unet.config.get(key) != value:
                    raise UserInputError(f"model.unet.{key}={value!r} cannot be applied to a pretrained UNet")
    except (OSError, ValueError) as exc:
        if isinstance(exc, UserInputError):
            raise
        raise UserInputError(f"cannot build the UNet from model.pretrained={m.pretrained!r}: {exc}") from exc
    if m.freeze == "backbone":
        for name, p in unet.named_parameters():
            p.requires_grad_(any(k in f".{name}" for k in DRAG_MODULE_MARKERS))
    return unet


def param_groups(unet, lr: float, drag_lr_scale: float = 1.0) -> list[dict]:
    """Optimizer parameter groups: the backbone at ``lr``, the drag modules at ``lr × drag_lr_scale``.

    Drag modules are the parameters whose names contain ``.flow_convs.`` or
    ``.drag_token_mlps.`` (modulation nets and drag-token MLPs, paper §3.2). Frozen
    parameters are left out; an empty group is dropped. With ``drag_lr_scale == 1`` the
    result is one group holding every trainable parameter (the old behaviour, so resuming
    a checkpoint saved before this option keeps a matching optimizer state).

    Returns:
        list of ``{"params": [...], "lr": float, "name": "backbone" | "drag"}``.
    """
    trainable = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    if drag_lr_scale == 1.0:
        return [{"params": [p for _, p in trainable], "lr": lr, "name": "all"}]
    drag = [p for n, p in trainable if any(k in f".{n}" for k in DRAG_MODULE_MARKERS)]
    drag_ids = {id(p) for p in drag}
    backbone = [p for _, p in trainable if id(p) not in drag_ids]
    groups = [{"params": backbone, "lr": lr, "name": "backbone"}, {"params": drag, "lr": lr * drag_lr_scale, "name": "drag"}]
    return [g for g in groups if g["params"]]


def load_components(config: TrainConfig, unet) -> dict | None:
    """VAE / image encoder / scheduler for validation and export, or ``None`` if not configured."""
    from ..pipelines import PuppetMasterPipeline
    from ..pipelines.components import build_components

    m = config.model
    source = m.components or (m.pretrained if m.init == "svd" else None)
    if source is None:
        return None
    if source == "tiny":
        comps = build_components("tiny", seed=config.seed)
    elif m.init == "svd" and source == m.pretrained:
        from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        comps = dict(
            vae=AutoencoderKLTemporalDecoder.from_pretrained(source, subfolder="vae"),
            image_encoder=CLIPVisionModelWithProjection.from_pretrained(source, subfolder="image_encoder"),
            feature_extractor=CLIPImageProcessor.from_pretrained(source, subfolder="feature_extractor"),
            scheduler=EulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler"),
        )
    else:
        pipe = PuppetMasterPipeline.from_pretrained(source)
        comps = dict(vae=pipe.vae, image_encoder=pipe.image_encoder, feature_extractor=pipe.feature_extractor,
                     scheduler=pipe.scheduler)
    comps["unet"] = unet
    return comps


class Trainer:
    """Runs a :class:`TrainConfig`. ``Trainer(config).train()`` → :class:`TrainResult`."""

    def __init__(self, config: TrainConfig, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        self.output_dir = Path(config.output_dir)
        log_with = None if config.log_with == "none" else config.log_with
        # several processes without CUDA (torchrun / accelerate launch on CPUs): DDP over gloo
        multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = Accelerator(
            cpu=multi_cpu,
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
        )

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_root(self) -> Path:
        return self.output_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.checkpoint_root.glob("step-*") if (p / "trainer_state.json").is_file())
        return done[-1] if done else None

    def _save_checkpoint(self, step: int) -> Path:
        acc = self.accelerator
        final = self.checkpoint_root / f"step-{step:08d}"
        tmp = self.checkpoint_root / f".tmp-step-{step:08d}"
        if acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps({"global_step": step}))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for old in sorted(p for p in self.checkpoint_root.glob("step-*"))[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    # ------------------------------------------------------------------ loop
    def train(self) -> TrainResult:
        """Train until ``max_steps``; resume first if ``config.resume`` says so.

        Raises:
            TrainingDiverged: NaN/inf loss (the last good checkpoint is kept).
            UserInputError: bad data or model settings.
        """
        cfg, acc = self.config, self.accelerator
        set_seed(cfg.seed)
        unet = build_unet(cfg)
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        groups = param_groups(unet, cfg.optim.lr, cfg.optim.drag_lr_scale)
        params = [p for g in groups for p in g["params"]]
        if cfg.optim.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        else:
            opt_cls = torch.optim.AdamW if cfg.optim.optimizer == "adamw" else torch.optim.Adam
            optimizer = opt_cls(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                                weight_decay=cfg.optim.weight_decay)
        lr_scheduler = get_scheduler(cfg.optim.lr_scheduler, optimizer, num_warmup_steps=cfg.optim.warmup_steps,
                                     num_training_steps=cfg.max_steps)
        ema = None
        if cfg.use_ema:
            ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, model_cls=UNetDragSpatioTemporalConditionModel,
                           model_config=unet.config)

        dataset = build_mixture(cfg.data, cfg.seed)
        unet, optimizer, lr_scheduler = acc.prepare(unet, optimizer, lr_scheduler)
        if ema is not None:
            ema.to(acc.device)
            acc.register_for_checkpointing(ema)

        start_step = 0
        resume = cfg.resume
        if resume:
            ckpt = self.latest_checkpoint() if resume == "latest" else Path(resume)
            if ckpt is None:
                acc.print(f"no checkpoint in {self.checkpoint_root}: starting from step 0")
            else:
                if not (ckpt / "trainer_state.json").is_file():
                    raise UserInputError(f"{ckpt} is not a complete checkpoint (no trainer_state.json)")
                try:
                    acc.load_state(str(ckpt))
                except ValueError as exc:
                    if "parameter group" not in str(exc):
                        raise
                    raise UserInputError(
                        f"{ckpt} was saved with another optim.drag_lr_scale (its optimizer has a different number "
                        f"of parameter groups): resume with the scale it was trained with, or start a new output_dir "
                        f"from its exported weights (model.init=checkpoint model.pretrained=FOLDER)") from exc
                start_step = json.loads((ckpt / "trainer_state.json").read_text())["global_step"]
                acc.print(f"resumed from {ckpt} at step {start_step}")

        per_step = steps_to_positions(1, cfg.data.batch_size, cfg.gradient_accumulation_steps, acc.num_processes)
        start = start_step * per_step
        remaining = (cfg.max_steps - start_step) * per_step
        loader = DataLoader(dataset, batch_size=cfg.data.batch_size, sampler=PositionSampler(start, remaining),
                            collate_fn=collate, num_workers=cfg.data.num_workers, drop_last=True)
        loader = acc.prepare_data_loader(loader, device_placement=True) if acc.num_processes > 1 else loader
        frame_w = edm.frame_weights(cfg.data.num_frames, cfg.frame_weight_ramp, device=acc.device)

        if acc.is_main_process and acc.log_with:
            flat = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in cfg.model_dump().items()}
            acc.init_trackers("puppet-master", config=flat)
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.json").write_text(json.dumps(cfg.model_dump(), indent=1))

        from tqdm.auto import tqdm

        result = TrainResult(output_dir=self.output_dir)
        step = start_step
        bar = tqdm(total=cfg.max_steps, initial=start_step, desc="training", disable=not (self.progress and acc.is_local_main_process))
        unet.train()
        acc_losses: list[float] = []
        t_last = time.perf_counter()
        for batch in loader:
            batch = {k: (v.to(acc.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            with acc.accumulate(unet):
                with acc.autocast():
                    loss = edm_loss(unet, batch, cfg, frame_w)
                if not torch.isfinite(loss):
                    last = self.latest_checkpoint()
                    raise TrainingDiverged(
                        f"loss became {loss.item()} at step {step + 1}; stopped. Last good checkpoint: "
                        f"{last if last else 'none (no checkpoint was saved yet)'}. Lower optim.lr or use bf16/fp32."
                    )
                acc.backward(loss)
                if acc.sync_gradients and cfg.optim.grad_clip:
                    acc.clip_grad_norm_(params, cfg.optim.grad_clip)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            acc_losses.append(loss.detach().float().item())
            if not acc.sync_gradients:
                continue
            step += 1
            if ema is not None:
                ema.step(acc.unwrap_model(unet).parameters())
            mean_loss = float(acc.gather(torch.tensor([np.mean(acc_losses)], device=acc.device)).mean())
            acc_losses = []
            result.losses.append(mean_loss)
            now = time.perf_counter()
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
            bar.update()
            if step % cfg.log_every == 0 and acc.log_with:
                acc.log({"loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0],
                         "steps_per_s": 1.0 / max(now - t_last, 1e-9)}, step=step)
            t_last = now
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                self._save_checkpoint(step)
            if cfg.validate_every and step % cfg.validate_every == 0:
                self.validate(unet, ema, dataset, step)
            if step >= cfg.max_steps:
                break
        bar.close()
        result.global_step = step
        acc.wait_for_everyone()
        result.unet = acc.unwrap_model(unet)
        if acc.is_main_process:
            result.pipeline_dir = self.export(result.unet, ema)
        acc.end_training()
        return result

    # ------------------------------------------------------------------ outputs
    def _components(self, unet) -> dict | None:
        """VAE / image encoder / scheduler, loaded once per run, with ``unet`` as the UNet."""
        if not hasattr(self, "_loaded_components"):
            self._loaded_components = load_components(self.config, None)
        if self._loaded_components is None:
            return None
        return {**self._loaded_components, "unet": unet}

    @staticmethod
    @contextlib.contextmanager
    def _with_ema(unet, ema):
        """Swap the EMA weights into ``unet`` for the duration of the block."""
        if ema is not None:
            ema.store(unet.parameters())
            ema.copy_to(unet.parameters())
        try:
            yield unet
        finally:
            if ema is not None:
                ema.restore(unet.parameters())

    def validate(self, unet, ema, dataset, step: int) -> Path | None:
        """Sample one video from the first data item's first frame and drags; write a GIF with the drags."""
        acc = self.accelerator
        if not acc.is_main_process:
            return None
        model = acc.unwrap_model(unet)
        comps = self._components(model)
        if comps is None:
            return None
        from ..pipelines import PuppetMasterPipeline
        from ..video import draw_drags, to_uint8_frames, write_video
        from ..drags import DragSet

        item = dataset[0]
        pipe = PuppetMasterPipeline(**comps).to(acc.device)
        pipe.set_progress_bar_config(disable=True)
        # the first frame comes back from its (unscaled) latent through the VAE
        first = item["image_latents"][None, None].to(acc.device) * pipe.vae.config.scaling_factor
        image = ((pipe.decode_latents(first)[0, 0].clamp(-1, 1) + 1) / 2).cpu()
        n = item["drags"].shape[0]
        h, w = image.shape[-2:]
        model.eval()
        with self._with_ema(model, ema):
            frames = pipe(image, item["drags"][None], num_frames=n, height=h, width=w,
                          num_inference_steps=self.config.validation_steps, generator=torch.Generator().manual_seed(0),
                          output_type="np").frames[0]
        model.train()
        video = to_uint8_frames(frames)
        video = draw_drags(video, DragSet.from_tensor(item["drags"], w, h).trajectories)
        out = self.output_dir / "validation" / f"step-{step:08d}.gif"
        out.parent.mkdir(parents=True, exist_ok=True)
        return write_video(video, out, fps=7, overwrite=True)

    def export(self, unet, ema) -> Path | None:
        """Save the EMA UNet (``unet-ema/``) and, with components, a pipeline folder (``pipeline/``)."""
        out = self.output_dir
        if ema is not None:
            ema.save_pretrained(out / "unet-ema")
        if not self.config.export_pipeline:
            return None
        comps = self._components(unet)
        if comps is None:
            return None
        from ..pipelines import PuppetMasterPipeline

        with self._with_ema(unet, ema):
            pipe = PuppetMasterPipeline(**comps)
            tmp = out / ".pipeline-partial"
            if tmp.exists():
                shutil.rmtree(tmp)
            pipe.save_pretrained(tmp)
        final = out / "pipeline"
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        return final
