"""``puppet-master animate``: image + drags → video."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserInputError
from ..runtime import interrupt_on_sigterm, keep_freed_memory
from .options import (DETAIL_TRANSFER_RADIUS, MODEL_DEFAULT_SHOWN, MODEL_HELP, THREADS, WARP_INIT_SIGMA,
                      apply_sampling_settings, check_sampling_settings, parse_dtype, progress_bar_config, quiet_loading,
                      set_threads)


@dataclass(frozen=True)
class AnimateOptions:
    """Everything ``animate`` needs (one field per command-line option).

    Coordinates of ``drags`` and of pixel-coordinate JSON are pixels of the input image
    as given (x right, y down), before it is padded to a square and resized to ``size``.
    """

    image: Path
    output: Path
    drags: list[str] = field(default_factory=list)
    drags_json: Optional[Path] = None
    model: Optional[str] = None
    steps: int = 50
    guidance: float = 5.0
    min_guidance: float = 1.0
    seed: int = 0
    frames: int = 14
    size: int = 256
    fps: float = 7.0
    overlay: bool = False
    device: str = "cpu"
    dtype: str = "auto"
    overwrite: bool = False
    quiet: bool = False
    threads: Optional[int] = None
    compile_unet: bool = False
    #: not in the paper; ``None`` keeps the model's setting (cli/options.py)
    warp_init_sigma: Optional[float] = None
    detail_transfer_radius: Optional[float] = None
    #: ``puppet-master`` or ``draganything`` (README "DragAnything"); the fields below are DragAnything's.
    method: str = "puppet-master"
    masks: list[Path] = field(default_factory=list)
    segmenter: Optional[str] = None
    sam_checkpoint: Optional[Path] = None
    resolution: Optional[str] = None


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
    steps: Optional[int] = typer.Option(None, "--steps", min=1, metavar="N",
                                        help="Euler sampling steps [default: 50; DragAnything: 25]."),
    guidance: Optional[float] = typer.Option(
        None, "--guidance", metavar="W", help="Maximum CFG weight, reached at the last frame [default: 5.0; DragAnything: 3.0]."),
    min_guidance: float = typer.Option(1.0, "--min-guidance", metavar="W", help="CFG weight at the first frame."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Random seed of the initial noise."),
    frames: int = typer.Option(14, "--frames", min=2, metavar="N", help="Number of frames to generate."),
    size: Optional[int] = typer.Option(None, "--size", min=8, metavar="PX",
                                       help="Side of the square the model works at, in pixels [default: 256]. "
                                            "Puppet-Master only (DragAnything works at --resolution)."),
    fps: float = typer.Option(7.0, "--fps", min=0.1, metavar="FPS", help="Frames per second of the output video."),
    overlay: bool = typer.Option(False, "--overlay", help="Draw the drag arrows on the output video."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option(
        "auto", "--dtype", metavar="auto|fp32|bf16|fp16",
        help="Precision of the weights and the computation. auto: bf16 on a CPU that computes it natively "
             "(AVX512-BF16 or AMX: about 30 % faster, the video differs slightly from fp32's), else fp32 on a CPU "
             "and the stored precision on a GPU.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or loading bars."),
    compile_unet: bool = typer.Option(
        False, "--compile",
        help="torch.compile the UNet (one-off compile: tens of seconds on a GPU, minutes on a CPU; then faster "
             "steps) and, on a GPU, replay each step from a CUDA graph.",
    ),
    threads: Optional[int] = THREADS,
    warp_init_sigma: Optional[float] = WARP_INIT_SIGMA,
    detail_transfer_radius: Optional[float] = DETAIL_TRANSFER_RADIUS,
    method: str = typer.Option("puppet-master", "--method", metavar="NAME",
                               help="puppet-master, or draganything (entity-level drags; README 'DragAnything')."),
    mask: list[Path] = typer.Option(
        [], "--mask", metavar="FILE",
        help="DragAnything: an entity mask image of the input's size (white = entity); repeat per entity. A drag "
             "moves the smallest mask containing its start. Without masks each drag's entity is segmented."),
    segmenter: Optional[str] = typer.Option(None, "--segmenter", metavar="NAME",
                                            help="DragAnything without --mask: grabcut (default), or sam (needs "
                                                 "segment-anything and --sam-checkpoint)."),
    sam_checkpoint: Optional[Path] = typer.Option(None, "--sam-checkpoint", metavar="FILE",
                                                  help="DragAnything: a local SAM checkpoint for --segmenter sam."),
    resolution: Optional[str] = typer.Option(None, "--resolution", metavar="WxH",
                                             help="DragAnything: the size the model works at and the video is "
                                                  "written at [default: 576x320]."),
) -> None:
    """Animate IMAGE so that its parts move along the drags; write the video to OUTPUT.

    Coordinates of --drag and of pixel-coordinate JSON are in pixels of the input image
    as given (before it is padded to a square and resized to --size).
    """
    from .draganything import DRAGANYTHING_GUIDANCE, DRAGANYTHING_STEPS

    da = method == "draganything"
    if da and size is not None:
        raise UserInputError("--size is for --method puppet-master; DragAnything works at --resolution WxH")
    size = size if size is not None else 256
    steps = steps if steps is not None else (DRAGANYTHING_STEPS if da else 50)
    guidance = guidance if guidance is not None else (DRAGANYTHING_GUIDANCE if da else 5.0)
    run_animate(AnimateOptions(image=image, output=output, drags=list(drag), drags_json=drags_json, model=model,
                               steps=steps, guidance=guidance, min_guidance=min_guidance, seed=seed, frames=frames,
                               size=size, fps=fps, overlay=overlay, device=device, dtype=dtype, overwrite=overwrite, quiet=quiet,
                               threads=threads, compile_unet=compile_unet, warp_init_sigma=warp_init_sigma,
                               detail_transfer_radius=detail_transfer_radius, method=method, masks=list(mask),
                               segmenter=segmenter, sam_checkpoint=sam_checkpoint, resolution=resolution))


def run_animate(opts: AnimateOptions) -> Path:
    """Check the inputs, load the model, sample and write the video; returns the output path.

    Everything that can be checked cheaply (output path, image, drags) is checked before
    the model is loaded, and nothing is written before sampling has finished.

    Raises:
        UserInputError: any bad input (the message names it and the fix).
    """
    set_threads(opts.threads)
    interrupt_on_sigterm()  # SIGTERM unwinds like Ctrl-C: the video's temporary file is removed
    if opts.device == "cpu":
        keep_freed_memory()  # freed tensor memory stays in the process: fewer page faults per step
    if opts.method == "draganything":
        from .draganything import run_animate_draganything

        given = [flag for flag, value in (("--compile", opts.compile_unet or None), ("--warp-init-sigma", opts.warp_init_sigma),
                                          ("--detail-transfer-radius", opts.detail_transfer_radius)) if value is not None]
        if given:
            raise UserInputError(f"{', '.join(given)}: for --method puppet-master only; leave it out for draganything")
        return run_animate_draganything(opts)
    if opts.method != "puppet-master":
        raise UserInputError(f"unknown --method {opts.method!r}: choose puppet-master or draganything")
    if opts.masks:
        raise UserInputError("--mask is for --method draganything; Puppet-Master takes no entity masks")
    given = [name for name, value in (("--segmenter", opts.segmenter), ("--sam-checkpoint", opts.sam_checkpoint),
                                      ("--resolution", opts.resolution)) if value is not None]
    if given:
        raise UserInputError(f"{', '.join(given)}: for --method draganything only; Puppet-Master works at --size")
    check_sampling_settings(opts.warp_init_sigma, opts.detail_transfer_radius)
    from ..limits import check_model_side

    check_model_side(opts.size, "--size")
    square, model_drags = read_inputs(opts)
    pipe = load_model(opts, model_drags.num_drags)
    start = time.perf_counter()
    video = generate(pipe, square, model_drags, opts)
    from ..video import draw_drags, write_video

    if opts.overlay:
        video = draw_drags(video, model_drags.trajectories)
    path = write_video(video, opts.output, fps=opts.fps, overwrite=opts.overwrite)
    if not opts.quiet:
        print(f"wrote {path} ({len(video)} frames, {opts.size}x{opts.size}) in {time.perf_counter() - start:.1f} s",
              file=sys.stderr)
    return path


def read_inputs(opts: AnimateOptions):
    """The output check, the image and the drags: ``(square RGB image, drags in its pixels)``."""
    from ..preprocessing import load_image, prepare_input
    from ..video import check_output_path

    check_output_path(opts.output, opts.overwrite)
    img = load_image(opts.image, notice=lambda message: print(f"note: {message}", file=sys.stderr))
    drags = read_drags(opts, *img.size)
    square, model_drags, _ = prepare_input(img, drags, opts.size)
    return square, model_drags


def read_drags(opts: AnimateOptions, width: int, height: int, max_drags: Optional[int] = None):
    """The drags of ``--drag`` or ``--drags-json`` as a ``DragSet`` in pixels of a ``width × height`` image.

    ``max_drags`` defaults to Puppet-Master's ``K_MAX`` (5).

    Raises:
        UserInputError: both or neither given, or a malformed drag.
    """
    from ..drags import K_MAX, DragSet, parse_drag_argument

    max_drags = K_MAX if max_drags is None else max_drags
    if opts.drags and opts.drags_json is not None:
        raise UserInputError("give drags either with --drag or with --drags-json, not both")
    if opts.drags_json is not None:
        return DragSet.from_json(opts.drags_json, width=width, height=height, num_frames=opts.frames,
                                 max_drags=max_drags)
    if opts.drags:
        return DragSet.from_pairs([parse_drag_argument(d) for d in opts.drags], width, height, num_frames=opts.frames,
                                  max_drags=max_drags)
    raise UserInputError("no drags given: add --drag X0,Y0:X1,Y1 (pixels of the input image) or --drags-json FILE")


def load_model(opts: AnimateOptions, num_drags: int):
    """The pipeline of ``--model``, checked against the drags and ``--size``."""
    from ..pipelines.loading import load_pipeline

    if opts.quiet:
        quiet_loading()
    pipe = load_pipeline(opts.model, device=opts.device, torch_dtype=parse_dtype(opts.dtype, opts.device))
    if num_drags > pipe.unet.config.num_drags:
        raise UserInputError(f"{num_drags} drags given but this model takes at most {pipe.unet.config.num_drags}")
    stride = pipe.vae_scale_factor * pipe.unet.spatial_stride
    if opts.size % stride:
        raise UserInputError(f"--size must be a multiple of {stride} for this model, got {opts.size}")
    apply_sampling_settings(pipe, opts.warp_init_sigma, opts.detail_transfer_radius)
    if opts.compile_unet:
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
        if not opts.compile_unet or "torch._" not in type(exc).__module__:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"--compile failed ({type(exc).__name__}: {first[:200]}); torch.compile needs a working "
                             "C++ compiler on a CPU: install one (e.g. gcc) or leave out --compile") from exc
    return to_uint8_frames(result.frames[0])


def _sample(pipe, square, drags, opts: AnimateOptions):
    import torch

    return pipe(
        square,
        drags,
        num_frames=opts.frames,
        height=opts.size,
        width=opts.size,
        num_inference_steps=opts.steps,
        min_guidance_scale=opts.min_guidance,
        max_guidance_scale=opts.guidance,
        generator=torch.Generator(device="cpu").manual_seed(opts.seed),
        output_type="np",
    )
