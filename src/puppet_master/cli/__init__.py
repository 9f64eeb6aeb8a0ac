"""The ``puppet-master`` command line.

Each command imports the library (torch, diffusers, the package's models and pipelines) inside
its function, on purpose: ``--help`` and argument errors answer at once, without loading it.
"""

from __future__ import annotations

import os
import sys

import typer

from ..errors import UserInputError
from .animate import animate
from .data import data_app
from .demo import demo
from .evaluate import evaluate
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
app.command("animate")(animate)
app.command("random-model")(random_model)
app.command("evaluate")(evaluate)
app.command("train")(train)
app.command("cache-latents")(cache_latents)
app.command("train-vae")(train_vae)
app.command("export-checkpoint")(export_checkpoint)
app.command("demo")(demo)
app.add_typer(data_app, name="data")


def _quiet_libraries() -> None:
    """Keep library chatter (deprecation notes, backend fallbacks) out of the command's output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def _module_main() -> None:
    main()


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app; a :class:`UserInputError` becomes one line on stderr and exit 2."""
    _quiet_libraries()
    try:
        app(args=argv, standalone_mode=True)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
