"""The ``puppet-master`` command line.

Each command imports the library (torch, diffusers, the package's models and pipelines) inside
its function, on purpose: ``--help`` and argument errors answer at once, without loading it.
"""

from __future__ import annotations

import os
import sys
import warnings

import typer
from typer._click import exceptions as click_errors  # typer bundles click; its errors are not re-exported

from ..errors import TrainingDiverged, UserInputError
from .animate import animate
from .data import data_app
from .demo import demo
from .evaluate import evaluate
from .options import Command
from .random_model import random_model
from .train import cache_latents, distil_vae, export_checkpoint, train, train_vae

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
app.command("distil-vae", cls=Command)(distil_vae)
app.command("export-checkpoint", cls=Command)(export_checkpoint)
app.command("demo", cls=Command)(demo)
app.add_typer(data_app, name="data")


def _quiet_libraries() -> None:
    """Keep library chatter (deprecation notes, backend fallbacks, loading bars) out of the command's output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Fetching N files": a loading bar


def _module_main() -> None:
    main()


#: Commands that run until stopped: their library warnings are shown as they come.
_SERVERS = {"demo"}


def main(argv: list[str] | None = None) -> None:
    """Entry point and the command line's one error handler.

    A :class:`UserInputError` raised anywhere in a command, and a usage error of the
    command line itself (an unknown or missing option, a value of the wrong type), becomes
    one ``error: ...`` line on stderr and exit status 2; a :class:`TrainingDiverged` run
    the same line and status 1; Ctrl-C status 130, and so does SIGTERM in the commands that
    turn it into an interrupt (:func:`puppet_master.runtime.interrupt_on_sigterm`:
    ``animate``, ``cache-latents``). Commands raise, they never print errors themselves.

    Library warnings (Python's ``warnings``) are held while the command runs: after a
    refusal they are dropped, so the error line is all that is printed; otherwise they are
    printed when the command ends (``demo``, a server, shows them as they come). Python's
    ``-W`` option or ``PYTHONWARNINGS`` show them at once as usual.
    """
    _quiet_libraries()
    args = sys.argv[1:] if argv is None else list(argv)
    hold = not sys.warnoptions and not (args and args[0] in _SERVERS)
    with warnings.catch_warnings(record=hold) as held:  # the filters stay Python's (or -W's)
        code = _run(args)
    if code != 2:
        for w in held or []:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
    sys.exit(code)


def _run(args: list[str]) -> int:
    """Run the command; returns its exit status (errors printed as one line)."""
    try:
        from ..limits import check_environment

        check_environment()
        result = app(args=args, standalone_mode=False)
    except UserInputError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except click_errors.NoArgsIsHelpError as exc:  # the bare command or group: its help
        print(exc.format_message(), file=sys.stderr)
        return 2
    except click_errors.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        print(f"error: {_one_line(exc.format_message())}{where}", file=sys.stderr)
        return 2
    except click_errors.ClickException as exc:  # e.g. a file option that cannot be opened
        print(f"error: {_one_line(exc.format_message())}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0  # an int: the status of --help or of click's exit


def _one_line(exc: Exception | str) -> str:
    """The message on one line (a library message may hold newlines).

    An error re-raised from a DataLoader worker carries the worker's traceback in its
    message; only the original message (its last line) is kept.
    """
    text = str(exc)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last and "Error" in last.split(": ", 1)[0] else last
    return " ".join(text.split()) or type(exc).__name__
