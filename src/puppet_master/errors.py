"""Error types shared by the library and the command line.

A :class:`UserInputError` is a mistake in what the user gave us (a file, a drag, a
flag). The command line (``puppet_master.cli.main``, the one place that handles it)
prints its message on one line and exits with status 2, without a traceback; library
callers can catch it as a :class:`ValueError`. A :class:`TrainingDiverged` run exits
with status 1 the same way. :func:`optional_imports` turns a missing optional dependency
into a :class:`MissingExtraError` that names the ``pip install "puppet-master[...]"`` command.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class UserInputError(ValueError):
    """Bad input from the user. The message names the problem and how to fix it."""


class DragError(UserInputError):
    """Invalid drags: non-finite, outside the image, too many, empty, wrong frame count."""


class ModelLoadError(UserInputError):
    """A model directory / hub id that cannot be found or does not hold a usable model."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


class MissingExtraError(ImportError, UserInputError):
    """An optional dependency is not installed; the message names the ``pip install`` command that adds it.

    An :class:`ImportError` for code that checks imports, a :class:`UserInputError` for the command
    line (one ``error:`` line, exit status 2).
    """


#: What each extra of ``pyproject.toml`` enables, for the message of :func:`optional_imports`.
EXTRAS = {
    "demo": "the demo (puppet-master demo)",
    "train": "training (puppet-master train, train-vae)",
    "data": "the data pipeline (puppet-master data)",
    "eval": "evaluation (puppet-master evaluate)",
    "ray": "--executor ray",
    "objaverse": "the Objaverse source",
}

#: Import names whose distribution on PyPI is named otherwise.
_DISTRIBUTIONS = {"sklearn": "scikit-learn", "skimage": "scikit-image", "yaml": "pyyaml", "cv2": "opencv-python-headless"}


@contextmanager
def optional_imports(extra: str) -> Iterator[None]:
    """Imports of an optional dependency, installed by ``pip install "puppet-master[EXTRA]"``.

    Usage, at the top of the module that needs them::

        with optional_imports("demo"):
            import gradio as gr

    A module that cannot be found inside the block (the package itself, or one of its own
    dependencies) becomes a :class:`MissingExtraError` whose message names the extra.

    Raises:
        MissingExtraError: a module imported in the block is not installed.
        KeyError: ``extra`` is not one of :data:`EXTRAS` (a programming error).
    """
    purpose = EXTRAS[extra]
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        package = _DISTRIBUTIONS.get(top, top) or "a package"
        raise MissingExtraError(
            f"{purpose} needs {package}, which is not installed: pip install \"puppet-master[{extra}]\"", name=exc.name
        ) from None
