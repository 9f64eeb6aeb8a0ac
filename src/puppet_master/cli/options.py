"""Options and settings shared by several commands: threads, quiet loading, progress bars."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from typer.core import TyperArgument, TyperCommand

from .. import runtime
from ..errors import UserInputError

#: ``--threads N``: CPU threads torch uses (default: torch's choice, one per core).
THREADS = typer.Option(
    None, "--threads", min=1, metavar="N",
    help="CPU threads for torch (default: one per core). On a busy machine fewer threads can be faster.",
)
#: ``--model`` of the commands that run a pipeline.
MODEL_HELP = "Pipeline folder saved by save_pretrained, a hub id, or 'default' (the model shipped in the package)."
MODEL_DEFAULT_SHOWN = "the model shipped in the package"


def set_threads(threads: Optional[int]) -> None:
    """Apply ``--threads`` (``torch.set_num_threads``); ``None`` keeps torch's default."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)


def quiet_loading() -> None:
    """Silence the loading bars of diffusers and transformers (``--quiet``)."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:  # transformers is optional for pipelines without an image encoder
        pass


def progress_bar_config(desc: str, quiet: bool) -> dict:
    """Settings of a pipeline's progress bar (``pipe.set_progress_bar_config(**...)``).

    On a terminal the bar disappears when done; written to a log (stderr is not a
    terminal) it stays, updating at most every few seconds, so the log shows the run's
    progress and its final state.
    """
    interactive = sys.stderr.isatty()
    return {"disable": quiet, "desc": desc, "leave": not interactive, "mininterval": 0.1 if interactive else 5.0}


class Command(TyperCommand):
    """A command whose help shows each argument by its metavar alone.

    Typer writes a required argument as ``{IMAGE}`` in the usage line and adds its type
    (``<path>``) in the argument list; with this class the help reads ``IMAGE``, as the
    option metavars do.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                name = param.display_name_raw.upper() + ("..." if param.nargs != 1 else "")
                usage = name if param.required else f"[{name}]"
                param._usage_display_name = lambda usage=usage: usage
                param.display_type_rich = lambda ctx: None


#: ``--dtype`` names and their torch dtypes (attribute names, so that ``--help`` needs no torch).
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def parse_dtype(name: str, device: str = "cpu"):
    """``--dtype``'s torch dtype on ``device``; ``None`` means the loader's default.

    ``auto`` is :func:`puppet_master.runtime.auto_dtype`: bf16 on a CPU that computes it
    natively, else ``None`` (fp32 on a CPU, the stored precision on a GPU).

    Raises:
        UserInputError: not auto, fp32, bf16 or fp16.
    """
    if name == "auto":
        return runtime.auto_dtype(device)
    if name not in DTYPES:
        raise UserInputError(f"--dtype must be auto or one of {', '.join(DTYPES)}, got {name!r}")
    import torch

    return getattr(torch, DTYPES[name])



#: ``--warp-init-sigma`` / ``--detail-transfer-radius``: the pipeline's sampling settings that are
#: not in the paper (``PuppetMasterPipeline``'s class docstring); ``None`` keeps the model's own.
WARP_INIT_SIGMA = typer.Option(
    None, "--warp-init-sigma", metavar="SIGMA",
    help="Start sampling from the first frame warped along the drags at this noise level (not in the paper; "
         "0: the paper's sampling from pure noise) [default: the model's setting; the shipped model's is 2].",
)
DETAIL_TRANSFER_RADIUS = typer.Option(
    None, "--detail-transfer-radius", metavar="CELLS",
    help="Add the input's detail lost by the VAE back to every frame, moved along the drags with this radius in "
         "latent cells (not in the paper; 0: decode as the paper does) [default: the model's setting; the shipped "
         "model's is 1].",
)


def check_sampling_settings(warp_init_sigma: Optional[float], detail_transfer_radius: Optional[float]) -> None:
    """Refuse a negative or non-finite ``--warp-init-sigma`` / ``--detail-transfer-radius`` (before any loading).

    Raises:
        UserInputError: naming the option and its valid range.
    """
    import math

    for flag, value in (("--warp-init-sigma", warp_init_sigma), ("--detail-transfer-radius", detail_transfer_radius)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UserInputError(f"{flag} must be a number >= 0 (0 turns it off), got {value}")


def apply_sampling_settings(pipe, warp_init_sigma: Optional[float], detail_transfer_radius: Optional[float]) -> None:
    """Set the given sampling settings on a loaded ``PuppetMasterPipeline`` (``None`` keeps the model's)."""
    settings = {name: value for name, value in (("warp_init_sigma", warp_init_sigma),
                                                  ("detail_transfer_radius", detail_transfer_radius))
                if value is not None}
    if settings:
        pipe.register_to_config(**settings)
