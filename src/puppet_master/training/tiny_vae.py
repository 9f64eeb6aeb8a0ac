"""Distil an image VAE's decoder into a tiny one that decodes the same latents (docs/design.md §5).

Decoding dominates the few-step default model's time on a CPU: 14 frames through the
``AutoencoderKL`` decoder cost more than its three UNet calls (benchmarks/README.md,
"Few-step sampling"). A tiny decoder (diffusers' ``DecoderTiny``, TAESD's architecture,
Bohan 2023: 3×3 convolutions and ReLUs, no group norms or attention, channels-last
friendly) decodes the same latents several times faster. The UNet was trained in the
teacher VAE's latent space, so the student is trained to reproduce the teacher, not to be
a new autoencoder:

* its **decoder** maps teacher latents to the teacher decoder's pictures:
  ``L1(D_s(z), D_t(z)) + grad_weight · L1(∇D_s(z), ∇D_t(z))`` with ``z = E_t(x)`` the
  teacher's posterior mean of a training crop ``x``, and for half of each batch
  ``z + latent_noise · std(z) · ε``, so latents a sampler produces (not exactly any
  picture's encoding) decode as the teacher would decode them;
* its **encoder**, with ``encoder="teacher"`` (the default), *is* the teacher's (weights
  copied, not trained: :class:`~puppet_master.models.AutoencoderKLTinyDecoder`), so the
  UNet's conditioning latent is unchanged; with ``encoder="distil"`` the student is a
  standalone ``diffusers.AutoencoderTiny`` whose encoder regresses the teacher's posterior
  mean, ``encoder_weight · mean((E_s(x) − E_t(x))² · scaling_factor²)``. A distilled encoder
  generalises less: on Drag-a-Move renders (outside the training data) it raised the default
  model's drag-origin flow error by 0.8 px, where the teacher's encoder with the same tiny
  decoder did not (the model card has the figures).

Either student stores the teacher's ``scaling_factor`` and works in unscaled latents, as
the teacher's ``latent_dist.mode()``; the pipelines read both classes
(:meth:`~puppet_master.pipelines.pipeline_svd_base.SVDStylePipeline.encode_first_frame`).
Crops, photos and the resumable checkpoint are those of :func:`~puppet_master.training.vae.train_vae`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKL, AutoencoderTiny
from torch.utils.data import DataLoader

from ..errors import UserInputError
from ..models import AutoencoderKLTinyDecoder
from .loop import LoopSettings, TrainingLoop
from .vae import (MIN_FRAMES, CropDataset, _check_out_dir, _load_checkpoint, _publish, _save_checkpoint, _start_step,
                  collect_frames, image_gradients, image_tensor, skimage_photos)


@dataclass
class TinyVAEConfig:
    """Options of :func:`distil_tiny_vae` (sizes in pixels)."""

    data: list[str] = field(default_factory=list)
    output_dir: str = "runs/tiny-vae"
    encoder: str = "teacher"
    encoder_channels: int = 64
    decoder_channels: int = 32
    num_encoder_blocks: tuple[int, ...] = (1, 3, 3, 3)
    num_decoder_blocks: tuple[int, ...] = (3, 3, 3, 1)
    crop: int = 128
    batch_size: int = 8
    max_steps: int = 3000
    lr: float = 5e-4
    grad_weight: float = 0.5
    encoder_weight: float = 1.0
    latent_noise: float = 0.1
    frames_per_clip: int = 3
    use_photos: bool = True
    photo_share: float = 0.1
    checkpoint_every: int = 250
    mixed_precision: str = "no"
    seed: int = 0


def make_tiny_vae(teacher: AutoencoderKL, cfg: TinyVAEConfig) -> AutoencoderKLTinyDecoder | AutoencoderTiny:
    """The student before training: the teacher's latent shape, stride and scaling factor.

    ``cfg.encoder == "teacher"``: an :class:`AutoencoderKLTinyDecoder` with the teacher's encoder
    (copied) and a random tiny decoder; ``"distil"``: a random ``AutoencoderTiny``.

    Raises:
        UserInputError: an unknown ``encoder``, or block counts whose number of levels does
            not give the teacher's stride.
    """
    if cfg.encoder not in ("teacher", "distil"):
        raise UserInputError(f"encoder must be 'teacher' (keep the teacher's) or 'distil' (train a tiny one), "
                             f"got {cfg.encoder!r}")
    levels = len(teacher.config.block_out_channels)
    counts = [cfg.num_decoder_blocks] + ([cfg.num_encoder_blocks] if cfg.encoder == "distil" else [])
    if any(len(c) != levels for c in counts):
        raise UserInputError(f"the teacher VAE has {levels} levels ({2 ** (levels - 1)}x down-sampling): give "
                             f"{levels} block counts per level, got decoder {list(cfg.num_decoder_blocks)}"
                             + (f", encoder {list(cfg.num_encoder_blocks)}" if cfg.encoder == "distil" else ""))
    if cfg.encoder == "teacher":
        return AutoencoderKLTinyDecoder.from_autoencoder_kl(teacher, (cfg.decoder_channels,) * levels,
                                                            tuple(cfg.num_decoder_blocks)).float()
    return AutoencoderTiny(
        encoder_block_out_channels=(cfg.encoder_channels,) * levels,
        decoder_block_out_channels=(cfg.decoder_channels,) * levels,
        num_encoder_blocks=tuple(cfg.num_encoder_blocks), num_decoder_blocks=tuple(cfg.num_decoder_blocks),
        latent_channels=teacher.config.latent_channels, scaling_factor=teacher.config.scaling_factor,
    )


def student_latents(student: AutoencoderKLTinyDecoder | AutoencoderTiny, x: torch.Tensor) -> torch.Tensor:
    """The student's unscaled latent of ``x``: its posterior mean, or a tiny encoder's output."""
    encoded = student.encode(x)
    return encoded.latents if isinstance(student, AutoencoderTiny) else encoded.latent_dist.mode()


def load_teacher_vae(model: str | os.PathLike) -> AutoencoderKL:
    """The image VAE (``diffusers.AutoencoderKL``) of a pipeline folder (``vae/``) or a VAE folder.

    Raises:
        UserInputError: no VAE in that folder (a hub id is not fetched here), or a VAE of another class (SVD's temporal decoder
            has no per-frame latent space to distil here).
    """
    from ..pipelines.model_source import resolve_model

    root = Path(model).expanduser()
    if str(model) == "default" or (root / "model_index.json").is_file():
        root = Path(resolve_model(model))
    folder = root / "vae" if (root / "vae" / "config.json").is_file() else root
    config = folder / "config.json"
    if not config.is_file():
        raise UserInputError(f"--teacher {str(model)!r}: no VAE there (expected {root / 'vae' / 'config.json'} or "
                             f"{config}); give a pipeline folder or the VAE's own folder")
    try:
        cls = json.loads(config.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        cls = None
    if cls != "AutoencoderKL":
        raise UserInputError(f"--teacher {str(model)!r}: its VAE is {cls!r}; distil-vae distils an image VAE "
                             "(AutoencoderKL), as the embedded default model has")
    return AutoencoderKL.from_pretrained(folder, use_safetensors=True).eval().requires_grad_(False)


def tiny_vae_loss(student: AutoencoderKLTinyDecoder | AutoencoderTiny, teacher: AutoencoderKL, x: torch.Tensor, cfg: TinyVAEConfig,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """The distillation loss (module docstring) for crops ``x`` ``(B, 3, H, W)`` float32 in [−1, 1].

    Returns:
        the loss (scalar) and its parts: ``dec`` (L1 to the teacher's decode), ``grad``, ``enc``
        (mean squared latent error in unit-variance units; 0 with the teacher's encoder).
    """
    sf = teacher.config.scaling_factor
    with torch.no_grad():
        z = teacher.encode(x).latent_dist.mode()
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)  # a CPU generator on any device
        noisy = z + cfg.latent_noise * z.std() * noise
        half = torch.arange(z.shape[0], device=z.device) % 2 == 1
        z_in = torch.where(half[:, None, None, None], noisy, z)
        target = teacher.decode(z_in).sample.clamp(-1, 1)
    recon = student.decode(z_in).sample
    dec = (recon - target).abs().mean()
    gx, gy = image_gradients(recon)
    tx, ty = image_gradients(target)
    grad = (gx - tx).abs().mean() + (gy - ty).abs().mean()
    loss = dec + cfg.grad_weight * grad
    enc = torch.zeros(())
    if isinstance(student, AutoencoderTiny):  # a teacher encoder is copied, not trained
        enc = ((student.encode(x).latents - z) * sf).pow(2).mean()
        loss = loss + cfg.encoder_weight * enc
    return loss, {"dec": dec.item(), "grad": grad.item(), "enc": enc.item()}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB, 8-bit scale) between pictures in [−1, 1]."""
    return 10 * math.log10(1.0 / max(((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean().item(), 1e-10))


@torch.no_grad()
def compare_vaes(student: AutoencoderKLTinyDecoder | AutoencoderTiny, teacher: AutoencoderKL, frames: list[np.ndarray]) -> dict:
    """Mean figures of the student against the teacher on whole ``frames`` (uint8 ``(H, W, 3)``).

    Returns:
        ``decoder_psnr_db`` (D_s(z) against D_t(z), z = E_t(frame)), ``roundtrip_psnr_db``
        (D_s(E_s(frame)) against the frame), ``teacher_roundtrip_psnr_db`` (D_t(E_t(frame))),
        ``encoder_rmse`` (latent error in unit-variance units).
    """
    sf = teacher.config.scaling_factor
    dec, rt, trt, enc = [], [], [], []
    for f in frames:
        x = image_tensor(f)
        z = teacher.encode(x).latent_dist.mode()
        ref = teacher.decode(z).sample
        dec.append(_psnr(student.decode(z).sample, ref))
        zs = student_latents(student, x)
        rt.append(_psnr(student.decode(zs).sample, x))
        trt.append(_psnr(ref, x))
        enc.append(((zs - z) * sf).pow(2).mean().sqrt().item())
    return {"decoder_psnr_db": float(np.mean(dec)), "roundtrip_psnr_db": float(np.mean(rt)),
            "teacher_roundtrip_psnr_db": float(np.mean(trt)), "encoder_rmse": float(np.mean(enc))}


def distil_tiny_vae(cfg: TinyVAEConfig, teacher: AutoencoderKL, progress: bool = True, held_out: int = 32) -> dict:
    """Distil (or resume distilling) ``teacher`` into a tiny-decoder VAE; write ``OUT/vae/`` and ``OUT/vae-report.json``.

    The student is :func:`make_tiny_vae`'s (``cfg.encoder``).

    ``cfg.mixed_precision``: accelerate's setting (``"bf16"`` halves the step time on a CPU
    with native bf16; the saved weights are float32 either way).
    ``held_out`` frames (the last clips of the data) are kept out of training and give the
    report's figures (:func:`compare_vaes`). ``OUT/checkpoint/`` (accelerate state, written
    atomically) is resumed by a rerun with the same ``OUT``; ``OUT/vae/`` is replaced only
    once the run has finished.

    Raises:
        UserInputError: missing or empty data folders, a crop that is not a multiple of the
            stride, an output path that is a file, a damaged checkpoint.
    """
    stride = 2 ** (len(teacher.config.block_out_channels) - 1)
    if cfg.crop % stride:
        raise UserInputError(f"crop {cfg.crop} must be a multiple of the VAE stride {stride}")
    out = Path(cfg.output_dir)
    _check_out_dir(out)
    frames = collect_frames(cfg.data, cfg.frames_per_clip)
    if len(frames) < MIN_FRAMES:
        raise UserInputError(f"distil-vae read {len(frames)} frames from {', '.join(map(str, cfg.data))}; it needs at "
                             f"least {MIN_FRAMES}: one in ten is held out to measure the student. Give more clips")
    student = make_tiny_vae(teacher, cfg)
    start = _start_step(out)
    out.mkdir(parents=True, exist_ok=True)
    held_out = min(held_out, len(frames) // 10)
    train_frames, test_frames = frames[: len(frames) - held_out], frames[len(frames) - held_out :]
    photos = skimage_photos() if cfg.use_photos else []
    set_seed(cfg.seed)
    acc = Accelerator(mixed_precision=cfg.mixed_precision)
    # plain convolutions: faster channels-last on a CPU
    (student if isinstance(student, AutoencoderTiny) else student.decoder).to(memory_format=torch.channels_last)
    if isinstance(student, AutoencoderKLTinyDecoder):
        student.encoder.requires_grad_(False)
        if student.quant_conv is not None:
            student.quant_conv.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.max_steps) / cfg.max_steps)))
    )
    student, opt, sched = acc.prepare(student, opt, sched)
    teacher = teacher.to(acc.device)
    if start:
        _load_checkpoint(acc, out)
    dataset = CropDataset(train_frames, photos, cfg.crop, cfg.max_steps * cfg.batch_size, cfg.photo_share, cfg.seed)
    indices = list(range(start * cfg.batch_size, cfg.max_steps * cfg.batch_size))  # stateless: resume at item s·batch
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=cfg.batch_size, shuffle=False)
    generator = torch.Generator().manual_seed(cfg.seed + start)
    student.train()
    loop = TrainingLoop(
        student, opt, LoopSettings(steps=cfg.max_steps, start_step=start, grad_clip=1.0,
                                   save_every_steps=cfg.checkpoint_every,
                                   progress="distilling the VAE" if progress else None),
        lr_scheduler=sched, accelerator=acc, on_save=lambda step: _save_checkpoint(acc, out, step),
        describe_save=lambda step: f"{out / 'checkpoint'} (step {step}; resume with a lower lr)",
    )
    report = loop.run(loader, lambda batch: tiny_vae_loss(
        student, teacher, batch.to(acc.device).contiguous(memory_format=torch.channels_last), cfg, generator))
    model = acc.unwrap_model(student).eval().float().to("cpu", memory_format=torch.contiguous_format)
    model.requires_grad_(True)  # as from_pretrained leaves it
    result = {
        "steps": report.final_step,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "last_losses": report.stats,
        "parameters": sum(p.numel() for p in model.parameters()),
        "decoder_parameters": sum(p.numel() for p in model.decoder.parameters()),
        "teacher_decoder_parameters": sum(p.numel() for p in teacher.decoder.parameters()),
        "held_out_frames": len(test_frames),
        **({f"held_out_{k}": v for k, v in compare_vaes(model, teacher.cpu(), test_frames).items()} if test_frames else {}),
    }
    _publish(model, out, result)
    return result
