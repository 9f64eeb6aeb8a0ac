"""``puppet-master evaluate``: score models and baselines on the Drag-a-Move protocol (docs/design.md §7)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserInputError

METHODS = ("model", "static", "warp", "autoencoder", "draganything")


def evaluate(
    data: Path = typer.Option(..., "--data", help="Folder of NNNNN.pkl + NNNNN.gif (Drag-a-Move) or NAME.json + video."),
    method: list[str] = typer.Option(["static"], "--method", help="model, static, warp, autoencoder (the ground truth through the model's VAE: the floor any model with that VAE can reach) or draganything; repeat for several."),
    out: Path = typer.Option(..., "--out", help="Output folder for report.json, report.md and videos/."),
    model: Optional[str] = typer.Option(None, "--model", help="Pipeline folder / hub id / 'default' for --method model or autoencoder."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N examples."),
    seed: int = typer.Option(0, "--seed", help="Seed of the model's initial noise."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Sampling steps [default: 50; DragAnything 25]."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Maximum CFG weight [default: 5.0; DragAnything 3.0]."),
    tracker: str = typer.Option("opencv-dis", "--tracker", help="opencv-dis (default), opencv-lk or cotracker."),
    cotracker_checkpoint: Optional[Path] = typer.Option(None, "--cotracker-checkpoint", help="Local CoTracker weights."),
    i3d: Optional[Path] = typer.Option(None, "--i3d", help="Local TorchScript I3D detector for FVD."),
    device: str = typer.Option("cpu", "--device", help="Device for the model, CoTracker, LPIPS and I3D."),
    no_videos: bool = typer.Option(False, "--no-videos", help="Skip the side-by-side GIFs."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    draganything_model: Optional[str] = typer.Option(None, "--draganything-model", help="DragAnythingPipeline folder for --method draganything (--model serves when no Puppet-Master method is asked for)."),
    resolution: str = typer.Option("576x320", "--resolution", help="DragAnything: WIDTHxHEIGHT each example is resized to and back (the release: 576x320)."),
) -> None:
    """Evaluate methods on a test split; write OUT/report.json, OUT/report.md and OUT/videos/*.gif."""
    try:
        _run(data, method, out, model, limit, seed, steps, guidance, tracker, cotracker_checkpoint, i3d, device,
             no_videos, overwrite, quiet, draganything_model, resolution)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(code=2)


def _run(data, method, out, model, limit, seed, steps, guidance, tracker, cotracker_checkpoint, i3d, device,
         no_videos, overwrite, quiet, draganything_model=None, resolution="576x320") -> None:
    from ..evaluation.metrics import FVDMetric, LPIPSMetric
    from ..evaluation.runner import evaluate as run_evaluation
    from ..evaluation.runner import autoencoder_method, model_method, static_method, warp_method
    from ..evaluation.tracking import make_tracker

    unknown = [m for m in method if m not in METHODS]
    if unknown:
        raise UserInputError(f"unknown --method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    if not Path(data).is_dir():
        raise UserInputError(f"--data {str(data)!r} is not a folder")
    if (out / "report.json").exists() and not overwrite:
        raise UserInputError(f"{out / 'report.json'} already exists: pass --overwrite or choose another --out")
    da_method = None
    if "draganything" in method:
        from .draganything import draganything_evaluation_method

        da_method = draganything_evaluation_method(method, model, draganything_model, resolution, steps, guidance, seed,
                                                   device)
    trk = make_tracker(tracker, cotracker_checkpoint, device)
    fvd = FVDMetric(i3d, device) if i3d is not None else None
    methods = {}
    pipe = None
    for m in dict.fromkeys(method):
        if m == "static":
            methods[m] = static_method
        elif m == "warp":
            methods[m] = warp_method
        elif m == "draganything":
            methods[m] = da_method
        else:
            if pipe is None:
                from ..pipelines.loading import load_pipeline

                pipe = load_pipeline(model, device=device)
            if m == "model":
                methods[m] = model_method(pipe, steps=50 if steps is None else steps, seed=seed,
                                          max_guidance=5.0 if guidance is None else guidance)
            else:
                methods[m] = autoencoder_method(pipe)
    report = run_evaluation(data, methods, trk, out, limit=limit, lpips=LPIPSMetric(device=device), fvd=fvd,
                            write_gifs=not no_videos, progress=not quiet)
    if not quiet:
        print((out / "report.md").read_text())
        print(f"wrote {out / 'report.json'} ({report.num_examples} examples)", file=sys.stderr)
