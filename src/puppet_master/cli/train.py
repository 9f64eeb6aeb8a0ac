"""``puppet-master train``: fine-tune the drag UNet (DESIGN §5–6)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserInputError


def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see configs/)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Overrides such as optim.lr=1e-4 data.batch_size=2."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train with accelerate; run under `accelerate launch` for several GPUs or nodes.

    Writes OUTPUT_DIR/checkpoints/step-*/ (resume with resume=latest), logs/ (TensorBoard),
    validation/*.gif, unet-ema/ and pipeline/ (for `puppet-master animate --model`).
    """
    from ..training import Trainer, TrainingDiverged, load_config

    try:
        cfg = load_config(config, overrides or [])
        result = Trainer(cfg, progress=not quiet).train()
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(code=2)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(code=1)
    if result.pipeline_dir is not None:
        print(f"trained {result.global_step} steps; pipeline saved to {result.pipeline_dir}", file=sys.stderr)


def cache_latents(
    data: Path = typer.Option(..., "--data", help="Split folder (NAME.json + video) or Drag-a-Move folder."),
    out: Path = typer.Option(..., "--out", help="Cache folder to fill (existing files are kept)."),
    model: Optional[str] = typer.Option(None, "--model", help="Pipeline folder whose VAE and image encoder encode."),
    size: int = typer.Option(256, "--size", help="Frame size in pixels."),
    device: str = typer.Option("cpu", "--device"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Encode clips once (VAE latents, first-frame latent and image embedding) for training."""
    from ..training.cache import build_cache

    try:
        n = build_cache(data, model, out, size=size, device=device, limit=limit, progress=not quiet)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(code=2)
    print(f"cached {n} new clips in {out}", file=sys.stderr)
