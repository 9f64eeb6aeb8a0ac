"""``puppet-master animate``: image + drags → video."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserInputError
from ..options import ANIMATE, METHODS, DragAnythingOptions, MethodOptions, PuppetMasterOptions, owners
from ..runtime import interrupt_on_sigterm, keep_freed_memory
from .inputs import read_drags
from .options import (MODEL_DEFAULT_SHOWN, MODEL_HELP, THREADS, flag_names, method_flags, method_options,
                      parse_dtype, progress_bar_config, quiet_loading, sampling_note, set_threads, unused_flags)


@dataclass(frozen=True)
class AnimateOptions:
    """Everything ``animate`` needs: the inputs and outputs, and the method's options.

    Coordinates of ``drags`` and of pixel-coordinate JSON are pixels of the input image
    as given (x right, y down), before it is padded to a square and resized.
    """

    image: Path
    output: Path
    #: the method and its options (frames, steps, guidance, seed, ...; puppet_master/options.py)
    options: MethodOptions = field(default_factory=PuppetMasterOptions)
    drags: list[str] = field(default_factory=list)
    drags_json: Optional[Path] = None
    model: Optional[str] = None
    overlay: bool = False
    device: str = "cpu"
    dtype: str = "auto"
    overwrite: bool = False
    quiet: bool = False
    threads: Optional[int] = None


@method_flags(list(METHODS.values()), ANIMATE)
def animate(
    image: Path = typer.Argument(..., metavar="IMAGE",
                                 help="Input image (PNG/JPEG/...). An alpha channel is used as foreground mask."),
    output: Path = typer.Option(..., "--output", "-o", metavar="VIDEO", help="Output video: .mp4, .gif or .webp."),
    drag: list[str] = typer.Option(
        [], "--drag", "-d", metavar="X0,Y0:X1,Y1",
        help="A drag from start to end point, in PIXELS of the input image (x right, y down, origin top-left). "
             "Repeat for up to 5 drags. The start must be on the image; the end may leave it.",
    ),
    drags_json: Optional[Path] = typer.Option(
        None, "--drags-json", metavar="FILE",
        help="JSON file with drags (start/end pairs or full trajectories); see README.",
    ),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="DIR|HUB_ID", help=MODEL_HELP,
                                        show_default=MODEL_DEFAULT_SHOWN),
    method: str = typer.Option("puppet-master", "--method", metavar="NAME",
                               help="puppet-master, or draganything (entity-level drags; README 'DragAnything')."),
    overlay: bool = typer.Option(False, "--overlay", help="Draw the drag arrows on the output video."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option(
        "auto", "--dtype", metavar="auto|fp32|bf16|fp16",
        help="Precision of the weights and the computation. auto: bf16 on a CPU that computes it natively "
             "(AVX512-BF16 or AMX: about 30 % faster, the video differs slightly from fp32's), else fp32 on a CPU "
             "and the stored precision on a GPU.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes (the final 'wrote' line stays)."),
    threads: Optional[int] = THREADS,
    **flags,
) -> None:
    """Animate IMAGE so that its parts move along the drags; write the video to OUTPUT.

    Coordinates of --drag and of pixel-coordinate JSON are in pixels of the input image
    as given (before it is padded to a square and resized to --size). The sampling options
    (--steps, --guidance, ...) default to each method's own settings.
    """
    if method not in METHODS:
        raise UserInputError(f"unknown --method {method!r}: choose {' or '.join(METHODS)}")
    cls = METHODS[method]
    foreign = unused_flags(flags, [cls], ANIMATE)
    if foreign:
        owner = owners(foreign[0], list(METHODS.values()), ANIMATE)[0]
        them = "it" if len(foreign) == 1 else "them"
        raise UserInputError(f"{flag_names(foreign, list(METHODS.values()), ANIMATE)}: for --method {owner.method} "
                             f"only; leave {them} out for --method {method}")
    run_animate(AnimateOptions(image=image, output=output, options=method_options(cls, flags, ANIMATE),
                               drags=list(drag), drags_json=drags_json, model=model, overlay=overlay, device=device,
                               dtype=dtype, overwrite=overwrite, quiet=quiet, threads=threads))


def run_animate(opts: AnimateOptions) -> Path:
    """Check the inputs, load the model, sample and write the video; returns the output path.

    Everything that can be checked cheaply (options, device, output path, image, drags) is
    checked before the model is loaded, and nothing is written before sampling has
    finished. The final ``wrote ...`` line is printed also with ``quiet``.

    Raises:
        UserInputError: any bad input (the message names it and the fix).
    """
    from ..pipelines.loading import check_device

    set_threads(opts.threads)
    check_device(opts.device)
    interrupt_on_sigterm()  # SIGTERM unwinds like Ctrl-C: the video's temporary file is removed
    if opts.device == "cpu":
        keep_freed_memory()  # freed tensor memory stays in the process: fewer page faults per step
    if isinstance(opts.options, DragAnythingOptions):
        from .draganything import run_animate_draganything

        return run_animate_draganything(opts)
    options: PuppetMasterOptions = opts.options
    square, model_drags = read_inputs(opts)
    pipe = load_model(opts, model_drags.num_drags)
    note = sampling_note(pipe, options)
    if note and not opts.quiet:
        print(f"note: {note}", file=sys.stderr)
    start = time.perf_counter()
    video = generate(pipe, square, model_drags, opts)
    from ..video import draw_drags, write_video

    if opts.overlay:
        video = draw_drags(video, model_drags.trajectories)
    path = write_video(video, opts.output, fps=options.fps, overwrite=opts.overwrite)
    print(f"wrote {path} ({len(video)} frames, {options.size}x{options.size}) in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    return path


def read_inputs(opts: AnimateOptions):
    """The output check, the image and the drags: ``(square RGB image, drags in its pixels)``."""
    from ..preprocessing import load_image, prepare_input
    from ..video import check_output_path

    check_output_path(opts.output, opts.overwrite)
    img = load_image(opts.image, notice=lambda message: print(f"note: {message}", file=sys.stderr))
    drags = read_drags(opts.drags, opts.drags_json, *img.size, num_frames=opts.options.frames)
    square, model_drags, _ = prepare_input(img, drags, opts.options.size)
    return square, model_drags


def load_model(opts: AnimateOptions, num_drags: int):
    """The pipeline of ``--model``, checked against the drags and ``--size``."""
    from ..pipelines.loading import load_pipeline

    quiet_loading()
    pipe = load_pipeline(opts.model, device=opts.device, torch_dtype=parse_dtype(opts.dtype, opts.device))
    if num_drags > pipe.unet.config.num_drags:
        raise UserInputError(f"{num_drags} drags given but this model takes at most {pipe.unet.config.num_drags}")
    stride = pipe.vae_scale_factor * pipe.unet.spatial_stride
    if opts.options.size % stride:
        raise UserInputError(f"--size must be a multiple of {stride} for this model, got {opts.options.size}")
    if opts.options.compile_unet:
        pipe.enable_compile()
        if pipe.device.type == "cuda":
            pipe.enable_cuda_graph()
    return pipe


def generate(pipe, square, drags, opts: AnimateOptions):
    """Sample the video: uint8 ``(N, S, S, 3)``.

    Raises:
        UserInputError: ``--compile`` asked for and torch.compile failed (e.g. no C++ compiler).
    """
    from ..video import to_uint8_frames

    pipe.set_progress_bar_config(**progress_bar_config("denoising", opts.quiet))
    try:
        result = _sample(pipe, square, drags, opts)
    except Exception as exc:  # noqa: BLE001 - only torch.compile's failures are turned into a message
        if not opts.options.compile_unet or "torch._" not in type(exc).__module__:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"--compile failed ({type(exc).__name__}: {first[:200]}); torch.compile needs a working "
                             "C++ compiler on a CPU: install one (e.g. gcc) or leave out --compile") from exc
    return to_uint8_frames(result.frames[0])


def _sample(pipe, square, drags, opts: AnimateOptions):
    """One pipeline call; the options set the sampling arguments of this call only (never the model's config)."""
    return pipe(square, drags, num_frames=opts.options.frames, height=opts.options.size, width=opts.options.size,
                output_type="np", **opts.options.call_kwargs())
