"""``puppet-master evaluate``: score models and baselines on the Drag-a-Move protocol (docs/design.md §7)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserInputError
from .options import MODEL_DEFAULT_SHOWN, MODEL_HELP, THREADS, quiet_loading, set_threads

#: Methods ``--method`` accepts; ``model`` and ``autoencoder`` need ``--model``'s pipeline.
METHODS = ("model", "static", "warp", "autoencoder")
PIPELINE_METHODS = ("model", "autoencoder")


@dataclass(frozen=True)
class EvaluateOptions:
    """Everything ``evaluate`` needs (one field per command-line option)."""

    data: Path
    out: Path
    methods: list[str] = field(default_factory=lambda: ["static"])
    model: Optional[str] = None
    limit: Optional[int] = None
    seed: int = 0
    steps: int = 50
    guidance: float = 5.0
    tracker: str = "opencv-dis"
    cotracker_checkpoint: Optional[Path] = None
    i3d: Optional[Path] = None
    device: str = "cpu"
    no_videos: bool = False
    overwrite: bool = False
    quiet: bool = False
    threads: Optional[int] = None


def evaluate(
    data: Path = typer.Option(..., "--data", metavar="DIR",
                              help="Folder of NNNNN.pkl + NNNNN.gif (Drag-a-Move) or NAME.json + video."),
    method: list[str] = typer.Option(
        ["static"], "--method", metavar="NAME",
        help="model, static, warp or autoencoder (the ground truth through the model's VAE: the floor any model "
             "with that VAE can reach); repeat for several."),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Output folder for report.json, report.md and videos/."),
    model: Optional[str] = typer.Option(None, "--model", metavar="DIR|HUB_ID",
                                        help=MODEL_HELP + " For --method model or autoencoder.",
                                        show_default=MODEL_DEFAULT_SHOWN),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, metavar="N", help="Only the first N examples."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the model's initial noise."),
    steps: int = typer.Option(50, "--steps", min=1, metavar="N", help="Sampling steps of the model."),
    guidance: float = typer.Option(5.0, "--guidance", metavar="W", help="Maximum CFG weight of the model."),
    tracker: str = typer.Option("opencv-dis", "--tracker", metavar="NAME",
                                help="opencv-dis (default), opencv-lk or cotracker."),
    cotracker_checkpoint: Optional[Path] = typer.Option(
        None, "--cotracker-checkpoint", metavar="FILE",
        help="Local CoTracker weights (a state dict, read with torch.load(weights_only=True)); needs the cotracker "
             "package, whose model code is trusted."),
    i3d: Optional[Path] = typer.Option(
        None, "--i3d", metavar="FILE",
        help="Local TorchScript I3D detector for FVD. A TorchScript file is a program: it is run, so give only a "
             "file from a source you trust (e.g. the common i3d_torchscript.pt)."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="Device for the model, CoTracker, LPIPS and I3D."),
    no_videos: bool = typer.Option(False, "--no-videos", help="Skip the side-by-side GIFs."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or loading bars."),
    threads: Optional[int] = THREADS,
) -> None:
    """Evaluate methods on a test split; write OUT/report.json, OUT/report.md and OUT/videos/*.gif.

    An example that cannot be read is listed in the report with the reason and skipped;
    the run goes on.
    """
    run_evaluate(EvaluateOptions(data=data, out=out, methods=list(method), model=model, limit=limit, seed=seed,
                                 steps=steps, guidance=guidance, tracker=tracker,
                                 cotracker_checkpoint=cotracker_checkpoint, i3d=i3d, device=device,
                                 no_videos=no_videos, overwrite=overwrite, quiet=quiet, threads=threads))


def run_evaluate(opts: EvaluateOptions):
    """Check the options, build the methods and metrics, run the evaluation; returns the report.

    Raises:
        UserInputError: unknown method, missing data folder, existing report without
            ``overwrite``, unreadable tracker / detector / model, no readable example.
    """
    from ..evaluation.metrics import FVDMetric, LPIPSMetric
    from ..evaluation.runner import evaluate as run_evaluation
    from ..evaluation.tracking import make_tracker

    set_threads(opts.threads)
    unknown = [m for m in opts.methods if m not in METHODS]
    if unknown:
        raise UserInputError(f"unknown --method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    if not Path(opts.data).is_dir():
        raise UserInputError(f"--data {str(opts.data)!r} is not a folder")
    if (opts.out / "report.json").exists() and not opts.overwrite:
        raise UserInputError(f"{opts.out / 'report.json'} already exists: pass --overwrite or choose another --out")
    _check_out_folder(opts.out)
    trk = make_tracker(opts.tracker, opts.cotracker_checkpoint, opts.device)
    fvd = FVDMetric(opts.i3d, opts.device) if opts.i3d is not None else None
    methods = build_methods(opts)
    report = run_evaluation(opts.data, methods, trk, opts.out, limit=opts.limit, lpips=LPIPSMetric(device=opts.device),
                            fvd=fvd, write_gifs=not opts.no_videos, progress=not opts.quiet)
    if not opts.quiet:
        print((opts.out / "report.md").read_text())
        print(f"wrote {opts.out / 'report.json'} ({report.num_examples} examples)", file=sys.stderr)
    return report


def _check_out_folder(out: Path) -> None:
    """``--out`` must be a folder, or creatable in a writable one (checked before any work)."""
    existing = Path(out)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserInputError(f"--out {str(out)!r} is not a folder ({str(existing)!r} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"--out {str(out)!r} cannot be written: {str(existing)!r} is not writable")


def build_methods(opts: EvaluateOptions) -> dict:
    """``{method name: generator}`` in the order given; the pipeline is loaded once if a method needs it."""
    from ..evaluation.runner import autoencoder_method, model_method, static_method, warp_method

    pipe = None
    if any(m in PIPELINE_METHODS for m in opts.methods):
        from ..pipelines.loading import load_pipeline

        if opts.quiet:
            quiet_loading()
        pipe = load_pipeline(opts.model, device=opts.device)
    builders = {
        "static": lambda: static_method,
        "warp": lambda: warp_method,
        "model": lambda: model_method(pipe, steps=opts.steps, seed=opts.seed, max_guidance=opts.guidance),
        "autoencoder": lambda: autoencoder_method(pipe),
    }
    return {m: builders[m]() for m in dict.fromkeys(opts.methods)}
