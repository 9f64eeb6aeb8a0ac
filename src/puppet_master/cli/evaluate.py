"""``puppet-master evaluate``: score models and baselines on the Drag-a-Move protocol (docs/design.md §7)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserInputError
from ..options import EVALUATE, DragAnythingOptions, MethodOptions, PuppetMasterOptions, owners
from .options import (MODEL_DEFAULT_SHOWN, MODEL_HELP, THREADS, flag_names, method_flags, method_options, quiet_loading,
                      set_threads, unused_flags)

#: Methods ``--method`` accepts; ``model`` and ``autoencoder`` need ``--model``'s pipeline, ``draganything``
#: ``--draganything-model``'s (or ``--model``'s when no Puppet-Master method is asked for).
METHODS = ("model", "static", "warp", "autoencoder", "draganything")
PIPELINE_METHODS = ("model", "autoencoder")
#: The methods that sample, and their options (puppet_master/options.py): their flags are evaluate's.
SAMPLING_METHODS = {"model": PuppetMasterOptions, "draganything": DragAnythingOptions}


@dataclass(frozen=True)
class EvaluateOptions:
    """Everything ``evaluate`` needs: data, output, methods and their options, metrics."""

    data: Path
    out: Path
    methods: list[str] = field(default_factory=lambda: ["static"])
    #: the options of each sampling method asked for (``"model"``, ``"draganything"``)
    method_options: dict[str, MethodOptions] = field(default_factory=dict)
    model: Optional[str] = None
    limit: Optional[int] = None
    tracker: str = "opencv-dis"
    cotracker_checkpoint: Optional[Path] = None
    i3d: Optional[Path] = None
    device: str = "cpu"
    no_videos: bool = False
    overwrite: bool = False
    quiet: bool = False
    threads: Optional[int] = None
    draganything_model: Optional[str] = None

    def options_of(self, method: str) -> MethodOptions:
        """The options of sampling ``method`` (the method's defaults when none were made)."""
        return self.method_options.get(method) or SAMPLING_METHODS[method]()


@method_flags(list(SAMPLING_METHODS.values()), EVALUATE)
def evaluate(
    data: Path = typer.Option(..., "--data", metavar="DIR",
                              help="Folder of NNNNN.pkl + NNNNN.gif (Drag-a-Move) or NAME.json + video."),
    method: list[str] = typer.Option(
        ["static"], "--method", metavar="NAME",
        help="model, static, warp, draganything or autoencoder (the ground truth through the model's VAE: the best any model "
             "with that VAE can reach without detail transfer); repeat for several."),
    out: Path = typer.Option(..., "--out", metavar="DIR",
                             help="Output folder for report.json, report.md and videos/ (required: name a folder outside "
                                  "the repository, or one that .gitignore covers such as eval-NAME)."),
    model: Optional[str] = typer.Option(None, "--model", metavar="DIR|HUB_ID",
                                        help=MODEL_HELP + " For --method model or autoencoder.",
                                        show_default=MODEL_DEFAULT_SHOWN),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, metavar="N", help="Only the first N examples."),
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
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="No progress bars (the report and the final 'wrote' line stay)."),
    threads: Optional[int] = THREADS,
    draganything_model: Optional[str] = typer.Option(
        None, "--draganything-model", metavar="DIR|HUB_ID",
        help="DragAnythingPipeline for --method draganything (--model serves when no Puppet-Master method is asked for)."),
    **flags,
) -> None:
    """Evaluate methods on a test split; write OUT/report.json, OUT/report.md and OUT/videos/*.gif.

    An example that cannot be read is listed in the report with the reason and skipped;
    the run goes on. The sampling options (--steps, --guidance, ...) apply to every method
    that has them, each defaulting to its method's own setting.
    """
    methods = list(method)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserInputError(f"unknown --method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    chosen = {m: cls for m, cls in SAMPLING_METHODS.items() if m in methods}
    foreign = unused_flags(flags, list(chosen.values()), EVALUATE)
    if foreign:
        owner = next(m for m, cls in SAMPLING_METHODS.items() if owners(foreign[0], [cls], EVALUATE))
        what = flag_names(foreign, list(SAMPLING_METHODS.values()), EVALUATE)
        verb = "sets" if len(foreign) == 1 else "set"
        raise UserInputError(f"{what} {verb} how --method {owner} samples: add --method {owner} or leave "
                             f"{'it' if len(foreign) == 1 else 'them'} out")
    run_evaluate(EvaluateOptions(data=data, out=out, methods=methods,
                                 method_options={m: method_options(cls, flags, EVALUATE) for m, cls in chosen.items()},
                                 model=model, limit=limit, tracker=tracker, cotracker_checkpoint=cotracker_checkpoint,
                                 i3d=i3d, device=device, no_videos=no_videos, overwrite=overwrite, quiet=quiet,
                                 threads=threads, draganything_model=draganything_model))


def run_evaluate(opts: EvaluateOptions):
    """Check the options, build the methods and metrics, run the evaluation; returns the report.

    Raises:
        UserInputError: unknown method, missing data folder, existing report without
            ``overwrite``, an output folder whose ``report.*`` or ``videos`` is of the wrong
            kind, unusable device, unreadable tracker / detector / model, no readable example.
    """
    from ..evaluation.metrics import FVDMetric, LPIPSMetric
    from ..evaluation.runner import evaluate as run_evaluation
    from ..evaluation.tracking import make_tracker
    from ..pipelines.loading import check_device

    set_threads(opts.threads)
    unknown = [m for m in opts.methods if m not in METHODS]
    if unknown:
        raise UserInputError(f"unknown --method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    if not Path(opts.data).is_dir():
        raise UserInputError(f"--data {str(opts.data)!r} is not a folder")
    if (opts.out / "report.json").exists() and not opts.overwrite:
        raise UserInputError(f"{opts.out / 'report.json'} already exists: pass --overwrite or choose another --out")
    _check_out_folder(opts.out, write_gifs=not opts.no_videos)
    check_device(opts.device)
    trk = make_tracker(opts.tracker, opts.cotracker_checkpoint, opts.device)
    fvd = FVDMetric(opts.i3d, opts.device) if opts.i3d is not None else None
    methods = build_methods(opts)
    report = run_evaluation(opts.data, methods, trk, opts.out, limit=opts.limit, lpips=LPIPSMetric(device=opts.device),
                            fvd=fvd, write_gifs=not opts.no_videos, progress=not opts.quiet)
    print((opts.out / "report.md").read_text())
    print(f"wrote {opts.out / 'report.json'} ({report.num_examples} examples)", file=sys.stderr)
    return report


def _check_out_folder(out: Path, write_gifs: bool = True) -> None:
    """``--out`` must be a folder, or creatable in a writable one, and what goes in it must fit (checked before any work).

    ``report.json`` and ``report.md`` must be files if they exist, ``videos`` a folder.
    """
    existing = Path(out)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserInputError(f"--out {str(out)!r} is not a folder ({str(existing)!r} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"--out {str(out)!r} cannot be written: {str(existing)!r} is not writable")
    for name in ("report.json", "report.md"):
        target = Path(out) / name
        if target.exists() and not target.is_file():
            raise UserInputError(f"{str(target)!r} is not a file: the report cannot be written there; remove it or "
                                 "choose another --out")
    videos = Path(out) / "videos"
    if write_gifs and videos.exists() and not videos.is_dir():
        raise UserInputError(f"{str(videos)!r} is a file, not a folder: the side-by-side GIFs go there; remove it, "
                             "choose another --out or pass --no-videos")


def build_methods(opts: EvaluateOptions) -> dict:
    """``{method name: generator}`` in the order given; the pipeline is loaded once if a method needs it."""
    from ..evaluation.runner import autoencoder_method, model_method, static_method, warp_method

    quiet_loading()
    draganything = None
    if "draganything" in opts.methods:
        from .draganything import draganything_evaluation_method

        draganything = draganything_evaluation_method(opts.methods, opts.model, opts.draganything_model,
                                                      opts.options_of("draganything"), opts.device)
    pipe = None
    if any(m in PIPELINE_METHODS for m in opts.methods):
        from ..pipelines.loading import load_pipeline

        pipe = load_pipeline(opts.model, device=opts.device)
    builders = {
        "static": lambda: static_method,
        "warp": lambda: warp_method,
        "model": lambda: model_method(pipe, opts.options_of("model")),
        "autoencoder": lambda: autoencoder_method(pipe),
        "draganything": lambda: draganything,
    }
    return {m: builders[m]() for m in dict.fromkeys(opts.methods)}
