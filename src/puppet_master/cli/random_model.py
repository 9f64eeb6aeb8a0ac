"""``puppet-master random-model``: save a pipeline with random weights (smoke tests, benchmarks)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserInputError
from ..options import MAX_SEED
from ..values import parse_json


def random_model(
    out_dir: Path = typer.Argument(..., metavar="OUT_DIR", help="Folder to create (must not exist)."),
    size: str = typer.Option("tiny", "--size", help="tiny (seconds on CPU), small (the default model's architecture) or full (SVD-img2vid sizes, ~7 GB)."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the random weights (0 to 2**32 - 1)."),
    no_image_encoder: bool = typer.Option(False, "--no-image-encoder", help="Leave out the CLIP image encoder."),
    vae: Optional[Path] = typer.Option(None, "--vae", help="A trained VAE folder (e.g. from train-vae) instead of a random one."),
    method: str = typer.Option("puppet-master", "--method", metavar="NAME",
                               help="puppet-master, or draganything (a tiny DragAnythingPipeline; --size and --vae "
                                    "do not apply)."),
) -> None:
    """Save a PuppetMasterPipeline with RANDOM weights to OUT_DIR.

    Its videos are noise: it exists to test installs, the command line and speed
    without downloading real weights, and (with --vae) as the starting point of training
    a model from scratch (recipes/default-model/README.md).
    """
    if out_dir.exists():
        raise UserInputError(f"{str(out_dir)!r} already exists: choose a new folder")
    if method == "draganything":
        from .draganything import save_random_draganything

        save_random_draganything(out_dir, seed=seed, with_image_encoder=not no_image_encoder)
        return
    if method != "puppet-master":
        raise UserInputError(f"--method must be puppet-master or draganything, got {method!r}")
    if size not in ("tiny", "small", "full"):
        raise UserInputError(f"--size must be tiny, small or full, got {size!r}")
    from ..pipelines import PuppetMasterPipeline, build_components

    trained_vae = None
    if vae is not None:
        from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder, AutoencoderTiny

        config_file = vae / "config.json"
        if not config_file.is_file():
            raise UserInputError(f"VAE folder {str(vae)!r} has no config.json (save it with save_pretrained)")
        config = parse_json(config_file.read_bytes(), f"VAE config {str(config_file)!r}")
        if not isinstance(config, dict):
            raise UserInputError(f"{str(config_file)!r} is not a diffusers VAE config (JSON object)")
        from ..models import AutoencoderKLTinyDecoder

        classes = {c.__name__: c for c in (AutoencoderKL, AutoencoderKLTemporalDecoder, AutoencoderKLTinyDecoder,
                                           AutoencoderTiny)}
        class_name = config.get("_class_name")
        if class_name not in classes:
            raise UserInputError(f"VAE folder {str(vae)!r} holds a {class_name!r}; --vae takes one of "
                                 f"{', '.join(classes)}")
        trained_vae = classes[class_name].from_pretrained(vae)
    pipe = PuppetMasterPipeline(**build_components(size, seed=seed, with_image_encoder=not no_image_encoder, vae=trained_vae))
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    pipe.save_pretrained(tmp)
    tmp.rename(out_dir)
    print(f"saved random-weight {size} pipeline to {out_dir}", file=sys.stderr)
