"""``puppet-master random-model``: save a pipeline with random weights (smoke tests, benchmarks)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def random_model(
    out_dir: Path = typer.Argument(..., help="Folder to create (must not exist)."),
    size: str = typer.Option("tiny", "--size", help="tiny (seconds on CPU) or full (SVD-img2vid sizes, ~7 GB)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
    no_image_encoder: bool = typer.Option(False, "--no-image-encoder", help="Leave out the CLIP image encoder."),
) -> None:
    """Save a PuppetMasterPipeline with RANDOM weights to OUT_DIR.

    Its videos are noise: it exists to test installs, the command line and speed
    without downloading real weights.
    """
    if out_dir.exists():
        print(f"error: {str(out_dir)!r} already exists: choose a new folder", file=sys.stderr)
        raise typer.Exit(code=2)
    if size not in ("tiny", "full"):
        print(f"error: --size must be tiny or full, got {size!r}", file=sys.stderr)
        raise typer.Exit(code=2)
    from ..pipelines import PuppetMasterPipeline, build_components

    pipe = PuppetMasterPipeline(**build_components(size, seed=seed, with_image_encoder=not no_image_encoder))
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    pipe.save_pretrained(tmp)
    tmp.rename(out_dir)
    print(f"saved random-weight {size} pipeline to {out_dir}", file=sys.stderr)
