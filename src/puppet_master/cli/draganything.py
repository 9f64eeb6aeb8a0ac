"""DragAnything in the command line: ``animate --method draganything`` and ``random-model --method draganything``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..errors import UserInputError
from ..options import SEGMENTERS, DragAnythingOptions
from .inputs import read_drags
from .options import parse_dtype, progress_bar_config, quiet_loading


def read_entity_masks(image, drags, mask_files, segmenter: str = "grabcut", sam_checkpoint: Path | None = None,
                      device: str = "cpu") -> list:
    """One entity mask per drag (bool ``(H, W)`` of the image), checked before any model is loaded.

    With ``mask_files`` each drag takes the smallest mask containing its start point;
    without, ``segmenter`` finds the entity around each start (``grabcut`` offline, or
    ``sam`` with a local checkpoint and the optional ``segment-anything`` package).

    Raises:
        UserInputError: unreadable or wrongly sized masks, a drag outside every mask, an
            unknown segmenter, SAM asked for but not available.
    """
    from ..entity import assign_drags_to_masks, load_mask, sam_entity_masks, segment_entities

    if segmenter not in SEGMENTERS:
        raise UserInputError(f"--segmenter must be one of {', '.join(SEGMENTERS)}, got {segmenter!r}")  # library callers
    if mask_files:
        masks = [load_mask(p, size=image.size) for p in mask_files]
        return [masks[i] for i in assign_drags_to_masks(drags.starts, masks)]
    if segmenter == "sam":
        if sam_checkpoint is None:
            raise UserInputError("--segmenter sam needs --sam-checkpoint FILE (e.g. sam_vit_h_4b8939.pth)")
        return sam_entity_masks(image, drags.starts, sam_checkpoint, device=device)
    return segment_entities(image, drags.starts)


def run_animate_draganything(opts) -> Path:
    """``animate --method draganything``: image + drags (+ masks) → video with the image's aspect.

    The image is fitted into the model resolution keeping its aspect (white margins) and
    the video cropped back to the image's part (``DragAnythingPipeline(keep_aspect=True)``).

    ``opts`` is :class:`~puppet_master.cli.animate.AnimateOptions` with
    :class:`~puppet_master.options.DragAnythingOptions`. Inputs, masks and the resolution
    are checked before the model is loaded; nothing is written before sampling has finished.

    Raises:
        UserInputError: any bad input.
    """
    from ..preprocessing import composite_on_white, load_image
    from ..video import check_output_path, draw_drags, to_uint8_frames, write_video

    options: DragAnythingOptions = opts.options
    width, height = options.size
    # auto keeps fp32 on a CPU: DragAnything's bf16 path is not measured (an explicit --dtype is honoured)
    torch_dtype = None if opts.dtype == "auto" else parse_dtype(opts.dtype, opts.device)
    check_output_path(opts.output, opts.overwrite)
    img = composite_on_white(load_image(opts.image, notice=lambda message: print(f"note: {message}", file=sys.stderr)))
    w, h = img.size
    drags = read_drags(opts.drags, opts.drags_json, w, h, num_frames=options.frames,
                       max_drags=64)  # DragAnything takes any number of entities
    masks = read_entity_masks(img, drags, options.masks, options.segmenter, options.sam_checkpoint, opts.device)

    from ..pipelines.pipeline_draganything import load_draganything_pipeline

    quiet_loading()
    pipe = load_draganything_pipeline(opts.model, device=opts.device, torch_dtype=torch_dtype)
    multiple = pipe.size_multiple
    if width % multiple or height % multiple:
        raise UserInputError(f"--resolution must be multiples of {multiple} for this model, got {width}x{height}")
    pipe.set_progress_bar_config(**progress_bar_config("denoising", opts.quiet))
    start = time.perf_counter()
    result = pipe(img, drags, masks=masks, num_frames=options.frames, height=height, width=width, output_type="np",
                  keep_aspect=True, **options.call_kwargs())
    video = to_uint8_frames(result.frames[0])
    video_h, video_w = video.shape[1:3]
    if opts.overlay:
        video_drags = drags.transformed((video_w / w, video_h / h), (0.0, 0.0), video_w, video_h).resample(options.frames)
        video = draw_drags(video, video_drags.trajectories)
    path = write_video(video, opts.output, fps=options.fps, overwrite=opts.overwrite)
    print(f"wrote {path} ({len(video)} frames, {video_w}x{video_h}, DragAnything) in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return path


def save_random_draganything(out_dir: Path, seed: int = 0, with_image_encoder: bool = True) -> None:
    """``random-model --method draganything``: a tiny random-weight DragAnythingPipeline in ``out_dir``."""
    from ..pipelines import DragAnythingPipeline, build_draganything_components

    pipe = DragAnythingPipeline(**build_draganything_components(seed=seed, with_image_encoder=with_image_encoder))
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    pipe.save_pretrained(tmp)
    tmp.rename(out_dir)
    print(f"saved random-weight tiny DragAnything pipeline to {out_dir}", file=sys.stderr)


def draganything_evaluation_method(methods: list[str], model: str | None, draganything_model: str | None,
                                   options: DragAnythingOptions, device: str):
    """The ``draganything`` generator of ``evaluate``, with its pipeline loaded.

    ``--draganything-model`` names the pipeline; ``--model`` does when no Puppet-Master
    method (``model``, ``autoencoder``) needs it.

    Raises:
        UserInputError: no DragAnything model, a resolution the model cannot work at, an
            unloadable model.
    """
    from ..evaluation.draganything import draganything_method
    from ..pipelines.pipeline_draganything import load_draganything_pipeline

    width, height = options.size
    if draganything_model is None:
        if any(m in ("model", "autoencoder") for m in methods):
            raise UserInputError("--method draganything with a Puppet-Master method needs --draganything-model DIR "
                                 "(--model is the Puppet-Master pipeline)")
        draganything_model = model
    pipe = load_draganything_pipeline(draganything_model, device=device)
    if width % pipe.size_multiple or height % pipe.size_multiple:
        raise UserInputError(f"--resolution must be multiples of {pipe.size_multiple} for this model, got "
                             f"{options.resolution}")
    return draganything_method(pipe, options)
