"""``puppet-master train``: fine-tune the drag UNet (docs/design.md §5–6)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserInputError
from .options import SEED, THREADS, finite, quiet_loading, set_threads


def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see configs/)."),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="KEY=VALUE", help="Overrides such as optim.lr=1e-4 data.batch_size=2."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or loading bars."),
    threads: Optional[int] = THREADS,
) -> None:
    """Train with accelerate; run under `accelerate launch` for several GPUs or nodes.

    Writes OUTPUT_DIR/checkpoints/step-*/ (resume with resume=latest), logs/ (TensorBoard),
    validation/*.gif, unet-ema/ and pipeline/ (for `puppet-master animate --model`).
    """
    from ..training import Trainer, load_config

    set_threads(threads)
    quiet_loading()
    cfg = load_config(config, overrides or [])
    result = Trainer(cfg, progress=not quiet).train()
    if result.pipeline_dir is not None:
        print(f"trained {result.global_step} steps; pipeline saved to {result.pipeline_dir}", file=sys.stderr)


def export_checkpoint(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT", help="OUTPUT_DIR/checkpoints/step-NNNNNNNN of `puppet-master train`."),
    base: Path = typer.Option(..., "--base", help="Pipeline the run was trained from (its model.components folder)."),
    out: Path = typer.Option(..., "--out", "-o", help="Pipeline folder to write."),
    fp16: bool = typer.Option(False, "--fp16", help="Store the weights in float16 (half the size)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Export a training checkpoint's EMA UNet as a pipeline (for a run stopped before max_steps)."""
    import torch

    from ..training.export import export_checkpoint as run

    path = run(checkpoint, base, out, dtype=torch.float16 if fp16 else torch.float32, overwrite=overwrite)
    print(f"exported the EMA weights of {checkpoint} to {path}", file=sys.stderr)


def cache_latents(
    data: Path = typer.Option(..., "--data", help="Split folder (NAME.json + video) or Drag-a-Move folder."),
    out: Path = typer.Option(..., "--out", help="Cache folder to fill (existing files are kept)."),
    model: Optional[str] = typer.Option(None, "--model", help="Pipeline folder whose VAE and image encoder encode."),
    size: int = typer.Option(256, "--size", help="Frame size in pixels."),
    device: str = typer.Option("cpu", "--device"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1),
    flip: bool = typer.Option(False, "--flip", help="Also cache every clip mirrored left-right (NAME_flip)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    threads: Optional[int] = THREADS,
) -> None:
    """Encode clips once (VAE latents, first-frame latent and image embedding) for training."""
    from ..runtime import interrupt_on_sigterm
    from ..training.cache import build_cache

    set_threads(threads)
    interrupt_on_sigterm()  # a stopped run removes its partial file (and a folder it left empty)
    quiet_loading()
    n = build_cache(data, model, out, size=size, device=device, limit=limit, progress=not quiet, flip=flip)
    print(f"cached {n} new clips in {out}", file=sys.stderr)


def train_vae(
    data: list[Path] = typer.Option(..., "--data", help="Split folder(s) of clips (NAME.json + NAME.gif); repeat for several."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoint/, vae/, vae-report.json (re-running resumes)."),
    steps: int = typer.Option(3000, "--steps", min=1, help="Optimizer steps."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    crop: int = typer.Option(128, "--crop", min=16, help="Training crop size in pixels."),
    lr: float = typer.Option(2e-4, "--lr", parser=finite(0.0, above=True), help="Learning rate (> 0)."),
    channels: str = typer.Option("32,64,128,128", "--channels", help="block_out_channels; n blocks = 2^(n-1)x down."),
    latent_channels: int = typer.Option(4, "--latent-channels", min=1),
    fg_weight: float = typer.Option(1.0, "--fg-weight", parser=finite(1.0),
                                    help="L1 weight of non-white (object) pixels (>= 1)."),
    chroma_weight: float = typer.Option(4.0, "--chroma-weight", parser=finite(0.0),
                                        help="L1 weight of colour (each pixel's deviation from its grey level)."),
    no_photos: bool = typer.Option(False, "--no-photos", help="Do not mix in scikit-image's sample photographs."),
    seed: int = SEED,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    threads: Optional[int] = THREADS,
) -> None:
    """Train a small image VAE from scratch (the default model's autoencoder)."""
    from ..training.vae import VAETrainConfig, train_vae as run

    set_threads(threads)
    try:
        block_out = tuple(int(c) for c in channels.split(","))
    except ValueError:
        raise UserInputError(f"--channels must be integers separated by commas, got {channels!r}") from None
    cfg = VAETrainConfig(data=[str(d) for d in data], output_dir=str(out), block_out_channels=block_out,
                         latent_channels=latent_channels, crop=crop, batch_size=batch_size, max_steps=steps, lr=lr,
                         use_photos=not no_photos, fg_weight=fg_weight, chroma_weight=chroma_weight, seed=seed)
    report = run(cfg, progress=not quiet)
    print(f"VAE saved to {out / 'vae'}: held-out PSNR {report['held_out_psnr_db']:.2f} dB "
          f"(object pixels {report['held_out_foreground_psnr_db']:.2f} dB), "
          f"scaling factor {report['scaling_factor']:.4f}", file=sys.stderr)


def distil_vae(
    data: list[Path] = typer.Option(..., "--data", help="Split folder(s) of clips (NAME.json + NAME.gif); repeat for several."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoint/, vae/, vae-report.json (re-running resumes)."),
    teacher: str = typer.Option("default", "--teacher",
                                help="Pipeline folder (its vae/) or VAE folder of the AutoencoderKL to distil; "
                                     "'default': the embedded default model."),
    steps: int = typer.Option(2000, "--steps", min=1, help="Optimizer steps."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    crop: int = typer.Option(128, "--crop", min=16, help="Training crop size in pixels."),
    lr: float = typer.Option(5e-4, "--lr", parser=finite(0.0, above=True), help="Learning rate (> 0)."),
    encoder: str = typer.Option("teacher", "--encoder",
                                help="teacher: keep the teacher's encoder (exact conditioning latents; an "
                                     "AutoencoderKLTinyDecoder); distil: train a tiny encoder too (a standalone "
                                     "diffusers AutoencoderTiny)."),
    encoder_channels: int = typer.Option(64, "--encoder-channels", min=1,
                                         help="Channels of every level of a distilled encoder (--encoder distil)."),
    decoder_channels: int = typer.Option(32, "--decoder-channels", min=1, help="Channels of every decoder level."),
    no_photos: bool = typer.Option(False, "--no-photos", help="Do not mix in scikit-image's sample photographs."),
    precision: str = typer.Option("auto", "--precision",
                                  help="auto (bf16 autocast on a CPU with native bf16, else fp32), bf16 or fp32."),
    seed: int = SEED,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    threads: Optional[int] = THREADS,
) -> None:
    """Distil a model's image VAE into one with a tiny decoder that decodes its latents several times faster."""
    from ..runtime import auto_dtype
    from ..training.tiny_vae import TinyVAEConfig, distil_tiny_vae, load_teacher_vae

    if encoder not in ("teacher", "distil"):
        raise UserInputError(f"--encoder must be teacher or distil, got {encoder!r}")
    if precision not in ("auto", "bf16", "fp32"):
        raise UserInputError(f"--precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "auto":
        precision = "bf16" if auto_dtype("cpu") is not None else "fp32"
    set_threads(threads)
    quiet_loading()
    vae = load_teacher_vae(teacher)
    cfg = TinyVAEConfig(data=[str(d) for d in data], output_dir=str(out), encoder=encoder, encoder_channels=encoder_channels,
                        decoder_channels=decoder_channels, crop=crop, batch_size=batch_size, max_steps=steps, lr=lr,
                        use_photos=not no_photos, mixed_precision="bf16" if precision == "bf16" else "no", seed=seed)
    report = distil_tiny_vae(cfg, vae, progress=not quiet)
    print(f"tiny VAE saved to {out / 'vae'}: held-out decoder PSNR to the teacher's decode "
          f"{report.get('held_out_decoder_psnr_db', float('nan')):.2f} dB, round trip "
          f"{report.get('held_out_roundtrip_psnr_db', float('nan')):.2f} dB (teacher "
          f"{report.get('held_out_teacher_roundtrip_psnr_db', float('nan')):.2f} dB), latent RMSE "
          f"{report.get('held_out_encoder_rmse', float('nan')):.3f}", file=sys.stderr)
