"""Options and settings shared by several commands: threads, quiet loading, progress bars, the methods' flags."""

from __future__ import annotations

import inspect
import math
import sys
import types
from collections.abc import Sequence
from typing import Literal, Optional, Union, get_args, get_origin

import typer
from typer.core import TyperArgument, TyperCommand

from .. import runtime
from ..errors import UserInputError
from ..options import MAX_SEED, MethodOptions, PuppetMasterOptions, is_given, owners

#: ``--threads N``: CPU threads torch uses (default: torch's choice, one per core).
THREADS = typer.Option(
    None, "--threads", min=1, metavar="N",
    help="CPU threads for torch (default: one per core). On a busy machine fewer threads can be faster.",
)


def finite(low: Optional[float] = None, high: Optional[float] = None, above: bool = False):
    """A typer ``parser`` for a number option that must be finite and within ``[low, high]`` (``(low, high]`` with ``above``).

    Typer's own ``min`` / ``max`` let ``inf`` and ``nan`` through; this refuses them as a
    usage error (one ``error:`` line).
    """
    bounds = " and ".join(b for b in (None if low is None else f"{'>' if above else '>='} {low:g}",
                                      None if high is None else f"<= {high:g}") if b)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise typer.BadParameter(f"must be a number, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if above else value < low)) or \
                (high is not None and value > high):
            raise typer.BadParameter(f"must be a finite number{' ' + bounds if bounds else ''}, got {text}")
        return value

    return parse


#: ``--seed`` of the commands outside the methods' options (the same range as theirs).
SEED = typer.Option(0, "--seed", min=0, max=MAX_SEED, metavar="N", help="Random seed (0 to 2**32 - 1).")
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
    """Silence the loading bars of diffusers and transformers.

    The commands call it before loading any model, with or without ``--quiet``: a refusal
    after loading (a size the model cannot work at) is then the only line printed, and a
    local model loads in a second or two. (Hub downloads' bars are off through
    ``HF_HUB_DISABLE_PROGRESS_BARS``, set by :func:`puppet_master.cli.main`.)
    """
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




# ---------------------------------------------------------------------------------------- method options
def method_flags(classes: Sequence[type[MethodOptions]], where: str):
    """Decorator: give a typer command the flags of the method options ``classes`` that appear at ``where``.

    One flag per option name (``--steps`` serves both methods); its help names each
    method's default. Every generated flag defaults to ``None`` ("not given"), so the
    command can tell the options the user gave from the method's defaults, and values are
    checked by :meth:`~puppet_master.options.MethodOptions.from_values`, not by typer.
    The command function takes them as ``**flags`` (``{field name: value or None}``).
    """
    def decorate(func):
        signature = inspect.signature(func)
        params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        names = list(dict.fromkeys(name for cls in classes for name in cls.options(where)))
        params += [_flag_parameter(name, classes, where) for name in names]
        func.__signature__ = signature.replace(parameters=params)
        return func

    return decorate


def _flag_parameter(name: str, classes: Sequence[type[MethodOptions]], where: str) -> inspect.Parameter:
    """The typer parameter of option ``name``: its flag, metavar and help with each method's default."""
    having = owners(name, classes, where)
    info, spec = having[0].options(where)[name]
    if any(cls.options(where)[name][1].flag != spec.flag for cls in having):
        raise TypeError(f"option {name!r} has different flags in {[cls.__name__ for cls in having]}")
    defaults = [(cls, cls.default(name)) for cls in having]
    shown = [(cls, d) for cls, d in defaults if d is not None and d is not False and d != []]
    help_text = info.description or ""
    if shown and len({repr(d) for _, d in defaults}) == 1:
        help_text += f" [default: {shown[0][1]}]"
    elif shown:  # a method whose default is None takes the loaded model's setting
        help_text += " [default: " + ", ".join(f"{cls.label} {'from the model' if d is None else d}"
                                               for cls, d in defaults) + "]"
    if len(having) < len(classes):
        help_text += f" ({', '.join(cls.label for cls in having)} only.)"
    option = typer.Option(None, spec.flag, metavar=spec.metavar, help=help_text, show_default=False)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=_flag_type(info.annotation))


def _flag_type(annotation):
    """The command-line type of a field: ``Optional`` of its base type (a choice is read as text)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    base = args[0] if get_origin(annotation) in (Union, types.UnionType) and len(args) == 1 else annotation
    if get_origin(base) is Literal:
        base = str
    return Optional[base]


def unused_flags(flags: dict, used: Sequence[type[MethodOptions]], where: str) -> list[str]:
    """The names of given ``flags`` that none of the ``used`` methods has at ``where``."""
    return [name for name, value in flags.items() if is_given(value) and not owners(name, used, where)]


def flag_names(names: Sequence[str], classes: Sequence[type[MethodOptions]], where: str) -> str:
    """``"--mask, --segmenter"``: the flags of option ``names``."""
    return ", ".join(owners(n, classes, where)[0].options(where)[n][1].flag for n in names)


def method_options(cls: type[MethodOptions], flags: dict, where: str) -> MethodOptions:
    """``cls``'s options from the given ``flags`` (the others take ``cls``'s defaults).

    Raises:
        UserInputError: a value of the wrong type or out of range (names the flag).
    """
    own = cls.options(where)
    return cls.from_values({name: value for name, value in flags.items() if name in own}, where)


def sampling_note(pipe, options: PuppetMasterOptions) -> Optional[str]:
    """The ``note:`` that sampling starts from the drag-warped first frame, or ``None`` when it does not.

    With ``warp_init_sigma`` (the option, else the model's setting) sampling skips the
    scheduler steps whose σ is above it (``PuppetMasterPipeline``'s class docstring): the
    progress bar counts only the steps that run, which the pipeline counts
    (:meth:`~puppet_master.pipelines.pipeline_svd_base.SVDStylePipeline.steps_run`).
    """
    settings = pipe.sampling_settings(num_inference_steps=options.steps, warp_init_sigma=options.warp_init_sigma)
    sigma, steps = settings["warp_init_sigma"], settings["num_inference_steps"]
    if not sigma:
        return None
    run = pipe.steps_run(steps, sigma, options.scheduler)
    return (f"sampling from the drag-warped first frame at σ={sigma:g}: {run} of {steps} "
            "steps run (--warp-init-sigma 0 samples from pure noise, as the paper)")
