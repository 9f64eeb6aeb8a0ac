"""``puppet-master animate``: image + drags → video."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserInputError


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code=2)


def animate(
    image: Path = typer.Argument(..., help="Input image (PNG/JPEG/...). An alpha channel is used as foreground mask."),
    output: Path = typer.Option(..., "--output", "-o", help="Output video: .mp4, .gif or .webp."),
    drag: list[str] = typer.Option(
        [], "--drag", "-d",
        help="A drag X0,Y0:X1,Y1 from start to end point, in PIXELS of the input image "
             "(x right, y down, origin top-left). Repeat for up to 5 drags.",
    ),
    drags_json: Optional[Path] = typer.Option(
        None, "--drags-json", help="JSON file with drags (start/end pairs or full trajectories); see README."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Pipeline folder saved by save_pretrained, a hub id, or 'default' (embedded model)."
    ),
    steps: int = typer.Option(50, "--steps", min=1, help="Euler sampling steps."),
    guidance: float = typer.Option(5.0, "--guidance", help="Maximum CFG weight (reached at the last frame)."),
    min_guidance: float = typer.Option(1.0, "--min-guidance", help="CFG weight at the first frame."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the initial noise."),
    frames: int = typer.Option(14, "--frames", min=2, help="Number of frames to generate."),
    size: int = typer.Option(256, "--size", min=8, help="Side of the square the model works at, in pixels."),
    fps: float = typer.Option(7.0, "--fps", min=0.1, help="Frames per second of the output video."),
    overlay: bool = typer.Option(False, "--overlay", help="Draw the drag arrows on the output video."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    compile_unet: bool = typer.Option(
        False, "--compile",
        help="torch.compile the UNet (one-off compile: tens of seconds on a GPU, minutes on a CPU; then faster "
             "steps) and, on a GPU, replay each step from a CUDA graph.",
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, help="CPU threads for torch (default: one per core; on a busy machine 1 can be faster)."
    ),
) -> None:
    """Animate IMAGE so that its parts move along the drags; write the video to OUTPUT.

    Coordinates of --drag and of pixel-coordinate JSON are in pixels of the input image
    as given (before it is padded to a square and resized to --size).
    """
    if device == "cpu":
        from ..runtime import configure_cpu

        configure_cpu(threads)  # thread count, and freed tensor memory kept in the process (fewer page faults)
    elif threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        _run(image, output, drag, drags_json, model, steps, guidance, min_guidance, seed, frames, size, fps,
             overlay, device, overwrite, quiet, compile_unet=compile_unet)
    except UserInputError as exc:
        _fail(str(exc))


def _run(image, output, drag, drags_json, model, steps, guidance, min_guidance, seed, frames, size, fps,
         overlay, device, overwrite, quiet, compile_unet: bool = False) -> None:
    # Cheap checks first: nothing is loaded or written before all input is known good.
    from ..drags import DragSet, parse_drag_argument
    from ..preprocessing import load_image, prepare_input
    from ..video import check_output_path, draw_drags, to_uint8_frames, write_video

    check_output_path(output, overwrite)
    img = load_image(image)
    width, height = img.size
    if drag and drags_json is not None:
        raise UserInputError("give drags either with --drag or with --drags-json, not both")
    if drags_json is not None:
        drags = DragSet.from_json(drags_json, width=width, height=height, num_frames=frames)
    elif drag:
        drags = DragSet.from_pairs([parse_drag_argument(d) for d in drag], width, height, num_frames=frames)
    else:
        raise UserInputError("no drags given: add --drag X0,Y0:X1,Y1 (pixels of the input image) or --drags-json FILE")
    square, model_drags, _ = prepare_input(img, drags, size)

    import torch

    from ..pipelines.loading import load_pipeline

    pipe = load_pipeline(model, device=device)
    if model_drags.num_drags > pipe.unet.config.num_drags:
        raise UserInputError(f"{model_drags.num_drags} drags given but this model takes at most {pipe.unet.config.num_drags}")
    stride = pipe.vae_scale_factor * pipe.unet.spatial_stride
    if size % stride:
        raise UserInputError(f"--size must be a multiple of {stride} for this model, got {size}")
    if compile_unet:
        pipe.enable_compile()
        if pipe.device.type == "cuda":
            pipe.enable_cuda_graph()
    pipe.set_progress_bar_config(disable=quiet, desc="denoising", leave=False)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    start = time.perf_counter()
    result = pipe(
        square,
        model_drags,
        num_frames=frames,
        height=size,
        width=size,
        num_inference_steps=steps,
        min_guidance_scale=min_guidance,
        max_guidance_scale=guidance,
        generator=generator,
        output_type="np",
    )
    video = to_uint8_frames(result.frames[0])
    if overlay:
        video = draw_drags(video, model_drags.trajectories)
    path = write_video(video, output, fps=fps, overwrite=overwrite)
    if not quiet:
        print(f"wrote {path} ({len(video)} frames, {size}x{size}) in {time.perf_counter() - start:.1f} s", file=sys.stderr)
