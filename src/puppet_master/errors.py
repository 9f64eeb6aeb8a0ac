"""Error types shared by the library and the command line.

A :class:`UserInputError` is a mistake in what the user gave us (a file, a drag, a
flag). The command line (``puppet_master.cli.main``, the one place that handles it)
prints its message on one line and exits with status 2, without a traceback; library
callers can catch it as a :class:`ValueError`. A :class:`TrainingDiverged` run exits
with status 1 the same way.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from the user. The message names the problem and how to fix it."""


class DragError(UserInputError):
    """Invalid drags: non-finite, outside the image, too many, empty, wrong frame count."""


class ModelLoadError(UserInputError):
    """A model directory / hub id that cannot be found or does not hold a usable model."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""
