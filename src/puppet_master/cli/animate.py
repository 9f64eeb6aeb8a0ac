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
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Euler sampling steps [default: 50; DragAnything 25]."),
    guidance: Optional[float] = typer.Option(
        None, "--guidance", help="Maximum CFG weight, reached at the last frame [default: 5.0; DragAnything 3.0]."),
    min_guidance: float = typer.Option(1.0, "--min-guidance", help="CFG weight at the first frame."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the initial noise."),
    frames: int = typer.Option(14, "--frames", min=2, help="Number of frames to generate."),
    size: int = typer.Option(256, "--size", min=8, help="Side of the square the model works at, in pixels."),
    fps: float = typer.Option(7.0, "--fps", min=0.1, help="Frames per second of the output video."),
    overlay: bool = typer.Option(False, "--overlay", help="Draw the drag arrows on the output video."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    method: str = typer.Option("puppet-master", "--method", help="puppet-master or draganything (entity-level drags; README 'DragAnything')."),
    mask: list[Path] = typer.Option([], "--mask", help="DragAnything: an entity mask image (white = entity, the image's size); repeat per entity. Without: GrabCut around each drag start."),
    segmenter: str = typer.Option("grabcut", "--segmenter", help="DragAnything without --mask: grabcut or sam (needs segment-anything and --sam-checkpoint)."),
    sam_checkpoint: Optional[Path] = typer.Option(None, "--sam-checkpoint", help="DragAnything: local SAM checkpoint for --segmenter sam."),
    resolution: str = typer.Option("576x320", "--resolution", help="DragAnything: WIDTHxHEIGHT the model works at (the release: 576x320)."),
) -> None:
    """Animate IMAGE so that its parts move along the drags; write the video to OUTPUT.

    Coordinates of --drag and of pixel-coordinate JSON are in pixels of the input image
    as given (before it is padded to a square and resized to --size).
    """
    try:
        if method == "draganything":
            from .draganything import DragAnythingAnimateOptions, run_animate_draganything

            run_animate_draganything(DragAnythingAnimateOptions(
                image=image, output=output, model=model, drags=list(drag), drags_json=drags_json, masks=list(mask),
                segmenter=segmenter, sam_checkpoint=sam_checkpoint, resolution=resolution, steps=steps,
                guidance=guidance, min_guidance=min_guidance, seed=seed, frames=frames, fps=fps, overlay=overlay,
                device=device, overwrite=overwrite, quiet=quiet))
            return
        if method != "puppet-master":
            raise UserInputError(f"unknown --method {method!r}: choose puppet-master or draganything")
        if mask:
            raise UserInputError("--mask is for --method draganything; Puppet-Master takes no entity masks")
        _run(image, output, drag, drags_json, model, 50 if steps is None else steps, 5.0 if guidance is None else guidance,
             min_guidance, seed, frames, size, fps, overlay, device, overwrite, quiet)
    except UserInputError as exc:
        _fail(str(exc))


def _run(image, output, drag, drags_json, model, steps, guidance, min_guidance, seed, frames, size, fps,
         overlay, device, overwrite, quiet) -> None:
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
