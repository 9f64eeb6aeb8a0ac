"""The ``puppet-master`` command line.

Each command imports the library (torch, diffusers, the package's models and pipelines) inside
its function, on purpose: ``--help`` and argument errors answer at once, without loading it.
"""

from __future__ import annotations

import os
import sys

import typer

from ..errors import TrainingDiverged, UserInputError
from .animate import animate
from .data import data_app
from .demo import demo
from .evaluate import evaluate
from .options import Command
from .random_model import random_model
from .train import cache_latents, export_checkpoint, train, train_vae

app = typer.Typer(
    name="puppet-master",
    help="Part-level, drag-conditioned video generation (Puppet-Master).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("animate", cls=Command)(animate)
app.command("random-model", cls=Command)(random_model)
app.command("evaluate", cls=Command)(evaluate)
app.command("train", cls=Command)(train)
app.command("cache-latents", cls=Command)(cache_latents)
app.command("train-vae", cls=Command)(train_vae)
app.command("export-checkpoint", cls=Command)(export_checkpoint)
app.command("demo", cls=Command)(demo)
app.add_typer(data_app, name="data")


def _quiet_libraries() -> None:
    """Keep library chatter (deprecation notes, backend fallbacks) out of the command's output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def _module_main() -> None:
    main()


def main(argv: list[str] | None = None) -> None:
    """Entry point and the command line's one error handler.

    A :class:`UserInputError` raised anywhere in a command becomes one ``error: ...``
    line on stderr and exit status 2; a :class:`TrainingDiverged` run the same line and
    status 1; Ctrl-C status 130, and so does SIGTERM in the commands that turn it into an
    interrupt (:func:`puppet_master.runtime.interrupt_on_sigterm`: ``animate``,
    ``cache-latents``). Commands raise, they never print errors themselves.
    """
    _quiet_libraries()
    try:
        app(args=argv, standalone_mode=True)
    except UserInputError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _one_line(exc: Exception) -> str:
    """The exception's message on one line (a library message may hold newlines)."""
    return " ".join(str(exc).split()) or type(exc).__name__
